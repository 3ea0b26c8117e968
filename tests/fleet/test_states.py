"""Devices' connection status and reported state, as ingest writes them: the messages of a group are written
together (the latest value per device, as if applied one by one), and a state the store refuses is counted as a
malformed message, naming its topic, without losing the rest of the group."""

from __future__ import annotations

from fleet.protocol import Reported, encode
from fleet.service import Fleet


def _reported(device: str, active: str, error: str | None = None) -> bytes:
    return encode(Reported(device=device, active=active, desired_revision=1, activation={"state": "committed"},
                           last_error=error))


def test_states_of_a_group_are_written_together_the_latest_per_device(fleet: Fleet):
    t = fleet.topics
    msgs = [(t.device("dev-a", "status"), b"online"),
            (t.device("dev-a", "reported"), _reported("dev-a", "seal@1")),
            (t.device("dev-b", "reported"), _reported("dev-b", "seal@1")),
            (t.device("dev-a", "reported"), _reported("dev-a", "seal@2")),
            (t.device("dev-b", "status"), b"online"),
            (t.device("dev-b", "status"), b"offline")]
    assert fleet.ingest.handle_many(msgs) == [True] * len(msgs)
    a, b = fleet.devices.get("dev-a"), fleet.devices.get("dev-b")
    assert (a["status"], a["active"], a["reported"]["active"]) == ("online", "seal@2", "seal@2")
    assert (b["status"], b["active"], b["reported"]["active"]) == ("offline", "seal@1", "seal@1")
    assert a["activation"]["state"] == "committed" and a["first_seen"] <= a["last_seen"]
    # a later group changes only what its messages carry
    assert fleet.ingest.handle_many([(t.device("dev-a", "status"), b"offline")]) == [True]
    a = fleet.devices.get("dev-a")
    assert (a["status"], a["active"]) == ("offline", "seal@2")


def test_a_state_the_store_refuses_is_counted_and_the_rest_of_the_group_written(fleet: Fleet):
    """PostgreSQL refuses a NUL character in text (a device's last_error here); SQLite stores it. Either way the
    other messages of the group, including the same device's status, are written."""
    t = fleet.topics
    bad = (t.device("dev-b", "reported"), _reported("dev-b", "seal@1", error="bad\x00byte"))
    msgs = [(t.device("dev-a", "reported"), _reported("dev-a", "seal@1")), (t.device("dev-b", "status"), b"online"),
            bad, (t.device("dev-c", "status"), b"online")]
    ok = fleet.ingest.handle_many(msgs)
    refused = fleet.store.dialect == "postgresql"
    assert ok == [True, True, not refused, True]
    assert fleet.devices.get("dev-a")["active"] == "seal@1" and fleet.devices.get("dev-c")["status"] == "online"
    b = fleet.devices.get("dev-b")
    assert b["status"] == "online"
    if refused:
        assert b["active"] is None and fleet.ingest.stats.malformed == 1
        assert fleet.store.malformed()[bad[0]]["last_error"].startswith("store: ")
    else:
        assert b["active"] == "seal@1" and b["last_error"] == "bad\x00byte" and fleet.ingest.stats.malformed == 0
