"""Tar bombs and tricks against bundle reading (runtime/bundle.py), the way the fleet and devices open a bundle
tar, and through `POST /api/bundles`: each built from a real signed bundle plus one malicious member, refused
before a byte is written to the extraction directory. The sparse bomb is made by GNU tar itself, as the issue's
was (10 KB of tar, 2 GB declared)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from runtime.bundle import load_bundle
from runtime.errors import BundleError, SignatureError
from runtime.signing import TrustStore
from tests.fleet.conftest import auth


def _base(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of a genuine bundle tar, as (info, data)."""
    out = []
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            info = tarfile.TarInfo(f"{bundle.name}/{p.relative_to(bundle).as_posix()}")
            data = p.read_bytes()
            info.size = len(data)
            out.append((info, data))
    return out


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"", **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data if kind == tarfile.REGTYPE else None


def _cases(bundle: Path, tmp: Path) -> list[tuple[str, Path]]:
    top = bundle.name
    base = _base(bundle)
    model = next(d for i, d in base if i.name.endswith("/model.onnx"))
    cases: list[tuple[str, Path]] = []

    def case(name: str, members: list, fmt: int = tarfile.PAX_FORMAT) -> None:
        cases.append((name, _write(tmp / f"{len(cases):02d}.tar", members, fmt)))

    case("unlisted extra file", [*base, _member(f"{top}/extra.bin", data=b"x" * 4096)])
    case("symlink to /etc/passwd", [*base, _member(f"{top}/passwd", tarfile.SYMTYPE, linkname="/etc/passwd")])
    case("symlink replacing a listed file",
         [*(m for m in base if not m[0].name.endswith("/reference.npz")),
          _member(f"{top}/reference.npz", tarfile.SYMTYPE, linkname="../../etc/passwd")])
    case("hard link to a file outside", [*base, _member(f"{top}/hard", tarfile.LNKTYPE, linkname="/etc/shadow")])
    case("character device", [*base, _member(f"{top}/null", tarfile.CHRTYPE, devmajor=1, devminor=3)])
    case("fifo", [*base, _member(f"{top}/pipe", tarfile.FIFOTYPE)])
    case("path traversal ../", [*base, _member(f"{top}/../../escaped.txt", data=b"owned")])
    case("absolute path", [*base, _member("/tmp/shadowline-owned.txt", data=b"owned")])
    case("duplicate of model.onnx with other bytes", [*base, _member(f"{top}/model.onnx", data=b"\0" * len(model))])
    case("listed file larger than declared",
         [*(m for m in base if not m[0].name.endswith("/model.onnx")), _member(f"{top}/model.onnx", data=model * 3)])
    case("manifest of 5 MB", [_member(f"{top}/manifest.json", data=b" " * (5 << 20)),
                              *(m for m in base if not m[0].name.endswith("/manifest.json"))])
    pax = tarfile.TarInfo(f"{top}/sparse.bin")
    pax.size = 0
    pax.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": f"{top}/sparse.bin",
                       "GNU.sparse.realsize": str(2 << 30)}
    case("PAX sparse member declaring 2 GB", [*base, (pax, b"")])
    # the bomb: GNU tar --sparse over a 2 GB hole, a few KB of archive
    src = tmp / "sparse-src" / top
    shutil.copytree(bundle, src)
    with open(src / "model.onnx.big", "wb") as fh:
        fh.truncate(2 << 30)
    gnu = tmp / f"{len(cases):02d}.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(gnu), "-C", str(src.parent), top], check=True)
    cases.append(("GNU sparse bomb: 2 GB declared", gnu))
    return cases


def test_tar_tricks_are_refused_before_anything_is_written(bundles, keys, tmp_path, attack):
    trust = TrustStore.load(keys["trust"])
    for name, path in _cases(bundles["pcb-aoi"], tmp_path):
        if name.startswith("GNU sparse"):  # a bomb: a small archive that declares gigabytes
            assert os.path.getsize(path) < (64 << 20) and any(m.issparse() for m in tarfile.open(path).getmembers())
        for store in (trust, None):
            with attack(f"bundle tar: {name}{'' if store else ' (no trust store)'}"):
                out = tmp_path / "out" / f"{path.stem}-{bool(store)}"
                out.mkdir(parents=True)
                with pytest.raises(BundleError) as err:
                    load_bundle(path, store, extract_to=out)
                assert path.name in str(err.value)
                written = [p for p in out.rglob("*")]
                assert not written, f"{name}: wrote {written[:5]} before refusing"
                assert not Path("/tmp/shadowline-owned.txt").exists()


def test_unsigned_and_forged_signatures_are_refused_before_writing(bundles, keys, tmp_path, attack):
    from runtime.signing import load_private_key, sign

    trust = TrustStore.load(keys["trust"])
    src = bundles["pcb-aoi"]
    unsigned = tmp_path / "unsigned" / src.name
    shutil.copytree(src, unsigned)
    (unsigned / "manifest.sig").unlink()
    intruder = tmp_path / "intruder" / src.name
    shutil.copytree(src, intruder)
    (intruder / "manifest.sig").write_bytes(sign((src / "manifest.json").read_bytes(),
                                                 load_private_key(keys["other_private"])))
    tampered = tmp_path / "tampered" / src.name
    shutil.copytree(src, tampered)
    m = json.loads((tampered / "manifest.json").read_text())
    m["name"] = "evil"
    (tampered / "manifest.json").write_text(json.dumps(m))
    for name, d, error in (("unsigned bundle", unsigned, SignatureError),
                           ("signed by an unknown key", intruder, SignatureError),
                           ("manifest changed after signing", tampered, SignatureError)):
        tar = tmp_path / f"{name.replace(' ', '-')}.tar"
        with tarfile.open(tar, "w") as t:
            t.add(d, arcname=d.name)
        with attack(f"bundle tar: {name}"):
            out = tmp_path / "out" / name.replace(" ", "-")
            out.mkdir(parents=True)
            with pytest.raises(error):
                load_bundle(tar, trust, extract_to=out)
            assert not list(out.rglob("*"))


def test_tar_bombs_pushed_to_the_fleet(bundles, tmp_path, client, tokens, fleet, attack):
    cases = _cases(bundles["pcb-aoi"], tmp_path)
    for name, path in [c for c in cases if "sparse" in c[0] or "symlink" in c[0] or "traversal" in c[0]]:
        with attack(f"POST /api/bundles: {name}"):
            before = sorted(p.name for p in fleet.artifacts_dir.iterdir()) if fleet.artifacts_dir.exists() else []
            r = client.post("/api/bundles", content=path.read_bytes(), headers=auth(tokens["admin"]))
            assert r.status_code in (403, 422), (r.status_code, r.text)
            assert "the uploaded bundle" in r.json()["error"]  # the admin's upload, not the server's temp file
            assert sorted(p.name for p in fleet.artifacts_dir.iterdir()) == before
            assert fleet.registry.list() == []
