"""The pipelined daemon's stored scores against an independent preprocessing written here from the README's
description of the model (Pillow decode and bilinear resize, short side 227, centre crop, BGR 0..255) and a bare
ONNX Runtime session: the decode workers, OpenCV's decoding, the batching and the group commit change nothing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from tests.conftest import MODELS
from tests.edge.conftest import PCB, PHOTOS, pcb_release
from tests.edge.test_daemon_inprocess import make_daemon, wait


def independent_scores(path: Path, sess: ort.InferenceSession) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 227 / min(w, h)
    nw, nh = max(round(w * s), 227), max(round(h * s), 227)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - 227) // 2, (nh - 227) // 2
    x = np.asarray(im, dtype=np.float32)[top: top + 227, left: left + 227, ::-1].transpose(2, 0, 1)[None]
    return sess.run(None, {"data": np.ascontiguousarray(x)})[0][0]


def test_stored_scores_match_an_independent_preprocessing(tmp_path: Path, bundles, keys) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    files = sorted(PCB.iterdir()) + sorted(PHOTOS.iterdir())
    for i in range(3):  # copies: several frames ready together are batched (the PCB model has a dynamic batch)
        for f in files:
            shutil.copy(f, inbox / f"{i}-{f.name}")
    d = make_daemon(tmp_path, keys, pcb_release(bundles), pipeline={"decode_workers": 3},
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    runner = d.frames.slot.current.active.stages[0][1].runner
    real_infer = runner._infer
    batches: list[int] = []

    def counted(feeds):
        batches.append(len(next(iter(feeds.values()))))
        time.sleep(0.03)  # a slower model, so that decoded frames wait together and are batched
        return real_infer(feeds)

    runner._infer = counted  # type: ignore[method-assign]
    try:
        wait(lambda: d.metrics.value("frames_total") == 3 * len(files), 120)
        rows = d.store.query("SELECT source, record FROM predictions WHERE role = 'active'")
    finally:
        d.stop()
    sess = ort.InferenceSession(str(MODELS / "pcb-aoi_opset11.onnx"), providers=["CPUExecutionProvider"])
    want = {f.name: independent_scores(f, sess) for f in files}
    worst = 0.0
    for r in rows:
        rec = json.loads(r["record"])
        name = r["source"].removeprefix("folder:").split("-", 1)[1]
        scores = rec["stages"][0]["scores"]
        got = np.array([scores["Defective"], scores["Normal"]])
        worst = max(worst, float(np.abs(got - want[name]).max()))
    assert len(rows) == 3 * len(files) and max(batches) > 1, batches
    assert worst <= 1e-6, worst  # the record rounds to 6 decimals: within 5e-7 of the model's own output
