"""Artifact downloads: Range resume after an interrupted transfer, the advertised size as a hard cap, sha256,
nothing at the final name until complete."""

from __future__ import annotations

import pytest

from edge.agent.download import download
from runtime.errors import BundleError
from runtime.fsio import sha256_file
from tests.agent.servers import ArtifactServer


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    (root / "a.tar").write_bytes(bytes(range(256)) * 4000)  # 1 MB
    s = ArtifactServer(root).start()
    yield s
    s.stop()


def test_interrupted_download_resumes_with_range(tmp_path, server):
    src = server.root / "a.tar"
    size, sha = src.stat().st_size, sha256_file(src)
    dest = tmp_path / "dl" / "a.tar"
    server.truncate_after = 300_000
    with pytest.raises(BundleError, match="will resume|interrupted"):
        download(server.url("a.tar"), dest, sha, size)
    assert not dest.exists() and dest.with_name("a.tar.part").stat().st_size == 300_000
    server.truncate_after = None
    download(server.url("a.tar"), dest, sha, size)
    assert sha256_file(dest) == sha and not dest.with_name("a.tar.part").exists()
    assert server.requests[-1] == ("/a.tar", "bytes=300000-"), "the second request resumed"
    # already complete: no request at all
    n = len(server.requests)
    download(server.url("a.tar"), dest, sha, size)
    assert len(server.requests) == n


def test_body_larger_than_advertised_is_cut_off(tmp_path, server):
    src = server.root / "a.tar"
    dest = tmp_path / "a.tar"
    with pytest.raises(BundleError, match="exceeds the advertised size of 1000 bytes"):
        download(server.url("a.tar"), dest, sha256_file(src), 1000)
    assert not dest.exists() and not dest.with_name("a.tar.part").exists()


def test_wrong_hash_rejected_and_partial_removed(tmp_path, server):
    src = server.root / "a.tar"
    dest = tmp_path / "a.tar"
    with pytest.raises(BundleError, match="does not match the advertised"):
        download(server.url("a.tar"), dest, "0" * 64, src.stat().st_size)
    assert not dest.exists() and not dest.with_name("a.tar.part").exists()


def test_http_error_named(tmp_path, server):
    with pytest.raises(BundleError, match="HTTP 404"):
        download(server.url("missing.tar"), tmp_path / "m.tar", "0" * 64, 10)
