"""Inspector tokens on the device: synced from a real fleet API (uvicorn) with the device's own token, only hashes
kept, a revoked token refused after the next sync (sessions made with it too), the device working offline with the
tokens it has, another device's token refused by the fleet."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from edge.review_auth import Inspectors, InspectorSync
from fleet.security import add_token, revoke_token
from runtime.errors import Unauthorized
from tests.fleet import conftest as _fleet
from tests.fleet.apiserver import ApiServer

# the fleet tests' fixtures: a Fleet on a temporary store with a tokens file
config, tokens, fleet, published = _fleet.config, _fleet.tokens, _fleet.fleet, _fleet.published


@pytest.fixture
def store_url() -> None:
    """The embedded default store: what this tests is the device side and the fleet's HTTP answer."""
    return None


def _wait(cond, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sync_revocation_and_offline(fleet, tmp_path: Path) -> None:
    file = Path(fleet.config.tokens_file)
    ana = add_token(file, "ana", ["inspector"])
    bo = add_token(file, "bo", ["inspector"])
    dev = add_token(file, "dev-1", ["device"])
    other = add_token(file, "dev-2", ["device"])
    path = tmp_path / "inspectors.json"
    inspectors = Inspectors(path)
    with pytest.raises(Unauthorized, match="no inspector tokens"):
        inspectors.check(ana)
    server = ApiServer(fleet).__enter__()
    sync = InspectorSync(server.url, "dev-1", dev, path, 0.2).start()
    try:
        _wait(sync.synced.is_set)
        text = path.read_text()
        assert ana not in text and bo not in text  # hashes only
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert {e["name"] for e in json.loads(text)["inspectors"]} == {"ana", "bo", "inspector-user"}
        assert inspectors.check(ana)[0] == "ana"
        sid, name = inspectors.login(ana)
        assert name == "ana" and inspectors.who(None, sid) == "ana"
        assert inspectors.who(f"Bearer {bo}", None) == "bo"
        # revoked at the fleet: refused at the next sync, the session made with it as well
        revoke_token(file, "ana")

        def refused() -> bool:
            try:
                inspectors.check(ana)
                return False
            except Unauthorized:
                return True

        _wait(refused)
        with pytest.raises(Unauthorized, match="revoked"):
            inspectors.who(None, sid)
        assert inspectors.check(bo)[0] == "bo"
    finally:
        server.__exit__(None, None, None)
    # the fleet is gone: the device keeps the tokens it has
    _wait(lambda: sync.last_error is not None and "cannot reach" in sync.last_error)
    assert inspectors.check(bo)[0] == "bo"
    sync.stop()
    # a device token cannot read another device's list
    server = ApiServer(fleet).__enter__()
    try:
        bad = InspectorSync(server.url, "dev-1", other, tmp_path / "other.json", 60)
        with pytest.raises(Exception, match="HTTP 403"):
            bad.sync_once()
        assert not (tmp_path / "other.json").exists()
    finally:
        server.__exit__(None, None, None)
