"""The engine cache: built engines kept on the device, keyed by everything that makes an engine unportable.

Layout under the cache root: `engines/<digest>.engine`, `index.json` (every entry: key, sha256, size, times, parity
summary) and `.lock`. An engine is written under a temporary name and renamed, then the index is rewritten
atomically, both under an exclusive file lock, so a crash leaves either the old cache or the new one; an engine
file the index does not list (a crash between the two steps) is removed by `prune`. Entries are evicted least
recently used first when the cache exceeds its byte or entry budget.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import BundleError, ConfigError
from runtime.fsio import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

INDEX_VERSION = 1


class CacheKey(BaseModel):
    """Everything an engine depends on. Two builds with equal keys are interchangeable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file the engine is built from")
    trt_version: str = Field(description="TensorRT major.minor.patch")
    compute_capability: str = Field(description="GPU compute capability, e.g. 8.7")
    platform: str = Field(description="l4t-<release> on a Jetson, driver-<version> elsewhere")
    precision: str = Field(description="fp32 | fp16 | int8")
    profile: str = Field(description="optimisation profile, Profile.key()")

    @property
    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.model_dump(), sort_keys=True).encode())[:32]


class CacheEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: CacheKey
    file: str
    sha256: str
    size: int
    created: float
    last_used: float
    build_seconds: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="bundle id, parity summary, plan notes")


class CacheIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = INDEX_VERSION
    entries: dict[str, CacheEntry] = Field(default_factory=dict)


class EngineCache:
    """A directory of engines with an index; safe for several processes on one device."""

    def __init__(self, root: Path | str, max_bytes: int | None = None, max_entries: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes, self.max_entries = max_bytes, max_entries
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError("engine cache max_bytes must be positive")
        if max_entries is not None and max_entries <= 0:
            raise ConfigError("engine cache max_entries must be positive")
        self.engines = self.root / "engines"
        self.index_path = self.root / "index.json"

    # -- locking and index --------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.engines.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_index(self) -> CacheIndex:
        if not self.index_path.exists():
            return CacheIndex()
        try:
            index = CacheIndex.model_validate_json(self.index_path.read_bytes())
        except (ValidationError, ValueError):
            # A damaged index loses the cache's memory, not correctness: engines are rebuilt, orphans pruned.
            return CacheIndex()
        return index if index.version == INDEX_VERSION else CacheIndex()

    def _write_index(self, index: CacheIndex) -> None:
        atomic_write_text(self.index_path, index.model_dump_json(indent=2))

    def timing_cache_path(self, key: CacheKey) -> Path:
        """Timing caches are shared by every model on one TensorRT + GPU + platform (kernel timings, not models)."""
        safe = f"trt{key.trt_version}-sm{key.compute_capability}-{key.platform}".replace("/", "_")
        return self.root / "timing" / f"{safe}.cache"

    # -- public API ---------------------------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        with self._locked():
            return sorted(self._read_index().entries.values(), key=lambda e: -e.last_used)

    def get(self, key: CacheKey, verify: bool = True) -> Path | None:
        """The engine file for `key`, or None. An entry whose file is missing or whose bytes no longer match its
        sha256 is dropped (and its file deleted) so the caller rebuilds it."""
        digest = key.digest
        with self._locked():
            index = self._read_index()
            entry = index.entries.get(digest)
            if entry is None:
                return None
            path = self.engines / entry.file
            ok = path.is_file() and path.stat().st_size == entry.size and (not verify or
                                                                             sha256_file(path) == entry.sha256)
            if not ok:
                del index.entries[digest]
                path.unlink(missing_ok=True)
                self._write_index(index)
                return None
            entry.last_used = time.time()
            self._write_index(index)
            return path

    def put(self, key: CacheKey, engine: bytes, build_seconds: float | None = None,
            meta: dict[str, Any] | None = None) -> Path:
        """Store `engine` (already checked by the caller) and evict what the budget no longer holds."""
        if not engine:
            raise BundleError("refusing to cache an empty engine")
        digest = key.digest
        name = f"{digest}.engine"
        with self._locked():
            atomic_write_bytes(self.engines / name, engine)
            index = self._read_index()
            now = time.time()
            index.entries[digest] = CacheEntry(key=key, file=name, sha256=sha256_bytes(engine), size=len(engine),
                                               created=now, last_used=now, build_seconds=build_seconds,
                                               meta=meta or {})
            self._evict(index, keep=digest)
            self._write_index(index)
        return self.engines / name

    def remove(self, key: CacheKey) -> bool:
        with self._locked():
            index = self._read_index()
            entry = index.entries.pop(key.digest, None)
            if entry is None:
                return False
            (self.engines / entry.file).unlink(missing_ok=True)
            self._write_index(index)
            return True

    def prune(self) -> list[str]:
        """Delete engine files the index does not list and temporary files left by a crash; return their names."""
        removed: list[str] = []
        with self._locked():
            index = self._read_index()
            listed = {e.file for e in index.entries.values()}
            for p in self.engines.iterdir():
                if p.name not in listed:
                    p.unlink(missing_ok=True)
                    removed.append(p.name)
            gone = [d for d, e in index.entries.items() if not (self.engines / e.file).is_file()]
            for d in gone:
                del index.entries[d]
            if gone:
                self._write_index(index)
        return sorted(removed)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def _evict(self, index: CacheIndex, keep: str) -> list[str]:
        evicted: list[str] = []
        lru = sorted((d for d in index.entries if d != keep), key=lambda d: index.entries[d].last_used)

        def over() -> bool:
            size = sum(e.size for e in index.entries.values())
            return bool((self.max_bytes is not None and size > self.max_bytes)
                        or (self.max_entries is not None and len(index.entries) > self.max_entries))

        while lru and over():
            d = lru.pop(0)
            entry = index.entries.pop(d)
            (self.engines / entry.file).unlink(missing_ok=True)
            evicted.append(d)
        return evicted


def default_cache_dir() -> Path:
    """$SHADOWLINE_ENGINE_CACHE, else ~/.cache/shadowline/engines."""
    env = os.environ.get("SHADOWLINE_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "shadowline" / "engines"
