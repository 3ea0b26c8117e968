"""Read and verify bundles: a directory `{name}-v{major}.{minor}` or an uncompressed tar of it (export/ writes them).

Loading checks every file's size and sha256 against the manifest and,
with a trust store, the ed25519 signature over manifest.json.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from runtime.errors import BundleError
from runtime.fsio import sha256_file
from runtime.manifest import FileEntry, Manifest
from runtime.signing import TrustStore

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"


class Bundle:
    """A verified bundle on disk. A `.tar` is extracted to a private temporary directory, removed by close()."""

    def __init__(self, root: Path, manifest: Manifest, manifest_bytes: bytes, signer: str | None,
                 source: Path, tmp: tempfile.TemporaryDirectory | None = None) -> None:
        self.root, self.manifest, self.manifest_bytes = root, manifest, manifest_bytes
        self.signer, self.source, self._tmp = signer, source, tmp

    def path(self, name: str) -> Path:
        if name not in self.manifest.files and not any(f.startswith(name.rstrip("/") + "/")
                                                       for f in self.manifest.files):
            raise BundleError(f"{self.source}: the manifest lists no file {name!r}")
        return self.root / name

    @property
    def model_path(self) -> Path:
        return self.path("model.onnx")

    def reference(self) -> dict[str, np.ndarray]:
        with np.load(self.path("reference.npz"), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_tree(root: Path) -> dict[str, FileEntry]:
    """Every file under `root` except the manifest and signature, by relative POSIX path."""
    entries: dict[str, FileEntry] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST, SIGNATURE):
                entries[rel] = FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
    return entries


def _parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as err:
        raise BundleError(f"{where}: manifest.json is invalid: {err}") from err


def _safe_members(tar: tarfile.TarFile, where: str) -> tuple[str, list[tarfile.TarInfo]]:
    members = tar.getmembers()
    prefix = ""
    names = [m.name for m in members]
    if MANIFEST not in names:
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1:
            prefix = tops.pop() + "/"
    for m in members:
        parts = m.name.split("/")
        if m.name.startswith("/") or ".." in parts:
            raise BundleError(f"{where}: tar member {m.name!r} escapes the bundle")
        if not (m.isfile() or m.isdir()):
            raise BundleError(f"{where}: tar member {m.name!r} is a link or device; only files are allowed")
    return prefix, members


def verify_tree(root: Path, manifest: Manifest, where: str) -> None:
    """Every listed file present with its size and hash; nothing unlisted."""
    for name, entry in manifest.files.items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{where}: file {name!r} named in the manifest is missing")
        if p.stat().st_size != entry.size:
            raise BundleError(f"{where}: file {name!r} has {p.stat().st_size} bytes, manifest says {entry.size}")
        if sha256_file(p) != entry.sha256:
            raise BundleError(f"{where}: file {name!r} does not match its sha256 in the manifest (tampered or corrupt)")
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in manifest.files and rel not in (MANIFEST, SIGNATURE):
                raise BundleError(f"{where}: file {rel!r} is not listed in the manifest")


def load_bundle(path: Path | str, trust_store: TrustStore | None = None, extract_to: Path | None = None,
                label: str | None = None) -> Bundle:
    """Open and verify a bundle directory or .tar. With a trust store the signature must be valid and known.
    Errors name `label` (what the user sent, e.g. an uploaded file's name) instead of `path` when given."""
    path = Path(path)
    where = label or str(path)
    if not path.exists():
        raise BundleError(f"{where}: no such bundle")
    tmp: tempfile.TemporaryDirectory | None = None
    if path.is_dir():
        root = path
    else:
        try:
            tar = tarfile.open(path, "r:")
        except (tarfile.TarError, OSError) as err:
            raise BundleError(f"{where}: not a bundle directory or uncompressed tar ({err})") from err
        with tar:
            prefix, members = _safe_members(tar, where)
            if extract_to is None:
                tmp = tempfile.TemporaryDirectory(prefix="shadowline-bundle-")
                root = Path(tmp.name)
            else:
                root = Path(extract_to)
                root.mkdir(parents=True, exist_ok=True)
            for m in members:
                if not m.isfile():
                    continue
                rel = m.name[len(prefix):] if prefix and m.name.startswith(prefix) else m.name
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    try:
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{where}: no manifest.json")
        data = mpath.read_bytes()
        sig_path = root / SIGNATURE
        sig = sig_path.read_bytes() if sig_path.is_file() else None
        signer = trust_store.verify(data, sig, where) if trust_store is not None else None
        manifest = _parse_manifest(data, where)
        verify_tree(root, manifest, where)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root, manifest, data, signer, path, tmp)


def read_manifest(path: Path | str) -> Manifest:
    """The manifest of a bundle directory or tar, without verifying anything (for listing)."""
    path = Path(path)
    if path.is_dir():
        return _parse_manifest((path / MANIFEST).read_bytes(), str(path))
    with tarfile.open(path, "r:") as tar:
        for m in tar.getmembers():
            if m.name == MANIFEST or m.name.endswith("/" + MANIFEST) and m.name.count("/") == 1:
                f = tar.extractfile(m)
                assert f is not None
                return _parse_manifest(f.read(), str(path))
    raise BundleError(f"{path}: no manifest.json")
