"""Hot swap while frames stream in: no frame is lost or processed twice, and every record carries the release the
frame really ran under (old before the swap, new after it, never a mix). Behaviour only; the timing lives in
benchmarks/hot_swap.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from edge.config import DeviceConfig
from edge.daemon import Daemon
from edge.sources import Frame, Outcome
from fleet.protocol import ReleaseSpec
from tests.conftest import IMAGES

IMAGE_FILES = sorted(p for d in ("pcb_winml", "photos") for p in (IMAGES / d).iterdir())
CATS = ["tabby, tabby cat", "tiger cat", "Egyptian cat"]


def releases(bundles: dict[str, Path]) -> list[ReleaseSpec]:
    """rev 1 and 2: SqueezeNet at two thresholds (a threshold-only swap); rev 3: another model (pcb-aoi)."""
    def sq(t: float) -> list[dict]:
        return [{"role": "screen", "bundle": str(bundles["squeezenet"]), "candidate_classes": CATS, "threshold": t}]

    stages = [sq(0.1), sq(0.6), [{"role": "screen", "bundle": str(bundles["pcb-aoi"]),
                                   "candidate_classes": ["Defective"], "threshold": 0.5}]]
    return [ReleaseSpec.model_validate({"name": "line", "revision": i + 1, "mode": "production", "stages": s})
            for i, s in enumerate(stages)]


def start_daemon(tmp_path: Path, keys, first: ReleaseSpec, **extra) -> Daemon:
    cfg = DeviceConfig.model_validate({
        "device_id": "dev-swap", "trust_store": str(keys["trust"]), "api": {"enabled": False},
        "runner": {"threads": 1}, "retention": {"sample_pct": 0.0}, "queue": {"max_size": 256},
        "release": first.model_dump(mode="json", by_alias=True), **extra}).resolve(tmp_path)
    return Daemon(cfg).start()


def wait(cond, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def signature(rel: ReleaseSpec) -> tuple[int, str, float]:
    """What a record of `rel` must show: revision, the screen model's bundle id, the screen threshold."""
    st = rel.stages[0]
    return rel.revision, Path(st.bundle).name, st.threshold


