"""A bundle is refused, naming the file or key, on any mismatch: flipped bytes, missing or extra files, signers."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from runtime.bundle import load_bundle
from runtime.errors import BundleError, SignatureError
from runtime.signing import TrustStore


@pytest.fixture
def copy(bundles, tmp_path) -> Path:
    dst = tmp_path / "pcb-aoi-v1.0"
    shutil.copytree(bundles["pcb-aoi"], dst)
    return dst


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_bundle_loads(copy, keys):
    with load_bundle(copy, TrustStore.load(keys["trust"])) as b:
        assert b.signer == keys["key_id"]


@pytest.mark.parametrize("name", ["model.onnx", "reference.npz", "model.fp16.onnx"])
def test_flipped_byte_in_any_file_is_refused_naming_it(copy, keys, name):
    flip(copy / name)
    with pytest.raises(BundleError, match=rf"'{name}' does not match its sha256"):
        load_bundle(copy, TrustStore.load(keys["trust"]))
    # without a trust store the hash check still applies
    with pytest.raises(BundleError, match=name):
        load_bundle(copy)


def test_flipped_byte_in_manifest_breaks_the_signature(copy, keys):
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text.replace('"threshold": 0.5', '"threshold": 0.9', 1)
                                        .replace('"default": 0.5', '"default": 0.1', 1))
    with pytest.raises(SignatureError, match=keys["key_id"]):
        load_bundle(copy, TrustStore.load(keys["trust"]))


def test_manifest_naming_a_missing_file(copy):
    (copy / "model.fp16.onnx").unlink()
    with pytest.raises(BundleError, match=r"'model.fp16.onnx' named in the manifest is missing"):
        load_bundle(copy)


def test_unlisted_extra_file_is_refused(copy):
    (copy / "payload.sh").write_text("echo owned\n")
    with pytest.raises(BundleError, match=r"'payload.sh' is not listed"):
        load_bundle(copy)


def test_untrusted_signer_is_refused_naming_the_key(copy, keys, tmp_path):
    from runtime.signing import load_private_key, sign

    (copy / "manifest.sig").write_bytes(sign((copy / "manifest.json").read_bytes(),
                                             load_private_key(keys["other_private"])))
    with pytest.raises(SignatureError, match=rf"unknown key {keys['other_key_id']}"):
        load_bundle(copy, TrustStore.load(keys["trust"]))


def test_unsigned_bundle_under_a_trust_store(copy, keys):
    (copy / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        load_bundle(copy, TrustStore.load(keys["trust"]))
    with load_bundle(copy) as b:  # without a trust store an unsigned bundle is accepted (hashes still checked)
        assert b.signer is None


def test_malformed_signature_file(copy, keys):
    (copy / "manifest.sig").write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        load_bundle(copy, TrustStore.load(keys["trust"]))


def _tar(src: Path, dst: Path, extra: dict[str, bytes] | None = None) -> Path:
    import io

    with tarfile.open(dst, "w") as tar:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=f"{src.name}/{p.relative_to(src).as_posix()}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def test_tar_bundle_roundtrip_and_tamper(copy, keys, tmp_path):
    good = _tar(copy, tmp_path / "good.tar")
    with load_bundle(good, TrustStore.load(keys["trust"])) as b:
        assert b.manifest.name == "pcb-aoi" and b.model_path.is_file()
        root = b.root
    assert not root.exists()  # the private extraction directory is removed on close
    flip(copy / "reference.npz")
    bad = _tar(copy, tmp_path / "bad.tar")
    with pytest.raises(BundleError, match="reference.npz"):
        load_bundle(bad, TrustStore.load(keys["trust"]))


def test_tar_member_escaping_the_bundle_is_refused(copy, tmp_path):
    evil = _tar(copy, tmp_path / "evil.tar", {"../../etc/evil": b"x"})
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(evil)


def test_not_a_bundle(tmp_path):
    p = tmp_path / "junk.tar"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(p)


def test_manifest_with_unknown_schema_field_is_refused(copy):
    doc = json.loads((copy / "manifest.json").read_text())
    doc["surprise"] = 1
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="manifest.json is invalid"):
        load_bundle(copy)


def _list_file(copy: Path, name: str, data: bytes) -> None:
    """Add `name` (possibly nested) to the bundle and to its manifest (unsigned from then on: loaded without trust)."""
    import hashlib

    path = copy / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (copy / "manifest.json").write_text(json.dumps(doc))
    (copy / "manifest.sig").unlink(missing_ok=True)


@pytest.mark.parametrize("hashes", [True, False])
def test_links_are_refused_for_a_listed_file_and_for_any_directory_above_it(copy, hashes):
    _list_file(copy, "extra/deeper/data.bin", b"x" * 100)
    with load_bundle(copy, hashes=hashes):
        pass  # intact: loads
    # a directory between the root and the file is a link to a directory with the very same content
    (copy / "extra").rename(copy / "elsewhere")
    (copy / "extra").symlink_to(copy / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match=r"'extra/deeper/data.bin' is a link"):
        load_bundle(copy, hashes=hashes)
    (copy / "extra").unlink()
    (copy / "elsewhere").rename(copy / "extra")
    (copy / "extra" / "deeper").rename(copy / "extra" / "kept")
    (copy / "extra" / "deeper").symlink_to(copy / "extra" / "kept", target_is_directory=True)
    with pytest.raises(BundleError, match=r"'extra/deeper/data.bin' is a link"):
        load_bundle(copy, hashes=hashes)
    # the listed file itself is a link to an identical file
    shutil.copy(copy / "model.onnx", copy / "model.copy")
    (copy / "model.onnx").unlink()
    (copy / "model.onnx").symlink_to(copy / "model.copy")
    with pytest.raises(BundleError, match=r"'model.onnx' is a link"):
        load_bundle(copy, hashes=hashes)


def test_a_listed_file_below_a_file_is_missing(copy):
    _list_file(copy, "sub/data.bin", b"y")
    shutil.rmtree(copy / "sub")
    (copy / "sub").write_bytes(b"not a directory")
    with pytest.raises(BundleError, match=r"'sub/data.bin' named in the manifest is missing"):
        load_bundle(copy, hashes=False)
