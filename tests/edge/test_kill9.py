"""kill -9 while the daemon works through a folder, then restart: every image has exactly one prediction record."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.edge.conftest import PCB, PHOTOS, pcb_release, write_config


def _frames(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM predictions WHERE role='active'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_kill9_then_restart_processes_every_image_exactly_once(tmp_path: Path, bundles, keys, daemons) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sources = sorted(PCB.iterdir()) + sorted(PHOTOS.iterdir())
    names = []
    for i in range(5):
        for f in sources:
            name = f"{i:02d}-{f.name}"
            shutil.copy(f, inbox / name)
            names.append(name)
    cfg = write_config(tmp_path, keys, pcb_release(bundles), retention={"sample_pct": 30.0})
    db = tmp_path / "shadowline.db"
    kills = 0
    for stop_at in (8, 30):
        d = daemons(cfg, wait_ready=False)
        deadline = time.monotonic() + 60
        while _frames(db) < stop_at and time.monotonic() < deadline:
            time.sleep(0.01)
        d.kill9()  # mid-folder: frames queued, one in inference, files not yet moved
        kills += 1
        assert _frames(db) < len(names), "the kill came too late to test anything"
    d = daemons(cfg)
    d.wait_frames(0)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (any(p.is_file() for p in inbox.iterdir()) or _frames(db) < len(names)):
        time.sleep(0.1)
    d.stop()  # a clean stop: everything taken is committed and the database is closed before it is read
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT source, COUNT(*) FROM predictions WHERE role='active' GROUP BY source").fetchall()
        outbox = c.execute("SELECT COUNT(*) FROM outbox WHERE kind='predictions'").fetchone()[0]
        kept = [Path(p) for (p,) in c.execute("SELECT path FROM kept_images")]
    counts = {s.removeprefix("folder:"): n for s, n in rows}
    assert sorted(counts) == sorted(names)  # none lost
    assert set(counts.values()) == {1}  # none processed twice
    assert outbox == len(names)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(names)
    assert not [p for p in inbox.iterdir() if p.is_file()]
    # every kept image belongs to a committed record; files written just before a kill were swept
    images = sorted(p for p in (tmp_path / "images").rglob("*") if p.is_file())
    assert images == sorted(kept) and all(p.exists() for p in kept)
    assert kills == 2
