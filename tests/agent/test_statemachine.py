"""The activation state machine as a table of cases (Mender style): each names the failures or crashes injected
and the expected chain of states; every case starts on a committed v1.0 and activates v1.1 with real bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.agent.config import AgentConfig
from edge.agent.headless import HeadlessHost
from edge.agent.statemachine import MAX_STEPS, RESUME, TRANSITIONS, Machine, State
from runtime.signing import TrustStore
from tests.agent.conftest import PCB_IMAGES, desired_for

HAPPY = ["download", "verify", "prepare", "check", "activate", "commit", "idle"]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so no handler in the machine sees it."""


def injector(fail: set[str], crash: set[str]):
    crashed: set[str] = set()

    def fault(state: State) -> None:
        if state.value in crash and state.value not in crashed:
            crashed.add(state.value)  # crash once: the restarted process gets past it
            raise Crash(state.value)
        if state.value in fail:
            raise RuntimeError(f"injected failure in {state.value}")
    return fault


def machine(tmp_path: Path, keys, fault=None, events=None) -> Machine:
    config = AgentConfig(broker_url="mqtt://127.0.0.1:1", releases_dir=tmp_path / "releases", smoke_images=2)
    host = HeadlessHost("dev-1", tmp_path / "host", PCB_IMAGES)
    report = (lambda rec, event, detail: events.append((event, detail))) if events is not None else None
    return Machine(config, host, trust=TrustStore.load(keys["trust"]), fault=fault, report=report)


# (failures injected, crashes injected, expected chain, ends committed on)
CASES = {
    "happy": (set(), set(), HAPPY, "v1.1"),
    "fail-download": ({"download"}, set(), ["download", "failed", "idle"], "v1.0"),
    "fail-verify": ({"verify"}, set(), ["download", "verify", "failed", "idle"], "v1.0"),
    "fail-prepare": ({"prepare"}, set(), ["download", "verify", "prepare", "failed", "idle"], "v1.0"),
    "fail-check": ({"check"}, set(), ["download", "verify", "prepare", "check", "failed", "idle"], "v1.0"),
    "fail-activate": ({"activate"}, set(), HAPPY[:5] + ["rollback", "failed", "idle"], "v1.0"),
    "fail-commit": ({"commit"}, set(), HAPPY[:6] + ["rollback", "failed", "idle"], "v1.0"),
    "fail-activate-and-rollback": ({"activate", "rollback"}, set(), HAPPY[:5] + ["rollback", "failed", "idle"],
                                   "v1.0"),
    "fail-check-and-failed": ({"check", "failed"}, set(), HAPPY[:4] + ["failed", "idle"], "v1.0"),
    "crash-download": (set(), {"download"}, ["download"] + HAPPY, "v1.1"),
    "crash-verify": (set(), {"verify"}, HAPPY[:2] + HAPPY[1:], "v1.1"),
    "crash-prepare": (set(), {"prepare"}, HAPPY[:3] + HAPPY[2:], "v1.1"),
    "crash-check": (set(), {"check"}, HAPPY[:4] + HAPPY[2:], "v1.1"),
    "crash-activate": (set(), {"activate"}, HAPPY[:5] + HAPPY[4:], "v1.1"),
    "crash-commit": (set(), {"commit"}, HAPPY[:6] + HAPPY[4:], "v1.1"),
    "fail-activate-crash-rollback": ({"activate"}, {"rollback"},
                                     HAPPY[:5] + ["rollback", "rollback", "failed", "idle"], "v1.0"),
    "fail-check-crash-failed": ({"check"}, {"failed"}, HAPPY[:4] + ["failed", "failed", "idle"], "v1.0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_activation_table(case, tmp_path, keys, tars, artifact_server):
    fail, crash, chain, final = CASES[case]
    base = machine(tmp_path, keys)
    assert base.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 1)).chain == HAPPY
    v10 = base.record.committed
    assert base.host.current()[0].ref == v10.release.ref

    m = machine(tmp_path, keys, fault=injector(fail, crash))
    m.host = base.host
    target = desired_for(artifact_server, tars["v1.1"], "dev-1", 2)
    try:
        record = m.apply(target)
    except Crash:
        # a restarted process: new host (runs nothing yet), new machine reading the persisted record
        restarted = machine(tmp_path, keys, fault=m.fault)
        record = restarted.resume()
        m = restarted
    assert record.chain == chain
    assert record.state == State.IDLE
    want = tars[final].name.removesuffix(".tar")
    assert record.committed.release.stages[0].bundle == want
    assert m.host.current()[0].stages[0].bundle == want, "the host runs the committed release"
    assert (record.error is None) == (final == "v1.1")
    if fail:
        assert record.error.startswith(f"{sorted(fail, key=chain.index)[0]}:"), record.error
    # the persisted record agrees with memory: a restart now changes nothing
    assert machine(tmp_path, keys).record == record


