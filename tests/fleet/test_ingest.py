"""Ingest through a real Mosquitto and through the embedded broker: idempotent by record id, devices appear on
first contact, malformed messages counted with their topic; fuzzed payloads never crash the handler."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.config import FleetConfig
from fleet.credentials import provision
from fleet.devices import activation_of
from fleet.ingest import Ingest
from fleet.protocol import ActivationState, Reported, Topics, encode
from fleet.service import FleetService
from tests.conftest import free_port
from tests.fleet.devicesim import batch, client, predictions, publish_until_acked, wait_for


@pytest.fixture
def service(config: FleetConfig, mosquitto):
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url})).start()
    yield svc
    svc.stop()


def test_ingest_is_idempotent_and_counts_malformed(service, mosquitto):
    fleet, t = service.fleet, service.fleet.topics
    c = client(mosquitto.url, "dev-a")
    wait_for(c.is_connected, 10)
    recs = predictions("dev-a", 50)
    publish_until_acked(c, t.device("dev-a", "predictions"), batch("dev-a", "predictions", recs[:30]))
    publish_until_acked(c, t.device("dev-a", "predictions"), batch("dev-a", "predictions", recs))  # 30 again
    wait_for(lambda: fleet.ingest.stats.messages >= 2, 10, "two batches")
    assert fleet.store.count("predictions") == 50
    assert fleet.ingest.stats.duplicates == 30 and fleet.ingest.stats.records == 50
    got = list(fleet.store.predictions(device="dev-a"))
    assert sorted(p.id for p in got) == sorted(r["id"] for r in recs)
    assert fleet.devices.get("dev-a")["first_seen"]  # appeared with its first batch
    # malformed: not JSON, a batch claiming another device, a batch with one bad record among good ones
    publish_until_acked(c, t.device("dev-a", "predictions"), b"{not json")
    publish_until_acked(c, t.device("dev-a", "predictions"), batch("dev-b", "predictions", predictions("dev-b", 2)))
    mixed = predictions("dev-a", 3, seed=7)
    mixed[1]["decision"] = "maybe"
    publish_until_acked(c, t.device("dev-a", "predictions"), batch("dev-a", "predictions", mixed))
    publish_until_acked(c, t.device("dev-a", "status"), b"sleepy")
    wait_for(lambda: fleet.ingest.stats.malformed >= 4, 10, "malformed counted")
    assert fleet.store.count("predictions") == 52
    bad = fleet.store.malformed()
    assert bad[t.device("dev-a", "predictions")]["count"] == 3
    assert "records[1]" in bad[t.device("dev-a", "predictions")]["last_error"]
    assert bad[t.device("dev-a", "status")]["count"] == 1
    # the service is still ingesting after all that
    publish_until_acked(c, t.device("dev-a", "reviews"), batch("dev-a", "reviews", []))
    c.publish(t.device("dev-a", "status"), b"online", qos=1, retain=True).wait_for_publish(5)
    rep = Reported(device="dev-a", active="seal@1", desired_revision=1, activation={"state": "committed"})
    c.publish(t.device("dev-a", "reported"), encode(rep), qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: fleet.devices.get("dev-a")["active"] == "seal@1", 10, "reported state")
    assert fleet.devices.get("dev-a")["status"] == "online"
    c.disconnect()
    c.loop_stop()


@pytest.mark.parametrize("decode_processes", [0, 1])
def test_a_verdict_right_after_its_prediction_is_stored_although_the_groups_are_pipelined(config, mosquitto,
                                                                                          decode_processes):
    """The consumer decodes the next group while the writer commits the one before: a verdict arriving in the
    message right after its prediction's (one message per group here) must still find it, never be refused as
    unknown, on either backend, whether the predictions are decoded by the consumer or by a decoding process."""
    from fleet.protocol import ReviewRecord

    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "ingest_group": 1,
                                                 "ingest_decode_processes": decode_processes})).start()
    c = client(mosquitto.url, "dev-v")
    try:
        fleet, t = svc.fleet, svc.fleet.topics
        wait_for(c.is_connected, 10)
        rounds, infos = 15, []
        for r in range(rounds):  # back to back, not waiting for acknowledgements in between
            recs = predictions("dev-v", 20, seed=r)
            verdicts = [ReviewRecord(prediction_id=p["id"], device="dev-v", inspector="ann", verdict="confirm",
                                     override=False, model_decision=p["decision"], release=p["release"],
                                     revision=p["revision"]).model_dump(mode="json") for p in recs[:5]]
            infos.append(c.publish(t.device("dev-v", "predictions"), batch("dev-v", "predictions", recs), qos=1))
            infos.append(c.publish(t.device("dev-v", "reviews"), batch("dev-v", "reviews", verdicts), qos=1))
        for info in infos:
            info.wait_for_publish(30)
        wait_for(lambda: fleet.ingest.stats.messages >= 2 * rounds, 30, "every message ingested")
        assert fleet.store.refused() == []
        assert fleet.store.count("predictions") == 20 * rounds and fleet.store.count("reviews") == 5 * rounds
        assert fleet.ingest.stats.records == 25 * rounds and fleet.ingest.stats.duplicates == 0
    finally:
        c.disconnect()
        c.loop_stop()
        svc.stop()


def test_retained_status_registers_a_device_and_desired_is_retained(service, mosquitto, bundles):
    fleet, t = service.fleet, service.fleet.topics
    c = client(mosquitto.url, "dev-z")
    wait_for(c.is_connected, 10)
    c.publish(t.device("dev-z", "status"), b"online", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: any(d["id"] == "dev-z" for d in fleet.devices.list()), 10, "device to appear")
    c.disconnect()
    c.loop_stop()
    fleet.registry.push(bundles["squeezenet"])
    from fleet.protocol import ReleaseSpec, StageSpec

    fleet.releases.create(ReleaseSpec(name="sq", stages=[StageSpec(role="verify", bundle=bundles["squeezenet"].name)]))
    fleet.desired.set("dev-z", "sq@1")
    got = []
    late = client(mosquitto.url, "late-reader")
    late.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    wait_for(late.is_connected, 10)
    late.subscribe(t.device("dev-z", "desired"), 1)
    wait_for(lambda: got, 10, "retained desired state")
    assert got[0]["release"]["name"] == "sq" and got[0]["artifacts"][0]["sha256"] == \
        fleet.registry.get(bundles["squeezenet"].name)["sha256"]
    late.disconnect()
    late.loop_stop()


def test_embedded_broker_end_to_end(config: FleetConfig, tmp_path):
    port = free_port()
    creds = provision(tmp_path / "broker", ["emb-dev"], Topics())  # the embedded broker wants passwords too
    svc = FleetService(config.model_copy(update={"broker_url": None, "embedded_broker_port": port,
                                                 "broker_credentials_dir": tmp_path / "broker"})).start()
    try:
        assert svc.broker is not None
        wait_for(lambda: svc.ready, 5, "service ready")
        t = svc.fleet.topics
        c = client(f"mqtt://127.0.0.1:{port}", "emb-dev", username="emb-dev", password=creds["emb-dev"].password)
        wait_for(c.is_connected, 10)
        recs = predictions("emb-dev", 40)
        for i in range(0, 40, 10):
            publish_until_acked(c, t.device("emb-dev", "predictions"), batch("emb-dev", "predictions", recs[i:i + 10]))
        publish_until_acked(c, t.device("emb-dev", "predictions"), batch("emb-dev", "predictions", recs[:10]))
        wait_for(lambda: svc.fleet.ingest.stats.messages >= 5, 10, "embedded ingest")
        assert svc.fleet.store.count("predictions") == 40 and svc.fleet.ingest.stats.duplicates == 10
        c.disconnect()
        c.loop_stop()
    finally:
        svc.stop()


# -- fuzzing the handler directly (no network): nothing raises, everything bad is counted ---------------------
@pytest.fixture
def ingest(fleet) -> Ingest:
    return fleet.ingest


def test_reported_activation_typed_old_form_stored_bad_one_refused(fleet, ingest):
    """The activation a device reports is typed: the wire form older agents sent is stored and read back as an
    ActivationState; an activation that does not fit is refused, counted with its topic, and changes nothing."""
    topic = Topics().device("dev-a", "reported")
    old = {"schema": "shadowline.reported", "version": 1, "device": "dev-a", "active": "seal@1", "desired_revision": 1,
           "activation": {"state": "committed", "source": "desired", "chain": ["download", "verify", "prepare",
                          "check", "activate", "commit", "idle"], "steps": 6, "times": {"download": 0.5},
                          "skipped": [], "target": "seal@1", "previous": None, "committed": "seal@1",
                          "target_revision": 1}}
    assert ingest.handle(topic, json.dumps(old).encode())
    act = activation_of(fleet.store.get("devices", "dev-a"))
    assert act is not None and act.state is ActivationState.COMMITTED and not act.state.in_progress
    assert act.chain[0] is ActivationState.DOWNLOAD and act.times == {ActivationState.DOWNLOAD: 0.5}
    before = ingest.stats.malformed
    for bad in ({"state": "pwned"}, {"state": "download", "chain": ["rm -rf"]}, {"state": "idle", "extra": 1}):
        assert not ingest.handle(topic, json.dumps({**old, "active": "evil@9", "activation": bad}).encode())
    assert ingest.stats.malformed == before + 3
    assert "activation" in fleet.store.malformed()[topic]["last_error"]
    row = fleet.store.get("devices", "dev-a")
    assert row["active"] == "seal@1" and activation_of(row) == act


kinds = st.sampled_from(list(Topics.DEVICE_TOPICS) + ["", "x", "predictions/extra"])
topics = st.one_of(st.builds(lambda d, k: f"shadowline/dev/{d}/{k}", st.text(max_size=10), kinds),
                   st.text(max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=topics, payload=st.binary(max_size=200))
def test_fuzz_random_bytes(ingest, topic, payload):
    before = ingest.stats.malformed
    ok = ingest.handle(topic, payload)
    assert ok or ingest.stats.malformed == before + 1


record = st.dictionaries(st.sampled_from(["id", "device", "release", "revision", "decision", "mode", "source",
                                          "latency_ms", "stages", "override", "prediction_id", "inspector",
                                          "verdict", "model_decision", "extra"]),
                         st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=6), st.just("dev-1"),
                                   st.just("shadow"), st.just("pass"), st.lists(st.integers(), max_size=2),
                                   st.dictionaries(st.text(max_size=3), st.floats(allow_nan=True), max_size=2)),
                         max_size=10)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["predictions", "reviews", "metrics", "alerts", "events"]),
       records=st.lists(record, max_size=5), version=st.sampled_from([1, 2, "1", None]))
def test_fuzz_structured_batches(ingest, kind, records, version):
    topic = f"shadowline/dev/dev-1/{kind}"
    body = {"schema": "shadowline.batch", "version": version, "device": "dev-1", "kind": kind, "records": records}
    before = (ingest.stats.malformed, ingest.stats.records, ingest.stats.duplicates)
    ingest.handle(topic, json.dumps(body).encode())
    m, r, d = (ingest.stats.malformed - before[0], ingest.stats.records - before[1],
               ingest.stats.duplicates - before[2])
    if version not in (1, "1"):
        assert (m, r, d) == (1, 0, 0)  # an unknown protocol version is refused whole, and counted
    else:
        # every record is accounted for: stored, a duplicate, or counted malformed
        assert r + d + m == len(records)


def test_desired_state_set_while_the_broker_is_down_arrives_after_it_returns(config, tmp_path, bundles):
    from fleet.protocol import ReleaseSpec, StageSpec
    from tests.conftest import Mosquitto

    broker = Mosquitto(tmp_path / "outage", extra_conf="user root\nallow_anonymous true\n").start()
    svc = FleetService(config.model_copy(update={"broker_url": broker.url, "publish_timeout_s": 0.5})).start()
    try:
        fleet = svc.fleet
        fleet.registry.push(bundles["pcb-aoi"])
        fleet.releases.create(ReleaseSpec(name="p", stages=[StageSpec(role="verify", bundle=bundles["pcb-aoi"].name)]))
        broker.kill()
        wait_for(lambda: not svc.mqtt.connected, 10, "the fleet to notice the outage")
        fleet.desired.set("dev-o", "p@1")  # returns after the publish timeout; the state is stored
        assert fleet.desired.current("dev-o") == ("p@1", None)
        broker.start()
        wait_for(lambda: svc.ready, 30, "reconnection")
        got = []
        c = client(broker.url, "dev-o-reader")
        c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
        wait_for(c.is_connected, 10)
        c.subscribe(svc.fleet.topics.device("dev-o", "desired"), 1)
        wait_for(lambda: got, 20, "the desired state after the outage")
        assert got[-1]["release"]["name"] == "p" and got[-1]["revision"] == 1
        c.disconnect()
        c.loop_stop()
    finally:
        svc.stop()
        broker.stop()


def test_ingest_waits_for_an_unavailable_store_and_loses_nothing(postgres, tmp_path):
    """The store goes away mid-ingest (PostgreSQL refuses connections, its sessions are ended): handle_many does
    not return, so nothing would be acknowledged, until the store is back; then everything is stored once."""
    import threading

    from fleet.service import Fleet

    name = "ingest_outage"
    url = postgres.create_database(name, template="fleet_template")
    fleet = Fleet(FleetConfig(data_dir=tmp_path / "fleet", store_url=url))
    try:
        recs = predictions("dev-out", 40)
        t = fleet.topics
        assert fleet.ingest.handle_many([(t.device("dev-out", "predictions"), batch("dev-out", "predictions",
                                                                                   recs[:10]))]) == [True]
        postgres.admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
                       f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        done: list[list[bool]] = []
        worker = threading.Thread(target=lambda: done.append(fleet.ingest.handle_many(
            [(t.device("dev-out", "predictions"), batch("dev-out", "predictions", recs))])))
        worker.start()
        wait_for(lambda: fleet.ingest.stats.store_retries >= 2, 30, "ingest to retry against the missing store")
        assert not done and fleet.ingest.stats.malformed == 0  # not returned: nothing acknowledged, nothing dropped
        postgres.admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        worker.join(30)
        assert done == [[True]]
        assert fleet.store.count("predictions") == 40 and fleet.ingest.stats.records == 40
        assert fleet.ingest.stats.duplicates == 10 and fleet.ingest.stats.malformed == 0
    finally:
        fleet.close()
        postgres.admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_an_ingest_process_collects_garbage_less_often_and_still_collects_it():
    """`fleet serve` and `fleet ingest-worker` tune the collector at their start (in a process of their own here:
    the test process keeps Python's defaults): startup objects frozen, young collections every INGEST_GC_GEN0
    allocations, and cyclic garbage made afterwards is still collected."""
    import subprocess
    import sys

    code = ("import gc, weakref\n"
            "from fleet.ingest import INGEST_GC_GEN0, tune_gc_for_ingest\n"
            "tune_gc_for_ingest()\n"
            "class C: pass\n"
            "a = C(); a.me = a; gone = weakref.ref(a); del a\n"
            "keep = [[] for _ in range(3 * INGEST_GC_GEN0)]\n"
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 0, gone() is None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    from fleet.ingest import INGEST_GC_GEN0

    assert out.stdout.split() == [str(INGEST_GC_GEN0), "True", "True"], out
