"""Store, retention, queue, actions and review rules on a real SQLite file (no models needed)."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from edge.actions import ActionDispatcher
from edge.api import is_override
from edge.config import ActionsConfig, RetentionConfig
from edge.retention import Retention
from edge.sources import Frame
from edge.sources.queue import FrameQueue
from edge.store import Store
from fleet.protocol import PredictionRecord, ReviewRecord
from runtime.errors import Conflict, NotFound
from tests.conftest import free_port


def rec(decision: str = "flag", **kw) -> PredictionRecord:
    return PredictionRecord(device="d", source="folder:x.png", release="r", revision=1, mode="production",
                            decision=decision, flagged=[("cat", 0.9)] if decision == "flag" else [], **kw)


def test_commit_is_atomic_and_idempotent_by_frame_key(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    a, c = rec(), rec("pass", role="candidate")
    assert s.commit_frame([a, c], "folder:x.png:1:2", deliveries=[(a.id, "webhook", {"id": a.id})])
    assert not s.commit_frame([rec()], "folder:x.png:1:2")  # the same frame again: nothing written
    assert s.count() == 2
    assert [r[0] for r in s.query("SELECT kind FROM outbox")] == ["predictions", "predictions"]
    assert s.query("SELECT state FROM deliveries")[0][0] == "pending"
    # a failing insert rolls back the records with their outbox rows
    with pytest.raises(sqlite3.IntegrityError):
        s.commit_frame([rec(), a], "folder:y.png:1:2")
    assert s.count() == 2 and s.query("SELECT COUNT(*) FROM outbox")[0][0] == 2
    assert s.query("PRAGMA journal_mode")[0][0] == "wal"
    s.close()


def test_reviews_and_overrides(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    a = rec()
    s.commit_frame([a], None)
    r = ReviewRecord(prediction_id=a.id, device="d", inspector="i", verdict="false_positive", override=True,
                     model_decision="flag", release="r", revision=1)
    s.add_review(r)
    with pytest.raises(Conflict):
        s.add_review(r)
    with pytest.raises(NotFound):
        s.add_review(r.model_copy(update={"id": "x", "prediction_id": "nope"}))
    assert s.reviews(prediction_id=a.id)[0]["override"] is True
    assert s.query("SELECT COUNT(*) FROM outbox WHERE kind='reviews'")[0][0] == 1
    assert is_override("confirm", "flag", ["cat"], None) is False
    assert is_override("false_positive", "flag", ["cat"], None) is True
    assert is_override("missed_defect", "pass", [], "dog") is True
    assert is_override("missed_defect", "flag", ["cat"], "cat") is False
    assert is_override("bad_image", "pass", [], None) is True
    with pytest.raises(Conflict):
        is_override("false_positive", "pass", [], None)
    with pytest.raises(Conflict):
        is_override("missed_defect", "pass", [], None)


def test_retention_budget_evicts_oldest_unpinned_and_counts(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    r = Retention(RetentionConfig(dir=tmp_path / "img", budget_mb=2.5 / 1024), s)  # 2.5 KiB
    ids = []
    for _ in range(4):
        p = rec()
        path, size = r.save(p.id, bytes(1024), ".png")
        s.commit_frame([p], None, kept={p.id: (path, size, ["flagged"])})
        ids.append(p.id)
    s.add_review(ReviewRecord(prediction_id=ids[0], device="d", inspector="i", verdict="confirm", override=False,
                              model_decision="flag", release="r", revision=1))
    assert r.enforce() == 2
    left = {row[0] for row in s.query("SELECT prediction_id FROM kept_images")}
    assert left == {ids[0], ids[3]}  # the reviewed (pinned) one survives the older-first rule
    assert r.stats()["evicted"] == 2 and r.stats()["evicted_bytes"] == 2048
    assert s.prediction(ids[1])["image_path"] is None
    assert len(list((tmp_path / "img").rglob("*.png"))) == 2
    orphan = tmp_path / "img" / "orphan.png"
    orphan.write_bytes(b"x")
    assert r.sweep_orphans() == 1 and not orphan.exists()


def test_retention_counts_committed_bytes_and_reads_the_store_again(tmp_path: Path, monkeypatch) -> None:
    import edge.retention

    s = Store(tmp_path / "db.sqlite")
    r = Retention(RetentionConfig(dir=tmp_path / "img", budget_mb=2.5 / 1024), s)  # 2.5 KiB

    def keep(n: int) -> None:
        for _ in range(n):
            p = rec()
            path, size = r.save(p.id, bytes(1024), ".png")
            s.commit_frame([p], None, kept={p.id: (path, size, ["flagged"])})

    keep(2)
    assert r.note_kept(2048) is False  # the first call reads the store's total: 2048 bytes, under the budget
    keep(1)
    assert r.note_kept(1024) is True  # counted on the commit path, without reading the store: 3072 bytes, over
    assert r.enforce() == 1 and r.note_kept(0) is False  # enforce reads the store and leaves 2048
    keep(1)  # a writer that does not tell retention: seen at the next read of the store, RESYNC_S later
    assert r.note_kept(0) is False
    monkeypatch.setattr(edge.retention, "RESYNC_S", 0.0)
    assert r.note_kept(0) is True and r.enforce() == 1


def test_retention_links_the_source_file_only_while_it_is_the_file_decided(tmp_path: Path) -> None:
    """A folder frame's kept image is a hard link of the file it was read from (no bytes written), as long as that
    file is still the one read (same size and mtime); a file rewritten or gone since gets the decided bytes
    written, and no link is left behind."""
    import os

    s = Store(tmp_path / "db.sqlite")
    r = Retention(RetentionConfig(dir=tmp_path / "img"), s)
    src = tmp_path / "in.png"
    src.write_bytes(b"decided" * 100)
    data, st = src.read_bytes(), src.stat()
    origin = (src, st.st_size, st.st_mtime_ns)
    path, size = r.save(rec().id, data, ".png", origin)
    assert os.path.samefile(path, src) and path.read_bytes() == data and size == len(data)
    src.write_bytes(b"changed" * 100)  # rewritten in place: same size, another mtime
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    path2, _ = r.save(rec().id, data, ".png", origin)
    assert not os.path.samefile(path2, src) and path2.read_bytes() == data
    src.unlink()
    path3, _ = r.save(rec().id, data, ".png", origin)
    assert path3.read_bytes() == data
    assert path.read_bytes() == b"changed" * 100  # (the first link is that file: what the docs say of rewriting it)
    assert sorted(p.name for p in (tmp_path / "img").rglob("*") if p.is_file()) == sorted(
        p.name for p in (path, path2, path3))


def test_retention_reasons_sampling(tmp_path: Path) -> None:
    import random

    s = Store(tmp_path / "db.sqlite")
    r = Retention(RetentionConfig(dir=tmp_path / "img", sample_pct=25.0), s, rng=random.Random(7))
    assert r.reasons(None, error=True) == []
    from edge.pipeline import Decision, FrameResult

    quiet = FrameResult(Decision("r", 1, "shadow", "pass", [], [], {}, {}, False))
    picks = sum(r.reasons(quiet) == ["sampled"] for _ in range(4000))
    assert 800 < picks < 1200
    loud = FrameResult(Decision("r", 1, "shadow", "flag", [("cat", 0.9)], [], {}, {}, True),
                       Decision("r", 2, "shadow", "pass", [], [], {}, {}, False))
    assert r.reasons(loud) == ["flagged", "near_threshold", "disagreement"]


def test_queue_backpressure_modes() -> None:
    q = FrameQueue(2)
    stop = threading.Event()
    assert q.put(Frame("a"), stop) and q.put_nowait(Frame("b"))
    assert not q.put_nowait(Frame("c")) and q.rejected == 1
    # a full queue of frames that wait for their outcome (folder, http): the live frame is the one dropped
    told = []
    dropped = q.put_drop_oldest(Frame("d", on_drop=lambda: told.append("d")))
    assert dropped is not None and dropped.source == "d" and q.dropped == 1 and told == ["d"]
    stop.set()
    assert q.put(Frame("e"), stop) is False  # a blocked folder put gives up on shutdown
    assert [q.get(0.01).source, q.get(0.01).source] == ["a", "b"] and q.get(0.01) is None
    assert q.high_water == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_folder_watcher_wakes_on_a_new_file_not_at_the_next_poll(tmp_path: Path) -> None:
    """With a long poll_s a file renamed into the folder is queued at once (inotify wakes the scan, which fails
    with the old wait of a whole poll_s), with the file it came from; a stop is noticed within the wait."""
    import os
    import time

    from edge.config import FolderSource
    from edge.sources.folder import FolderWatcher

    q, stop = FrameQueue(8), threading.Event()
    w = FolderWatcher(FolderSource(path=tmp_path / "in", poll_s=30.0, settle_s=0.0), q, lambda key: None, stop)
    w.start()
    try:
        time.sleep(0.3)  # the first scan (of an empty folder) is done: the watcher waits now
        (tmp_path / ".a.png").write_bytes(b"x" * 10)
        t0 = time.monotonic()
        os.replace(tmp_path / ".a.png", tmp_path / "in" / "a.png")
        frame = q.get(5.0)
        assert frame is not None and frame.source == "folder:a.png" and time.monotonic() - t0 < 2.0
        assert frame.origin is not None and frame.origin[0] == tmp_path / "in" / "a.png" and frame.origin[1] == 10
    finally:
        t0 = time.monotonic()
        stop.set()
        w.thread.join(5)
        assert not w.thread.is_alive() and time.monotonic() - t0 < 1.0
        w.close()


def test_drop_oldest_drops_the_oldest_live_frame() -> None:
    q = FrameQueue(3)
    told: list[str] = []
    live = [Frame(f"capture:c#{i}", on_drop=lambda i=i: told.append(f"c#{i}")) for i in range(3)]
    assert q.put_nowait(live[0]) and q.put_nowait(Frame("folder:x")) and q.put_nowait(live[1])
    assert q.put_drop_oldest(live[2]) is live[0] and told == ["c#0"]
    assert [q.get(0.01).source for _ in range(3)] == ["folder:x", "capture:c#1", "capture:c#2"]
    assert q.dropped == 1


def test_failed_deliveries_are_retried_then_marked_failed(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    cfg = ActionsConfig.model_validate({"webhook": {"url": f"http://127.0.0.1:{free_port()}/hook", "timeout_s": 1},
                                        "retry": {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.1}})
    a = rec()
    s.commit_frame([a], None, deliveries=[(a.id, "webhook", {"id": a.id})])
    disp = ActionDispatcher(cfg, s, "d", threading.Event())
    assert disp.channels([]) == ["webhook"] and disp.channels(["work_order_mqtt"]) == []
    import time

    deadline = time.monotonic() + 10
    while disp.pending() and time.monotonic() < deadline:
        disp.run_due()
        time.sleep(0.02)
    row = s.query("SELECT state, attempts, last_error FROM deliveries")[0]
    assert row["state"] == "failed" and row["attempts"] == 3 and "ConnectError" in row["last_error"]
    assert s.query("SELECT COUNT(*) FROM delivery_attempts WHERE ok = 0")[0][0] == 3


def test_retention_makes_the_day_folder_once_and_again_when_it_is_removed(tmp_path: Path, monkeypatch) -> None:
    """The day's folder is made by the first kept image of the day, not by every one; removed by hand (or by a
    cleanup) while the daemon runs, the next kept image makes it again and loses nothing."""
    import os
    import shutil

    s = Store(tmp_path / "db.sqlite")
    r = Retention(RetentionConfig(dir=tmp_path / "img"), s)
    made: list[Path] = []
    real_mkdir = Path.mkdir

    def counting_mkdir(self: Path, *a, **kw) -> None:
        made.append(self)
        real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", counting_mkdir)
    src = tmp_path / "in.png"
    src.write_bytes(b"x" * 64)
    st = src.stat()
    paths = [r.save(rec().id, b"x" * 64, ".png", (src, st.st_size, st.st_mtime_ns))[0] for _ in range(5)]
    assert len(made) == 1 and all(p.parent == made[0] and p.read_bytes() == b"x" * 64 for p in paths)
    shutil.rmtree(made[0])
    path, size = r.save(rec().id, b"y" * 32, ".png")  # written (not linked): the folder is made again
    assert path.read_bytes() == b"y" * 32 and size == 32 and len(made) == 2
    path2, _ = r.save(rec().id, b"x" * 64, ".png", (src, st.st_size, st.st_mtime_ns))
    assert os.path.samefile(path2, src) and len(made) == 2