def record_signature(rec: dict) -> tuple[int, str, float]:
    return rec["revision"], rec["models"]["screen"], rec["thresholds"]["screen"]["default"]


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "decode-workers"])
def test_swaps_under_a_stream_lose_and_repeat_no_frame(tmp_path: Path, bundles, keys, lanes: bool) -> None:
    """In lanes, a frame is decoded for the pipeline its lane holds; with decode workers, for the one running when
    it was decoded (after a swap the inference thread prepares what differs): both must keep every record whole."""
    rels = releases(bundles)
    d = start_daemon(tmp_path, keys, rels[0], pipeline={"lanes": lanes})
    assert d.frames.lanes is lanes
    images = [(f.read_bytes(), f.suffix) for f in IMAGE_FILES]
    submitted: list[str] = []
    outcomes: dict[str, list[Outcome]] = {}
    done_order: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def feed() -> None:
        k = 0
        while not stop.is_set():
            if d.queue.depth >= 8:  # a steady stream, not a flood: the swap must happen with frames in flight
                time.sleep(0.005)
                continue
            src = f"http:frame-{k}"
            data, suffix = images[k % len(images)]

            def on_done(out: Outcome, src: str = src) -> None:
                with lock:
                    outcomes.setdefault(src, []).append(out)
                    done_order.append(src)

            submitted.append(src)  # before the put: a frame listed after a swap returned is queued after it
            assert d.queue.put_nowait(Frame(source=src, data=data, suffix=suffix, on_done=on_done))
            k += 1

    feeder = threading.Thread(target=feed, daemon=True)
    swaps: list[tuple[int, int, ReleaseSpec, ReleaseSpec]] = []  # (frames done before, submitted after, old, new)
    try:
        feeder.start()
        for old, new in zip(rels, rels[1:]):
            n = len(done_order)
            wait(lambda n=n: len(done_order) >= n + 15)
            with lock:
                done_before = len(done_order)
            d.activate(new, None, {})
            swaps.append((done_before, len(submitted), old, new))
            assert d.current() == (new, None)
        wait(lambda: len(done_order) >= swaps[-1][1] + 15)
    finally:
        stop.set()
        feeder.join(10)
    try:
        wait(lambda: len(done_order) == len(submitted))
        rows = d.store.query("SELECT source, role, revision, record FROM predictions ORDER BY rowid")
    finally:
        d.stop()

    # exactly one record and one callback per submitted frame; nothing else in the store
    assert len(submitted) >= 45
    assert sorted(r["source"] for r in rows) == sorted(submitted)
    assert all(r["role"] == "active" for r in rows)
    assert all(len(outcomes[s]) == 1 and outcomes[s][0].prediction_id for s in submitted)
    by_source = {r["source"]: json.loads(r["record"]) for r in rows}
    assert all(outcomes[s][0].record["id"] == by_source[s]["id"] for s in submitted)

    # one worker, FIFO: frames finish in submission order; revisions never go back and each record is all of one
    # release (its revision, model and threshold belong together)
    assert done_order == submitted
    expected = {signature(r)[0]: signature(r) for r in rels}
    sigs = [record_signature(by_source[s]) for s in submitted]
    assert all(sig == expected[sig[0]] for sig in sigs), set(sigs)
    revs = [sig[0] for sig in sigs]
    assert revs == sorted(revs) and set(revs) == {1, 2, 3}

    # frames finished before a swap began carry the old release, frames submitted after it returned the new one
    for done_before, submitted_after, old, new in swaps:
        assert max(revs[:done_before]) == revs[done_before - 1] == old.revision
        assert min(revs[submitted_after:]) >= new.revision
    assert revs[swaps[-1][1]:] == [rels[-1].revision] * (len(revs) - swaps[-1][1]) and len(revs) - swaps[-1][1] >= 15
    # the decision follows the release: the pcb-aoi revision screens for "Defective", SqueezeNet for cats
    rev3 = [by_source[s] for s, r in zip(submitted, revs) if r == 3]
    assert rev3 and all(rec["top_label"] in ("Defective", "Normal") for rec in rev3)
    assert all(by_source[s]["top_label"] not in ("Defective", "Normal") for s, r in zip(submitted, revs) if r < 3)


def test_folder_stream_across_a_model_swap_processes_each_file_once(tmp_path: Path, bundles, keys) -> None:
    rels = releases(bundles)
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    staging.mkdir()
    d = start_daemon(tmp_path, keys, rels[0],
                     sources=[{"type": "folder", "path": "inbox", "poll_s": 0.02, "settle_s": 0.0}])
    names: list[str] = []
    stop = threading.Event()

    def drop_files() -> None:
        k = 0
        while not stop.is_set():
            f = IMAGE_FILES[k % len(IMAGE_FILES)]
            name = f"{k:04d}-{f.name}"
            shutil.copy(f, staging / name)
            (staging / name).replace(inbox / name)  # appears whole, as a camera's uploader would write it
            names.append(name)
            k += 1
            time.sleep(0.03)

    dropper = threading.Thread(target=drop_files, daemon=True)
    try:
        dropper.start()
        wait(lambda: d.metrics.value("frames_total") >= 10)
        d.activate(rels[2], None, {})
        n = len(names)
        wait(lambda: d.metrics.value("frames_total") >= n + 10)
    finally:
        stop.set()
        dropper.join(10)
    try:
        wait(lambda: d.metrics.value("frames_total") >= len(names))
        wait(lambda: len(list((inbox / "done").iterdir())) == len(names))
        rows = d.store.query("SELECT source, revision, record FROM predictions WHERE role = 'active' ORDER BY rowid")
    finally:
        d.stop()
    assert sorted(r["source"] for r in rows) == sorted(f"folder:{n}" for n in names)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(names)
    assert not [p for p in inbox.iterdir() if p.is_file()]
    expected = {r.revision: signature(r) for r in rels}
    sigs = [record_signature(json.loads(r["record"])) for r in rows]
    assert all(sig == expected[sig[0]] for sig in sigs)
    assert {s[0] for s in sigs} == {1, 3}
    assert [s[0] for s in sigs] == sorted(s[0] for s in sigs)
