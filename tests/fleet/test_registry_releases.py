"""Bundle push (verified on push, tampered bundles refused naming the file or key), releases and revisions."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from fleet.protocol import ReleaseSpec, StageSpec
from fleet.releases import ThresholdChange
from runtime.bundle import load_bundle
from runtime.errors import BundleError, ConfigError, Conflict, NotFound, SignatureError
from runtime.fsio import sha256_file
from runtime.signing import load_private_key, sign


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def test_push_stores_a_verified_tar_with_its_hash(fleet, bundles):
    info = fleet.registry.push(bundles["pcb-aoi"])
    tar = fleet.artifacts_dir / info["path"]
    assert info["id"] == bundles["pcb-aoi"].name
    assert info["sha256"] == sha256_file(tar) and info["size"] == tar.stat().st_size
    # what devices will download is itself a bundle that verifies under the same trust store
    with load_bundle(tar, fleet.registry.trust) as b:
        assert b.manifest.bundle_id == info["id"]
    assert fleet.registry.push(bundles["pcb-aoi"])["sha256"] == info["sha256"]  # pushing again is a no-op
    assert [b["id"] for b in fleet.registry.list()] == [info["id"]]


def test_tampered_file_is_refused_naming_the_file(fleet, bundles, tmp_path):
    b = _copy(bundles["pcb-aoi"], tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        fleet.registry.push(b)
    assert fleet.registry.list() == [] and not list(fleet.artifacts_dir.glob("*.tar"))


def test_manifest_edit_breaks_the_signature(fleet, bundles, tmp_path):
    b = _copy(bundles["squeezenet"], tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["thresholds"]["default"] = 0.01
    (b / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="does not match manifest.json"):
        fleet.registry.push(b)


def test_unknown_signer_is_refused_naming_the_key(fleet, bundles, keys, tmp_path):
    b = _copy(bundles["pcb-aoi"], tmp_path)
    (b / "manifest.sig").write_bytes(sign((b / "manifest.json").read_bytes(), load_private_key(keys["other_private"])))
    with pytest.raises(SignatureError, match=keys["other_key_id"]):
        fleet.registry.push(b)


def test_unsigned_and_extra_file_and_tar_traversal_are_refused(fleet, bundles, tmp_path):
    b = _copy(bundles["pcb-aoi"], tmp_path)
    (b / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        fleet.registry.push(b)
    b2 = _copy(bundles["squeezenet"], tmp_path / "x")
    (b2 / "payload.sh").write_text("rm -rf /\n")
    with pytest.raises(BundleError, match="payload.sh"):
        fleet.registry.push(b2)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(bundles["pcb-aoi"] / "manifest.json", arcname="../../manifest.json")
    with pytest.raises(BundleError, match="escapes"):
        fleet.registry.push(evil)


def test_push_conflict_on_same_id_different_content(fleet, bundles, keys, tmp_path):
    from tests.conftest import export_preset

    fleet.registry.push(bundles["pcb-aoi"])
    other = export_preset("pcb-aoi", tmp_path, keys["private"], fp16=False)
    assert other.name == bundles["pcb-aoi"].name
    with pytest.raises(Conflict, match="different contents"):
        fleet.registry.push(other)


def _release(fleet, bundles, name="seal", **kw) -> ReleaseSpec:
    info = fleet.registry.push(bundles["pcb-aoi"])
    labels = info["labels"]
    spec = ReleaseSpec(name=name, stages=[StageSpec(role="verify", bundle=info["id"],
                                                    thresholds={"default": 0.5, labels[1]: 0.4})], **kw)
    return fleet.releases.create(spec)


def test_release_revisions_and_threshold_only_change(fleet, bundles):
    r1 = _release(fleet, bundles)
    assert r1.ref == "seal@1"
    label = next(iter(set(r1.stages[0].thresholds) - {"default"}))
    r2 = fleet.releases.tune("seal", ThresholdChange(role="verify", thresholds={"default": 0.5, label: 0.7}))
    assert r2.ref == "seal@2" and r2.stages[0].bundle == r1.stages[0].bundle
    assert r2.stages[0].thresholds[label] == 0.7 and r1.stages[0].thresholds[label] == 0.4
    assert fleet.releases.get("seal").ref == "seal@2" and fleet.releases.get("seal@1") == r1
    assert [r["parent"] for r in fleet.releases.list()] == [None, "seal@1"]
    with pytest.raises(ConfigError, match="no 'screen' stage"):
        fleet.releases.tune("seal", ThresholdChange(role="screen", threshold=0.3))


def test_release_refuses_unknown_bundle_and_class(fleet, bundles):
    with pytest.raises(NotFound, match="nope-v1.0"):
        fleet.releases.create(ReleaseSpec(name="x", stages=[StageSpec(role="verify", bundle="nope-v1.0")]))
    info = fleet.registry.push(bundles["pcb-aoi"])
    with pytest.raises(ConfigError, match="unknown classes.*'kitten'"):
        fleet.releases.create(ReleaseSpec(name="x", stages=[
            StageSpec(role="verify", bundle=info["id"], thresholds={"default": 0.5, "kitten": 0.2})]))
    with pytest.raises(NotFound):
        fleet.releases.get("x")