def test_table_is_complete():
    # COMMITTED is reported, never entered (the machine is idle after a commit)
    steps = {s for s in State if s not in (State.IDLE, State.COMMITTED)}
    assert set(TRANSITIONS) == steps and set(RESUME) == steps
    # only the steps after the host may have swapped lead to a rollback
    assert {s for s, (_, bad) in TRANSITIONS.items() if bad == State.ROLLBACK} == {State.ACTIVATE, State.COMMIT}


def test_real_check_failure_keeps_previous_release(tmp_path, keys, tars, artifact_server):
    m = machine(tmp_path, keys)
    m.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 1))
    record = m.apply(desired_for(artifact_server, tars["bad"], "dev-1", 2))
    assert record.chain == HAPPY[:4] + ["failed", "idle"]
    assert record.error.startswith("check:") and "disagree with reference.npz" in record.error
    assert m.host.current()[0].stages[0].bundle == "pcb-aoi-v1.0"


def test_untrusted_signature_fails_verify(tmp_path, keys, tars, artifact_server):
    m = machine(tmp_path, keys)
    record = m.apply(desired_for(artifact_server, tars["unknown-key"], "dev-1", 1))
    assert record.chain == ["download", "verify", "failed", "idle"]
    assert "unknown key" in record.error
    assert record.committed is None and m.host.current() == (None, None)
    assert not any((tmp_path / "releases" / "bundles").iterdir()), "nothing half-installed"


def test_rollback_to_cached_release_needs_no_download(tmp_path, keys, tars, artifact_server):
    m = machine(tmp_path, keys)
    m.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 1))
    m.apply(desired_for(artifact_server, tars["v1.1"], "dev-1", 2))
    before = len(artifact_server.requests)
    record = m.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 3))
    assert len(artifact_server.requests) == before, "no HTTP request for a cached release"
    assert record.chain == HAPPY and record.skipped == ["prepare", "check"]
    assert m.host.current()[0].stages[0].bundle == "pcb-aoi-v1.0"


def test_cache_keeps_last_n_releases(tmp_path, keys, tars, artifact_server):
    m = machine(tmp_path, keys)
    m.cache.keep = 2
    for rev, key in enumerate(("v1.0", "v1.1", "v1.0"), start=1):
        m.apply(desired_for(artifact_server, tars[key], "dev-1", rev, release_revision=rev))
    assert m.cache.keys() == ["pcb-screen@3", "pcb-screen@2"]
    bundles = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "releases" / "bundles").iterdir())
    assert bundles == ["pcb-aoi-v1.0", "pcb-aoi-v1.1"]


def test_loop_counter_stops_a_crash_loop(tmp_path, keys, tars, artifact_server):
    m = machine(tmp_path, keys)
    m.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 1))

    def always_crash(state: State) -> None:
        if state == State.ACTIVATE:
            raise Crash("activate")
    m = machine(tmp_path, keys, fault=always_crash)
    with pytest.raises(Crash):
        m.apply(desired_for(artifact_server, tars["v1.1"], "dev-1", 2))
    for _ in range(MAX_STEPS):
        try:
            record = machine(tmp_path, keys, fault=always_crash).resume()
            break
        except Crash:
            continue
    assert record.error.startswith("activate: activation loop")
    assert record.chain[-3:] == ["rollback", "failed", "idle"]
    assert record.committed.release.stages[0].bundle == "pcb-aoi-v1.0"


def test_every_step_is_reported(tmp_path, keys, tars, artifact_server):
    events: list = []
    m = machine(tmp_path, keys, events=events)
    m.apply(desired_for(artifact_server, tars["v1.0"], "dev-1", 1))
    steps = [d["state"] for e, d in events if e == "step"]
    assert steps == HAPPY[:-1]
    checked = next(d for e, d in events if e == "checked")["checks"][0]
    assert checked["parity"] and checked["smoke_images"] == 2
