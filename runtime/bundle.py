"""Read and verify bundles: a directory `{name}-v{major}.{minor}` or an uncompressed tar of it (export/ writes them).

Loading checks every file's size and sha256 against the manifest and,
with a trust store, the ed25519 signature over manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from pydantic import ValidationError

from runtime.errors import BundleError
from runtime.fsio import CHUNK, sha256_file
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


MAX_MANIFEST = 4 << 20  # a manifest lists files and metrics: kilobytes; anything near this is not one
MAX_SIGNATURE = 64 << 10
MAX_MEMBERS = 100_000  # a Core ML package has tens of files; headers are read one by one up to this many


def _member_kind(m: tarfile.TarInfo) -> str | None:
    """Why a member cannot be extracted as a plain file, or None."""
    if m.issparse() or any(k.startswith("GNU.sparse") for k in (m.pax_headers or {})):
        return "a sparse file"
    if m.islnk() or m.issym():
        return f"a link (to {m.linkname!r})"
    if m.isdir():
        return None
    if not m.isreg():
        return "a device, fifo or other special file"
    return None


def _tar_members(tar: tarfile.TarFile, where: str) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """(top-level prefix, regular-file members by path inside the bundle). Refuses, before anything is read or
    written: links, devices, sparse files, names escaping the bundle, duplicate names, too many members."""
    members: list[tarfile.TarInfo] = []
    while True:
        try:
            m = tar.next()
        except (tarfile.TarError, ValueError, EOFError, UnicodeError) as err:
            # tarfile raises ValueError, not TarError, on some malformed PAX sparse headers
            raise BundleError(f"{where}: unreadable tar header after {len(members)} members ({err})") from err
        if m is None:
            break
        members.append(m)
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"{where}: more than {MAX_MEMBERS} tar members; not a bundle")
    names = [m.name for m in members]
    prefix = ""
    if MANIFEST not in names:
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1:
            prefix = tops.pop() + "/"
    files: dict[str, tarfile.TarInfo] = {}
    for m in members:
        parts = m.name.split("/")
        if m.name.startswith("/") or ".." in parts or "\\" in m.name or "\0" in m.name:
            raise BundleError(f"{where}: tar member {m.name!r} escapes the bundle")
        why = _member_kind(m)
        if why is not None:
            raise BundleError(f"{where}: tar member {m.name!r} is {why}; only plain files are allowed")
        if m.isdir():
            continue
        rel = m.name[len(prefix):] if prefix and m.name.startswith(prefix) else m.name
        if not rel or rel in files:
            raise BundleError(f"{where}: tar member {m.name!r} appears twice (or names the bundle itself)")
        files[rel] = m
    return prefix, files


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo, limit: int, where: str) -> bytes:
    if m.size > limit:
        raise BundleError(f"{where}: {m.name} is {m.size} bytes, more than a {limit}-byte {m.name.split('/')[-1]}")
    f = tar.extractfile(m)
    if f is None:
        raise BundleError(f"{where}: cannot read {m.name}")
    with f:
        data = f.read(limit + 1)
    if len(data) != m.size:
        raise BundleError(f"{where}: {m.name} is truncated")
    return data


def _extract_listed(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo], manifest: Manifest, root: Path,
                    where: str) -> None:
    """Write exactly the files the manifest lists, each bounded by its declared size and checked against its
    sha256 while it is written. Everything else was refused before the first byte was written."""
    for rel, m in files.items():
        if rel in (MANIFEST, SIGNATURE):
            continue
        entry = manifest.files.get(rel)
        if entry is None:
            raise BundleError(f"{where}: file {rel!r} is not listed in the manifest")
        if m.size != entry.size:
            raise BundleError(f"{where}: file {rel!r} has {m.size} bytes, manifest says {entry.size}")
    for name in manifest.files:
        if name not in files:
            raise BundleError(f"{where}: file {name!r} named in the manifest is missing")
    for rel, m in files.items():
        target = root / rel
        if rel in (MANIFEST, SIGNATURE):
            continue
        entry = manifest.files[rel]
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        if src is None:
            raise BundleError(f"{where}: cannot read {m.name}")
        digest, left = hashlib.sha256(), entry.size
        with src, open(target, "xb") as dst:
            while left > 0:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise BundleError(f"{where}: {m.name} is truncated")
                digest.update(chunk)
                dst.write(chunk)
                left -= len(chunk)
        if digest.hexdigest() != entry.sha256:
            raise BundleError(f"{where}: file {rel!r} does not match its sha256 in the manifest (tampered or corrupt)")


def verify_tree(root: Path, manifest: Manifest, where: str, hashes: bool = True) -> None:
    """Every listed file present with its size and hash (`hashes=False`: size only); nothing unlisted."""
    for name, entry in manifest.files.items():
        p = root / name
        # the file and every directory between it and root: no links (names are relative, without `..`: the
        # manifest's own validation). One lstat each; comparing each ancestor with root's ancestors took longer
        # than the rest of a cached bundle's verify
        if any((root / parent).is_symlink() for parent in PurePosixPath(name).parents if parent.parts):
            raise BundleError(f"{where}: file {name!r} is a link; only plain files are allowed")
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{where}: file {name!r} is a link; only plain files are allowed")
        if st is None or not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{where}: file {name!r} named in the manifest is missing")
        if st.st_size != entry.size:
            raise BundleError(f"{where}: file {name!r} has {st.st_size} bytes, manifest says {entry.size}")
        if hashes and sha256_file(p) != entry.sha256:
            raise BundleError(f"{where}: file {name!r} does not match its sha256 in the manifest (tampered or corrupt)")
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in manifest.files and rel not in (MANIFEST, SIGNATURE):
                raise BundleError(f"{where}: file {rel!r} is not listed in the manifest")


def load_bundle(path: Path | str, trust_store: TrustStore | None = None, extract_to: Path | None = None,
                label: str | None = None, hashes: bool = True) -> Bundle:
    """Open and verify a bundle directory or .tar. With a trust store the signature must be valid and known. A tar
    is read manifest first: its signature is checked and every member judged against it before anything is
    written; then only the listed files are written, bounded by their declared sizes and hashed on the way.
    Errors name `label` (what the user sent, e.g. an uploaded file's name) instead of `path` when given.
    `hashes=False` (directories only) skips re-hashing the files, for a caller that hashed these very files against
    this manifest before and can tell they have not changed since (edge/agent/cache.py's stat stamp); the signature,
    the listed files, their sizes and the absence of anything unlisted are still checked."""
    path = Path(path)
    where = label or str(path)
    if not path.exists():
        raise BundleError(f"{where}: no such bundle")
    if path.is_dir():
        data, sig = _dir_manifest(path, where)
        signer = trust_store.verify(data, sig, where) if trust_store is not None else None
        manifest = _parse_manifest(data, where)
        verify_tree(path, manifest, where, hashes)
        return Bundle(path, manifest, data, signer, path)
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeError) as err:
        raise BundleError(f"{where}: not a bundle directory or uncompressed tar ({err})") from err
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        with tar:
            prefix, files = _tar_members(tar, where)
            if MANIFEST not in files:
                raise BundleError(f"{where}: no manifest.json")
            data = _read_member(tar, files[MANIFEST], MAX_MANIFEST, where)
            sig = _read_member(tar, files[SIGNATURE], MAX_SIGNATURE, where) if SIGNATURE in files else None
            signer = trust_store.verify(data, sig, where) if trust_store is not None else None
            manifest = _parse_manifest(data, where)
            if extract_to is None:
                tmp = tempfile.TemporaryDirectory(prefix="shadowline-bundle-")
                root = Path(tmp.name)
            else:
                root = Path(extract_to)
                root.mkdir(parents=True, exist_ok=True)
            _extract_listed(tar, files, manifest, root, where)
            (root / MANIFEST).write_bytes(data)
            if sig is not None:
                (root / SIGNATURE).write_bytes(sig)
    except (tarfile.TarError, OSError, ValueError, EOFError) as err:
        if tmp is not None:
            tmp.cleanup()
        raise BundleError(f"{where}: unreadable tar ({err})") from err
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root, manifest, data, signer, path, tmp)


def _dir_manifest(root: Path, where: str) -> tuple[bytes, bytes | None]:
    mpath = root / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise BundleError(f"{where}: no manifest.json")
    if mpath.stat().st_size > MAX_MANIFEST:
        raise BundleError(f"{where}: manifest.json is over {MAX_MANIFEST} bytes; not a manifest")
    sig_path = root / SIGNATURE
    sig = sig_path.read_bytes()[:MAX_SIGNATURE + 1] if sig_path.is_file() and not sig_path.is_symlink() else None
    return mpath.read_bytes(), sig


def read_manifest(path: Path | str) -> Manifest:
    """The manifest of a bundle directory or tar, without verifying anything (for listing)."""
    path = Path(path)
    if path.is_dir():
        return _parse_manifest(_dir_manifest(path, str(path))[0], str(path))
    try:
        with tarfile.open(path, "r:") as tar:
            _, files = _tar_members(tar, str(path))
            if MANIFEST in files:
                return _parse_manifest(_read_member(tar, files[MANIFEST], MAX_MANIFEST, str(path)), str(path))
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeError) as err:
        raise BundleError(f"{path}: not a bundle directory or uncompressed tar ({err})") from err
    raise BundleError(f"{path}: no manifest.json")
