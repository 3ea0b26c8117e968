"""What the exporter does with the three shipped models, a probability-map model and a sequence model (the last two
made with onnx.helper): exported, or refused with which message. `pytest -s` prints the table (issue 11's closing
note quotes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.exporter import export_model
from export.options import build_options
from runtime.bundle import read_manifest
from runtime.errors import ShadowlineError
from runtime.processing.shapes import reference_shape
from tests.conftest import IMAGES, MODELS, PRESETS
from tests.export import onnx_models


def synthetic_cases(work: Path) -> list[tuple[str, Path, dict]]:
    common = dict(color_order="RGB", resize="stretch", scale=1 / 255, calibration=str(IMAGES / "photos"),
                  max_calibration=4)
    db = onnx_models.probability_map(work / "text_det_db.onnx")
    crnn = onnx_models.sequence_recogniser(work / "crnn_rec.onnx")
    return [
        ("probability map [N,1,96,96] as classifier", db,
         dict(common, name="text-det", task="classify", decoder="sigmoid", labels=["text"])),
        ("probability map [N,1,96,96] as YOLOX detector", db,
         dict(common, name="text-det", task="detect", decoder="yolox", labels=["text"])),
        ("CRNN sequence [1,50,6625] as classifier", crnn,
         dict(common, name="text-rec", task="classify", decoder="probabilities",
              labels=[f"c{i}" for i in range(6625)])),
    ]


@pytest.fixture(scope="module")
def table(bundles, tmp_path_factory) -> list[tuple[str, str, str]]:
    rows = []
    for preset, file in PRESETS.items():
        m = read_manifest(bundles[preset])
        shape = reference_shape(bundles[preset] / "reference.npz", f"output.{m.output.names[0]}", m.bundle_id)
        variants = ", ".join(f"{c.artifact} parity {'passed' if c.passed else 'FAILED'}" for c in m.parity)
        rows.append((f"{file} (preset {preset})", "exported",
                     f"{m.bundle_id}: task {m.task}, decoder {m.output.decoder}, output {shape[1:]} per image, "
                     f"{len(m.labels)} labels; {variants}"))
    work = tmp_path_factory.mktemp("outcomes")
    nhwc = onnx_models.nhwc_pcb(work / "pcb_nhwc.onnx")
    pcb = dict(name="pcb-nhwc", task="classify", decoder="probabilities", labels="model-metadata", color_order="BGR",
               resize="short_side_center_crop", resize_short=227, interpolation="bilinear_antialias",
               calibration=str(IMAGES / "pcb_winml"), fp16=True)
    _, m, _ = export_model(nhwc, build_options(None, pcb), work / "nhwc")
    rows.append(("PCB behind a Transpose, NHWC input [N,227,227,3] (--fp16)", "exported",
                 f"{m.bundle_id}: layout {m.input.layout}, input {m.input.shape}; "
                 + ", ".join(f"{c.artifact} parity {'passed' if c.passed else 'FAILED'}" for c in m.parity)))
    for name, model, opts in synthetic_cases(work):
        try:
            export_model(model, build_options(None, opts), work / "out")
        except ShadowlineError as err:
            rows.append((name, f"refused ({type(err).__name__}, exit {err.exit_code})", str(err).replace(str(work) +
                                                                                                         "/", "")))
        else:
            rows.append((name, "exported", ""))
    print("\n| model | outcome | message |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return rows


def test_shipped_models_export_and_what_no_decoder_reads_is_refused(table):
    outcomes = {name: outcome for name, outcome, _ in table}
    assert [o for n, o in outcomes.items() if n.endswith(")") and "preset" in n] == ["exported"] * 3
    refused = {n: m for n, o, m in table if o.startswith("refused")}
    assert set(refused) == {"probability map [N,1,96,96] as classifier",
                            "probability map [N,1,96,96] as YOLOX detector", "CRNN sequence [1,50,6625] as classifier"}
    assert all("(ModelRejected, exit 3)" in outcomes[n] for n in refused)
    assert "per-pixel map" in refused["probability map [N,1,96,96] as classifier"]
    assert "expects [N, 189, 6]" in refused["probability map [N,1,96,96] as YOLOX detector"]
    assert "sequence of 50 steps over 6625 classes" in refused["CRNN sequence [1,50,6625] as classifier"]
    assert MODELS.is_dir()
