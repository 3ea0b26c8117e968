"""The device's release cache: the last N releases kept on disk, verified and ready, so a rollback needs no
download. Layout under `releases_dir`:

    bundles/{bundle}-{sha256[:16]}/   extracted, verified bundle directories (keyed by the tar's hash, so two tars
                                      that claim the same bundle id never overwrite each other)
    downloads/{sha256}.tar[.part]      downloads in progress or not yet extracted
    cache.json                         the releases, most recently used first, each with its full desired state
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol import Artifact, Desired
from runtime.bundle import load_bundle
from runtime.errors import BundleError
from runtime.fsio import atomic_write_text, fsync_dir
from runtime.signing import TrustStore


class CachedRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(description="release ref, plus '+candidate ref' when a candidate runs beside it")
    desired: Desired
    ready: bool = Field(False, description="passed the device check; activation needs no prepare/check again")


class CacheIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    releases: list[CachedRelease] = Field(default_factory=list, description="most recently used first")


def release_key(desired: Desired) -> str:
    key = desired.release.ref
    return f"{key}+{desired.candidate.ref}" if desired.candidate else key


def tree_stamp(root: Path) -> tuple:
    """What a directory's files look like to stat: path, size, inode, mtime and ctime of each. Rewriting a file, or
    replacing, adding, removing or renaming one, changes it (ctime cannot be set back by a process)."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_ino,
                        st.st_mtime_ns, st.st_ctime_ns))
    return tuple(sorted(out))


class ReleaseCache:
    """Each bundle directory is hashed once per process: when it is verified (extracted from its tar, or checked
    after a restart) its stat stamp is kept, and later verifies of the same, unchanged directory (a rollback to a
    cached release, the prepare step's reload) check the signature, the files and their sizes without hashing them
    again. A directory that changed on disk since (its stamp differs) is hashed in full."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root, self.keep = Path(root), keep
        self._stamps: dict[Path, tuple] = {}
        (self.root / "bundles").mkdir(parents=True, exist_ok=True)
        (self.root / "downloads").mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "cache.json"

    # -- index ---------------------------------------------------------------------------------------------------
    def index(self) -> CacheIndex:
        if not self.index_path.exists():
            return CacheIndex()
        try:
            return CacheIndex.model_validate_json(self.index_path.read_bytes())
        except ValueError:
            # a corrupt index only costs downloads: the bundles on disk are re-verified before use anyway
            return CacheIndex()

    def _save(self, index: CacheIndex) -> None:
        atomic_write_text(self.index_path, index.model_dump_json(by_alias=True, indent=1))

    def get(self, key: str) -> CachedRelease | None:
        return next((r for r in self.index().releases if r.key == key), None)

    def keys(self) -> list[str]:
        return [r.key for r in self.index().releases]

    def remember(self, desired: Desired, ready: bool | None = None) -> None:
        """Put `desired` first (most recently used); `ready=None` keeps the flag it had."""
        index = self.index()
        key = release_key(desired)
        old = next((r for r in index.releases if r.key == key), None)
        keep_ready = old.ready if old is not None and release_key(old.desired) == key else False
        entry = CachedRelease(key=key, desired=desired, ready=keep_ready if ready is None else ready)
        index.releases = [entry] + [r for r in index.releases if r.key != key]
        self._save(index)

    def is_ready(self, desired: Desired) -> bool:
        """Every bundle of `desired` is on disk and passed the device check in some cached release (a new
        revision that only changes thresholds needs no new check)."""
        checked = {a.sha256 for r in self.index().releases if r.ready for a in r.desired.artifacts}
        return all(a.sha256 in checked and self.has_bundle(a) for a in desired.artifacts)

    # -- bundles -------------------------------------------------------------------------------------------------
    def bundle_dir(self, artifact: Artifact) -> Path:
        return self.root / "bundles" / f"{artifact.bundle}-{artifact.sha256[:16]}"

    def tar_path(self, artifact: Artifact) -> Path:
        return self.root / "downloads" / f"{artifact.sha256}.tar"

    def has_bundle(self, artifact: Artifact) -> bool:
        return (self.bundle_dir(artifact) / "manifest.json").is_file()

    def install(self, artifact: Artifact, trust: TrustStore | None) -> Path:
        """Verify the downloaded tar (or the cached directory) and return the bundle directory. The tar is
        extracted into a staging directory and renamed into place only once verified."""
        final = self.bundle_dir(artifact)
        if self.has_bundle(artifact):
            hashed = self.verified(artifact)
            with load_bundle(final, trust, hashes=not hashed) as b:
                self._check_id(b.manifest.bundle_id, artifact)
            if not hashed:
                self._stamps[final] = tree_stamp(final)
            return final
        tar = self.tar_path(artifact)
        if not tar.is_file():
            raise BundleError(f"{artifact.bundle}: not downloaded ({tar} missing)")
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            with load_bundle(tar, trust, extract_to=staging) as b:
                self._check_id(b.manifest.bundle_id, artifact)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            fsync_dir(final.parent)
            self._stamps[final] = tree_stamp(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        tar.unlink(missing_ok=True)
        return final

    def verified(self, artifact: Artifact) -> bool:
        """The bundle directory was hashed by this cache in this process and has not changed on disk since."""
        final = self.bundle_dir(artifact)
        stamp = self._stamps.get(final)
        try:
            return stamp is not None and stamp == tree_stamp(final)
        except OSError:
            return False

    @staticmethod
    def _check_id(bundle_id: str, artifact: Artifact) -> None:
        if bundle_id != artifact.bundle:
            raise BundleError(f"artifact {artifact.bundle!r} holds bundle {bundle_id!r}")

    def paths(self, desired: Desired) -> dict[str, Path]:
        return {a.bundle: self.bundle_dir(a) for a in desired.artifacts}

    # -- pruning -------------------------------------------------------------------------------------------------
    def prune(self, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Keep the `keep` most recent releases (plus protected keys); delete bundles nobody keeps. Returns the
        dropped release keys."""
        index = self.index()
        kept: list[CachedRelease] = []
        dropped: list[CachedRelease] = []
        for r in index.releases:
            (kept if len(kept) < self.keep or r.key in protect else dropped).append(r)
        if dropped:
            index.releases = kept
            self._save(index)
        wanted = {self.bundle_dir(a).name for r in kept for a in r.desired.artifacts}
        wanted_tars = {self.tar_path(a).name for r in kept for a in r.desired.artifacts}
        for d in (self.root / "bundles").iterdir():
            if d.name not in wanted:
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
        for f in (self.root / "downloads").iterdir():
            if f.name not in wanted_tars and f.name.removesuffix(".part") not in wanted_tars:
                f.unlink(missing_ok=True)
        return [r.key for r in dropped]
