"""The release cache hashes each bundle directory once per process (a rollback to a cached release and the prepare
step's reload do not hash it again), and hashes it again, refusing it, as soon as it changed on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.agent.cache import ReleaseCache
from runtime import bundle as runtime_bundle
from runtime.errors import BundleError
from runtime.signing import TrustStore
from tests.agent.conftest import release_for


def test_a_cached_bundle_is_hashed_once_and_again_once_it_changed(tmp_path: Path, tars: dict[str, Path],
                                                                   keys: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, art = release_for(tars["v1.0"], 1)
    trust = TrustStore.load(keys["trust"])
    hashed: list[str] = []
    real = runtime_bundle.sha256_file
    monkeypatch.setattr(runtime_bundle, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))

    cache = ReleaseCache(tmp_path / "releases")
    shutil.copy(tars["v1.0"], cache.tar_path(art))
    final = cache.install(art, trust)  # extracted from the tar, hashed on the way
    assert cache.verified(art)
    listed = len(runtime_bundle.load_bundle(final, hashes=False).manifest.files)
    hashed.clear()
    for _ in range(3):  # e.g. rollbacks to this cached release
        assert cache.install(art, trust) == final
    assert hashed == []

    restarted = ReleaseCache(tmp_path / "releases")  # a new process knows nothing it hashed before
    assert not restarted.verified(art)
    restarted.install(art, trust)
    assert len(hashed) == listed
    restarted.install(art, trust)
    assert len(hashed) == listed

    model = next(final.glob("*.onnx"))
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    model.write_bytes(bytes(data))
    assert not restarted.verified(art)
    with pytest.raises(BundleError, match="does not match its sha256"):
        restarted.install(art, trust)
