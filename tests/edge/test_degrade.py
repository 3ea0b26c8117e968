"""Degradation: a verify stage that stalls or fails never lets a frame pass unverified. Its frames are flagged for
review with the reason, kept for the inspector, counted in /metrics; the line keeps moving meanwhile, and once the
stage recovers frames are decided normally again."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.edge.conftest import PHOTOS, VERIFY_T, _raw_outputs, expected_photo_decisions, photo_release
from tests.edge.test_daemon_inprocess import make_daemon, wait


def test_stalled_verify_flags_frames_for_review_never_passes(tmp_path: Path, bundles, keys) -> None:
    raw = _raw_outputs(bundles)
    candidates = {n for n, (_, dets) in raw.items() if dets is not None}  # the screen sends these to verify
    assert candidates and len(candidates) < len(raw)
    expected = expected_photo_decisions(bundles, VERIFY_T)
    assert any(expected[n][0] == "pass" for n in candidates), "a frame verify would pass must be among them"

    # the deadline is generous: a verify that is merely slow on a busy machine must not count as stalled
    d = make_daemon(tmp_path, keys, photo_release(bundles), degrade={"verify_timeout_s": 3.0})
    d.start()
    verify = d.frames.slot.current.active.stages[1][1].runner
    real_infer = verify._infer
    gate = threading.Event()
    calls: list[int] = []

    def stalled(feeds):
        calls.append(1)
        gate.wait(60)  # the verify stage hangs (a stuck accelerator, a model in a pathological case)
        return real_infer(feeds)

    verify._infer = stalled  # type: ignore[method-assign]
    photos = sorted(PHOTOS.iterdir())
    try:
        stalled_out = {f.name: d.frames.submit(f.read_bytes(), f.suffix, 60) for f in photos}
        # every screen candidate is flagged for review with the reason, none passes; the rest pass on the screen
        for name, out in stalled_out.items():
            rec = out.record
            assert rec is not None
            if name in candidates:
                assert out.decision == "flag" and rec["flagged"] == [], name
                assert rec["degraded"] in ("verify_timeout", "verify_stalled") and rec["image_kept"], (name, rec)
                assert [s["role"] for s in rec["stages"]] == ["screen"]
            else:
                assert out.decision == "pass" and rec["degraded"] is None, name
        reasons = [stalled_out[f.name].record["degraded"] for f in photos if f.name in candidates]
        # the first candidate waited out the timeout; the others did not queue behind the stuck call
        assert reasons[0] == "verify_timeout" and set(reasons[1:]) <= {"verify_stalled"} and len(calls) == 1
        st = d.status()
        assert st["degraded"] == len(candidates) and st["decisions"]["flag"] == len(candidates)
        assert d.metrics.value("degraded_total", reason="verify_timeout") == 1
        assert d.metrics.value("degraded_total", reason="verify_stalled") == len(candidates) - 1
        queue = {r["id"] for r in d.store.review_queue(100)}
        assert {stalled_out[n].prediction_id for n in candidates} <= queue  # the inspector sees every one

        gate.set()  # the stage recovers: frames are verified and decided normally again
        wait(lambda: not d.frames.slot.current.active.guard.stalled)
        for f in photos:
            out = d.frames.submit(f.read_bytes(), f.suffix, 60)
            assert out.record is not None and out.record["degraded"] is None, f.name
            assert (out.decision, sorted(c for c, _ in out.record["flagged"])) == expected[f.name], f.name
    finally:
        gate.set()
        d.stop()


def test_failing_verify_flags_for_review(tmp_path: Path, bundles, keys) -> None:
    raw = _raw_outputs(bundles)
    d = make_daemon(tmp_path, keys, photo_release(bundles))
    d.start()
    verify = d.frames.slot.current.active.stages[1][1].runner

    def broken(feeds):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    verify._infer = broken  # type: ignore[method-assign]
    try:
        for f in sorted(PHOTOS.iterdir()):
            out = d.frames.submit(f.read_bytes(), f.suffix, 60)
            rec = out.record
            if raw[f.name][1] is not None:
                assert out.decision == "flag" and rec["degraded"].startswith("verify_failed: RuntimeError: CUDA")
            else:
                assert out.decision == "pass"
        assert d.metrics.value("degraded_total", reason="verify_failed") == sum(
            1 for _, dets in raw.values() if dets is not None)
    finally:
        d.stop()


def test_a_failing_store_holds_frames_never_passes_them_and_recovers(tmp_path: Path, bundles, keys) -> None:
    """The device's store refuses writes (SQLite's own "attempt to write a readonly database", what a data
    partition remounted read-only after an SD card error gives; made real on the daemon's connection with
    PRAGMA query_only): no frame is decided without being recorded. Each stays in the inbox, nothing is stored or counted as a decision, the
    failures are counted in /metrics (errors_total{reason="store"}) and the status; once the store has room again
    every frame is decided and stored exactly once."""
    import shutil

    from tests.edge.conftest import PCB, pcb_release
    from tests.edge.test_daemon_inprocess import make_daemon

    inbox = tmp_path / "inbox"
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    try:
        with d.store._lock:  # the store's own lock: no frame is being written meanwhile
            d.store.conn.execute("PRAGMA query_only = ON")  # read-only from now on
        files = sorted(PCB.iterdir())
        for f in files:
            shutil.copy(f, inbox / f.name)
        # every frame was tried at least twice (the folder offers it again) and refused by the store each time
        wait(lambda: d.metrics.value("errors_total", reason="store") >= 2 * len(files))
        assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [f.name for f in files]
        assert d.store.query("SELECT COUNT(*) AS n FROM predictions")[0]["n"] == 0
        assert d.metrics.value("decisions_total") == 0  # nothing passed (or flagged) unrecorded
        st = d.status()
        assert st["store_failures"] >= 2 * len(files) and "readonly" in (st["last_error"] or ""), st

        with d.store._lock:
            d.store.conn.execute("PRAGMA query_only = OFF")  # writable again (BEGIN IMMEDIATE itself is refused)
        wait(lambda: not [p for p in inbox.iterdir() if p.is_file()])
        rows = d.store.query("SELECT source, COUNT(*) AS n FROM predictions WHERE role = 'active' GROUP BY source")
        assert {r["source"]: r["n"] for r in rows} == {f"folder:{f.name}": 1 for f in files}
        assert d.metrics.value("decisions_total") == len(files)
    finally:
        d.stop()
