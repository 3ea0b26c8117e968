"""Ingest workers (`shadowline fleet ingest-worker` processes) sharing the record topics through an MQTT 5 shared
subscription on a real Mosquitto, on both store backends: the load is split between them, and a worker killed
with SIGKILL mid-stream loses nothing (its unacknowledged and queued messages wait in its session and come back
when it restarts with the same id) and duplicates nothing (0 lost, 0 duplicated, counted by record id)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.ingest_worker import record_filters
from fleet.protocol import Topics
from fleet.store import Store
from tests.fleet.devicesim import wait_for
from tests.fleet.test_chaos import Stored, Streamer

SHARE = "ingest-test"


def test_record_filters_are_shared_and_state_is_not():
    t = Topics("acme")
    assert record_filters(t, None)[0] == "acme/dev/+/predictions"
    assert record_filters(t, "g") == [f"$share/g/acme/dev/+/{k}" for k in ("predictions", "reviews", "metrics",
                                                                           "alerts", "events")]
    with pytest.raises(ValueError, match="MQTT 5 broker"):
        FleetConfig(ingest_share_group="g")  # the embedded broker speaks MQTT 3.1.1 only
    with pytest.raises(ValueError, match="no '/'"):
        FleetConfig(broker_url="mqtt://h", ingest_share_group="a/b")


def _worker(tmp: Path, broker: str, store: str, worker_id: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "shadowline.cli", "fleet", "ingest-worker", "--store-url", store,
           "--broker-url", broker, "--share-group", SHARE, "--client-id", "fleet-test", "--worker-id", worker_id]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker-{worker_id}.log", "ab"))


def _subscribed(tmp: Path, worker_id: str) -> bool:
    """The worker's log says it started: `IngestWorker.start` logs only after the broker's SUBACK."""
    log = tmp / f"worker-{worker_id}.log"
    return log.exists() and "share group" in log.read_text(errors="replace")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_worker_killed_mid_stream_loses_and_duplicates_nothing(tmp_path, mosquitto, store_url):
    store = store_url or f"sqlite:///{tmp_path / 'fleet.db'}"
    Store(store).close()  # the schema, as `fleet migrate` would make it: workers never create one
    stored = Stored(store)
    topics = Topics()
    workers = {w: _worker(tmp_path, mosquitto.url, store, w) for w in ("1", "2")}
    pubs: list[Streamer] = []
    try:
        # a shared subscription holds nothing before its first member subscribed: probe until one ingests
        from tests.fleet.devicesim import batch, client, predictions, publish_until_acked

        probe = client(mosquitto.url, "probe")
        wait_for(probe.is_connected, 10, "probe connected")
        deadline = time.monotonic() + 60
        probes: set[str] = set()
        while stored()[0] == 0 and time.monotonic() < deadline:
            recs = predictions("probe", 1, seed=int(time.time()))
            publish_until_acked(probe, topics.device("probe", "predictions"), batch("probe", "predictions", recs))
            probes.update(r["id"] for r in recs)
            time.sleep(0.3)
        # both workers must be members before the stream starts, or one takes it all and the kill proves nothing:
        # a worker logs its share group once the broker acknowledged its subscriptions (a busy machine can take
        # seconds to start the second one after the first already ingests)
        wait_for(lambda: all(_subscribed(tmp_path, w) for w in workers), 90, "both workers subscribed")
        base = stored()[2]
        pubs = [Streamer(mosquitto.url, f"wk-{i}", topics, 0.01) for i in range(4)]
        for p in pubs:
            p.start()
        wait_for(lambda: stored()[0] > len(base) + 1500, 90, "ingest under way")
        os.kill(workers["1"].pid, signal.SIGKILL)
        workers["1"].wait()
        for p in pubs:
            p.join(180)
            assert p.error is None, p.error
        expected = {i for p in pubs for i in p.ids} | base
        assert len(expected) == len(base) + 4 * 60 * 50
        # worker 1's share of the stream waits in its session while it is down: worker 2 does not take it over
        time.sleep(3.0)
        held_back = len(expected) - stored()[0]
        assert held_back > 0, "worker 1 had no share of the stream: the kill proved nothing"
        workers["1"] = _worker(tmp_path, mosquitto.url, store, "1")  # same id: same session, its messages again
        wait_for(lambda: expected <= stored()[2], 120, "every record ingested after the restart")
        time.sleep(0.5)
        n, distinct, ids = stored()
        # besides: probes sent before the baseline and stored after it (while a worker's first message was being
        # ingested, a busy machine, its decoding process starting, the loop above sent more than the one that
        # landed first); a probe sent before any worker subscribed is dropped by the broker, by design
        late = ids - expected
        assert (n, distinct, len(expected - ids), len(late - probes)) == (len(ids), len(ids), 0, 0)
        print(f"worker-kill: {len(expected) - len(base)} records streamed, {held_back} held back in the killed "
              f"worker's session until it restarted, 0 lost, 0 duplicated")
    finally:
        for p in workers.values():
            _stop(p)
        stored.close()
