"""Engine cache: keys, atomic writes, integrity on read, LRU eviction, orphans, several processes at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from runtime.errors import BundleError, ConfigError
from runtime.loaders.tensorrt.cache import CacheKey, EngineCache, default_cache_dir

BASE = dict(onnx_sha256="a" * 64, trt_version="10.3.0", compute_capability="8.7", platform="l4t-36.4.0",
            precision="fp16", profile="data:1x3x227x227/4x3x227x227/8x3x227x227")


def key(**kw: str) -> CacheKey:
    return CacheKey(**{**BASE, **kw})


def test_every_field_changes_the_key() -> None:
    changes = dict(onnx_sha256="b" * 64, trt_version="10.3.1", compute_capability="8.6", platform="l4t-36.4.3",
                   precision="fp32", profile="data:1x3x227x227/1x3x227x227/1x3x227x227")
    digests = {key().digest} | {key(**{k: v}).digest for k, v in changes.items()}
    assert len(digests) == len(changes) + 1
    assert key().digest == CacheKey(**BASE).digest  # stable across instances


def test_key_rejects_a_bad_hash() -> None:
    with pytest.raises(ValueError):
        key(onnx_sha256="not-a-hash")


def test_put_get_and_index(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c")
    assert cache.get(key()) is None
    path = cache.put(key(), b"engine-bytes", build_seconds=12.5, meta={"bundle": "pcb-aoi-v1.0"})
    assert path.read_bytes() == b"engine-bytes"
    assert cache.get(key()) == path
    (entry,) = cache.entries()
    assert entry.key == key() and entry.size == 12 and entry.build_seconds == 12.5
    assert entry.meta["bundle"] == "pcb-aoi-v1.0"
    # Nothing but the engine, the index and the lock: no temporary file left behind.
    assert sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file()) == [
        ".lock", f"{key().digest}.engine", "index.json"]
    # A second handle (another process) sees the same entry.
    assert EngineCache(tmp_path / "c").get(key()) == path


def test_refuses_empty_engine(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="empty"):
        EngineCache(tmp_path).put(key(), b"")


def test_corrupt_engine_is_dropped(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.put(key(), b"0123456789")
    path.write_bytes(b"0123456780")  # same size, one byte flipped
    assert cache.get(key()) is None
    assert not path.exists() and cache.entries() == []
    cache.put(key(), b"0123456789")
    path.write_bytes(b"short")
    assert cache.get(key(), verify=False) is None  # size check even without hashing


def test_missing_file_is_dropped(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.put(key(), b"x" * 10).unlink()
    assert cache.get(key()) is None and cache.entries() == []


def test_damaged_index_means_empty_cache_then_prune(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.put(key(), b"x" * 10)
    cache.index_path.write_text("{ not json")
    assert cache.get(key()) is None
    assert cache.prune() == [path.name]
    assert not path.exists()


def test_prune_removes_orphans_and_leftover_temp_files(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    kept = cache.put(key(), b"x" * 10)
    (cache.engines / ".deadbeef.engine.abc.tmp").write_bytes(b"half")
    (cache.engines / "0123.engine").write_bytes(b"orphan")
    assert cache.prune() == [".deadbeef.engine.abc.tmp", "0123.engine"]
    assert kept.exists() and cache.get(key()) == kept


def test_evicts_least_recently_used_by_bytes(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path, max_bytes=250)
    a, b = key(precision="fp32"), key(precision="fp16")
    cache.put(a, b"a" * 100)
    time.sleep(0.01)
    cache.put(b, b"b" * 100)
    time.sleep(0.01)
    assert cache.get(a) is not None  # a is now the most recently used
    time.sleep(0.01)
    c = key(precision="int8")
    cache.put(c, b"c" * 100)
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.total_bytes() == 200
    assert not (cache.engines / f"{b.digest}.engine").exists()


def test_evicts_by_entry_count_but_keeps_the_new_entry(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path, max_entries=2, max_bytes=50)
    keys = [key(platform=f"driver-{i}") for i in range(3)]
    for k in keys:
        cache.put(k, b"z" * 10)
        time.sleep(0.01)
    assert [e.key for e in cache.entries()] == [keys[2], keys[1]]
    big = key(platform="driver-big")
    cache.put(big, b"z" * 80)  # over the byte budget on its own: kept, everything else goes
    assert [e.key for e in cache.entries()] == [big]


def test_bad_budgets() -> None:
    with pytest.raises(ConfigError):
        EngineCache("/tmp/x", max_bytes=0)
    with pytest.raises(ConfigError):
        EngineCache("/tmp/x", max_entries=-1)


def test_remove(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.put(key(), b"x")
    assert cache.remove(key()) and not path.exists() and not cache.remove(key())


def test_timing_cache_path_is_per_gpu_not_per_model(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.timing_cache_path(key()) == cache.timing_cache_path(key(onnx_sha256="c" * 64, precision="fp32"))
    assert cache.timing_cache_path(key()) != cache.timing_cache_path(key(compute_capability="8.6"))


def test_default_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHADOWLINE_ENGINE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SHADOWLINE_ENGINE_CACHE")
    assert default_cache_dir().parts[-2:] == ("shadowline", "engines")


def _writer(root: str, i: int) -> None:
    cache = EngineCache(root)
    for j in range(5):
        cache.put(key(platform=f"p{i}-{j}"), os.urandom(64))


def test_several_processes_share_one_index(tmp_path: Path) -> None:
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    cache = EngineCache(tmp_path)
    assert len(cache.entries()) == 20
    assert all(cache.get(e.key) is not None for e in cache.entries())
