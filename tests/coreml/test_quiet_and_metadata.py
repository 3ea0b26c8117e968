"""Issue 15.9 (Core ML part): a `--coreml` export prints no third-party noise (coremltools' "Failed to load" lines and
progress bars), nothing at all with `--quiet`; the package's author, licence and version are settable (options and
presets), recorded in its metadata, and checked by `coreml-inspect`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.bundle import load_bundle
from tests.conftest import IMAGES, MODELS, ROOT

pytest.importorskip("coremltools")

NOISE = ("Failed to load", "Running MIL", "passes/s", "libcoremlpython", "Traceback")


def shadowline(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process: coremltools prints its import warnings once per process."""
    return subprocess.run([sys.executable, "-c", "from shadowline.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("quiet")
    common = [str(MODELS / "pcb-aoi_opset11.onnx"), "--preset", "pcb-aoi", "--coreml", "--version", "2.3"]
    quiet = shadowline("export", *common, "--out", str(out / "quiet"), "--quiet", "--author", "QA lab, Plant 4",
                       "--license", "Proprietary")
    loud = shadowline("export", *common, "--out", str(out / "loud"))
    return {"quiet": quiet, "loud": loud, "out": out}


def test_quiet_export_prints_nothing_on_stderr(exported):
    result = exported["quiet"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("bundle ")


def test_progress_without_third_party_noise(exported):
    result = exported["loud"]
    assert result.returncode == 0, result.stderr
    assert "[coreml]" in result.stderr and "parity passed" in result.stderr
    for needle in NOISE:
        assert needle not in result.stderr
    assert all(line.startswith("[") for line in result.stderr.splitlines()), result.stderr


def test_author_licence_version_in_the_package(exported):
    from export.coreml.executor import load_package

    bundle = exported["out"] / "quiet" / "pcb-aoi-v2.3"
    with load_bundle(bundle) as b:
        assert (b.manifest.author, b.manifest.license, b.manifest.version) == ("QA lab, Plant 4", "Proprietary", "2.3")
        meta = load_package(b.root / "coreml" / "pcb-aoi.mlpackage").spec.description.metadata
    assert (meta.author, meta.license, meta.versionString) == ("QA lab, Plant 4", "Proprietary", "2.3")
    # the preset's own author when none is given
    with load_bundle(exported["out"] / "loud" / "pcb-aoi-v2.3") as b:
        assert b.manifest.author == "Microsoft (Windows-Machine-Learning samples)"


def test_coreml_inspect_checks_the_metadata(exported):
    from shadowline.cli import cli as main

    bundle = str(exported["out"] / "quiet" / "pcb-aoi-v2.3")
    result = CliRunner().invoke(main, ["export", "coreml-inspect", bundle])
    assert result.exit_code == 0, result.output
    assert "meta   author: QA lab, Plant 4" in result.output and "meta   license: Proprietary" in result.output
    assert "check  metadata vs manifest: pass" in result.output
    info = json.loads(CliRunner().invoke(main, ["export", "coreml-inspect", bundle, "--json"]).output)
    assert info["packages"][0]["metadata_check"]["passed"] is True


def test_coreml_inspect_refuses_metadata_that_disagrees(exported, tmp_path):
    """A package whose metadata was changed after export (its hashes re-pinned, as a careless re-packaging
    would): coreml-inspect names the field and exits non-zero."""
    import shutil

    import coremltools as ct

    from runtime.fsio import sha256_file
    from runtime.manifest import FileEntry
    from shadowline.cli import cli as main

    bundle = tmp_path / "pcb-aoi-v2.3"
    shutil.copytree(exported["out"] / "quiet" / "pcb-aoi-v2.3", bundle)
    (bundle / "manifest.sig").unlink(missing_ok=True)
    package = bundle / "coreml" / "pcb-aoi.mlpackage"
    model = ct.models.MLModel(str(package), skip_model_load=True)
    model.author = "someone else"
    model.save(str(tmp_path / "changed.mlpackage"))  # the model reads its weights from the old package
    shutil.rmtree(package)
    shutil.move(str(tmp_path / "changed.mlpackage"), str(package))
    from runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    files = {k: v for k, v in manifest.files.items() if not k.startswith("coreml/")}
    for p in sorted(package.rglob("*")):
        if p.is_file():
            files[p.relative_to(bundle).as_posix()] = FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
    (bundle / "manifest.json").write_bytes(manifest.model_copy(update={"files": files}).to_bytes())
    result = CliRunner().invoke(main, ["export", "coreml-inspect", str(bundle)])
    assert result.exit_code != 0
    text = result.output + str(result.exception)
    assert "check  metadata vs manifest: FAIL" in text and "author 'someone else' != 'QA lab, Plant 4'" in text


def test_export_options_take_author_and_licence():
    from export.options import build_options, load_preset

    opts = build_options(load_preset("yolox-nano", MODELS / "yolox_nano.onnx"), {"author": "me", "license": None})
    assert (opts.author, opts.license) == ("me", "Apache-2.0")
    assert Path(IMAGES).is_dir()
