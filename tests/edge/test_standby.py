"""The warm standby: after an activation the previous release stays loaded, so a rollback to it swaps between two
frames without loading a model (runner loads are counted on the real ONNX Runtime runner); where memory does not
allow it, the rollback loads from the bundles as before."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge.sources import Frame, Outcome
from fleet.protocol import ReleaseSpec
from runtime.runners.onnxrt import OnnxRuntimeRunner
from tests.edge.conftest import PCB, PHOTOS
from tests.edge.test_hot_swap import record_signature, releases, signature, start_daemon, wait


@pytest.fixture
def runner_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ONNX Runtime session the process creates (the real _load runs)."""
    loads: list[str] = []
    real = OnnxRuntimeRunner._load

    def counting(self: OnnxRuntimeRunner) -> None:
        loads.append(self.model_path.parent.name)
        real(self)

    monkeypatch.setattr(OnnxRuntimeRunner, "_load", counting)
    return loads


def stream(d, stop: threading.Event, submitted: list[str], done: list[str], outcomes: dict[str, Outcome]) -> None:
    images = [(f.read_bytes(), f.suffix) for f in sorted(PCB.iterdir()) + sorted(PHOTOS.iterdir())]
    k = 0
    while not stop.is_set():
        if d.queue.depth >= 8:
            time.sleep(0.005)
            continue
        src = f"http:frame-{k}"
        data, suffix = images[k % len(images)]

        def on_done(out: Outcome, src: str = src) -> None:
            outcomes[src] = out
            done.append(src)

        submitted.append(src)
        assert d.queue.put_nowait(Frame(source=src, data=data, suffix=suffix, on_done=on_done))
        k += 1


def test_rollback_to_the_warm_standby_loads_no_model_and_loses_no_frame(tmp_path: Path, bundles, keys,
                                                                     runner_loads: list[str]) -> None:
    first, _, other = releases(bundles)  # squeezenet, then pcb-aoi (another model)
    d = start_daemon(tmp_path, keys, first)
    submitted: list[str] = []
    done: list[str] = []
    outcomes: dict[str, Outcome] = {}
    stop = threading.Event()
    feeder = threading.Thread(target=stream, args=(d, stop, submitted, done, outcomes), daemon=True)
    try:
        assert runner_loads == ["squeezenet-v1.0"] and d.frames.loads == 1
        feeder.start()
        wait(lambda: len(done) >= 10)
        d.activate(other, None, {})  # a new release: its model is loaded; the first stays warm
        submitted_other = len(submitted)
        assert runner_loads == ["squeezenet-v1.0", "pcb-aoi-v1.0"]
        assert d.status()["standby"] == "line@1"
        wait(lambda: len(done) >= submitted_other + 10)
        before_rollback = len(done)
        d.activate(first, None, {})  # the agent's rollback: the previous release again, on the same bundles
        submitted_after = len(submitted)
        assert runner_loads == ["squeezenet-v1.0", "pcb-aoi-v1.0"], "the rollback loaded a model"
        assert d.frames.loads == 2 and d.current() == (first, None)
        assert d.status()["standby"] == "line@3"  # and the release rolled back from is now the warm one
        wait(lambda: len(done) >= submitted_after + 10)
    finally:
        stop.set()
        feeder.join(10)
    try:
        wait(lambda: len(done) == len(submitted))
        rows = d.store.query("SELECT source, record FROM predictions WHERE role = 'active' ORDER BY rowid")
        events = d.store.query("SELECT payload FROM outbox WHERE kind = 'events'")
    finally:
        d.stop()
    # every frame exactly once, in order; each record all of one release; the rollback took effect between frames
    assert [r["source"] for r in rows] == submitted == done
    import json

    revs = [record_signature(json.loads(r["record"])) for r in rows]
    expected = {signature(r)[0]: signature(r) for r in (first, other)}
    assert all(sig == expected[sig[0]] for sig in revs)
    order = [sig[0] for sig in revs]
    changes = [(a, b) for a, b in zip(order, order[1:]) if a != b]
    assert changes == [(1, 3), (3, 1)], changes  # line@1, then line@3, then line@1 again: never a mix
    # submitted after an activation returned: the new release; done before the next one began: still that one
    assert set(order[submitted_other:before_rollback]) == {3} and set(order[submitted_after:]) == {1}
    assert [json.loads(e["payload"])["detail"]["warm"] for e in events
            if json.loads(e["payload"])["kind"] == "activated"] == [False, False, True]


def test_without_memory_for_a_standby_the_rollback_loads_again(tmp_path: Path, bundles, keys,
                                                              runner_loads: list[str]) -> None:
    first, _, other = releases(bundles)
    d = start_daemon(tmp_path, keys, first, standby={"min_available_mb": 10_000_000})  # more than any machine has
    try:
        d.activate(other, None, {})
        assert d.status()["standby"] is None  # the swapped-out pipeline was closed at once
        d.activate(first, None, {})
        assert runner_loads == ["squeezenet-v1.0", "pcb-aoi-v1.0", "squeezenet-v1.0"] and d.frames.loads == 3
        out = d.frames.submit((PCB / "Defective_02.png").read_bytes(), ".png", 60)
        assert out.record is not None and out.record["revision"] == 1
    finally:
        d.stop()


def test_a_different_release_on_the_same_bundles_is_not_the_standby(tmp_path: Path, bundles, keys,
                                                                    runner_loads: list[str]) -> None:
    first, thresholds_only, _ = releases(bundles)  # rev 2: same model, another threshold
    d = start_daemon(tmp_path, keys, first)
    try:
        d.activate(thresholds_only, None, {})
        bumped = ReleaseSpec.model_validate({**first.model_dump(), "revision": 4})
        d.activate(bumped, None, {})  # not the standby (rev 1): built anew
        assert d.frames.loads == 3 and d.current()[0].revision == 4
    finally:
        d.stop()
