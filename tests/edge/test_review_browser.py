"""The review page in headless Chromium: an inspector marks a false positive and the override is stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.edge.conftest import PCB, fill_inbox, pcb_release, write_config

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_inspector_marks_false_positive(tmp_path: Path, bundles, keys, daemons) -> None:
    from playwright.sync_api import sync_playwright

    cfg = write_config(tmp_path, keys, pcb_release(bundles))
    fill_inbox(tmp_path / "inbox", PCB)
    d = daemons(cfg)
    d.wait_frames(4)
    flagged = d.get("/v1/predictions", params={"decision": "flag"})
    assert sorted(r["source"] for r in flagged) == ["folder:Defective_02.png", "folder:Defective_25.png"]
    queue = d.get("/v1/review/queue")
    first = queue[0]
    assert first["decision"] == "flag" and "flagged" in first["kept_reasons"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(d.url + "/review")
            page.wait_for_selector("#queue li")
            assert page.locator("#queue li").count() == len(queue)
            page.wait_for_function("document.getElementById('img').naturalWidth > 0")
            assert first["source"] in page.locator("#title").inner_text()
            assert "flagged because Defective" in page.locator("#why").inner_text()
            page.fill("#inspector", "ana")
            page.click("#false_positive")
            page.wait_for_function("document.getElementById('msg').textContent.includes('Saved')")
            assert "override" in page.locator("#msg").inner_text()
            # the reviewed frame left the queue
            page.wait_for_function(f"document.querySelectorAll('#queue li').length === {len(queue) - 1}")
        finally:
            browser.close()

    reviews = d.get("/v1/reviews", params={"prediction_id": first["id"]})
    assert len(reviews) == 1
    r = reviews[0]
    assert r["verdict"] == "false_positive" and r["override"] is True and r["inspector"] == "ana"
    assert r["model_decision"] == "flag" and r["models"] == {"screen": "pcb-aoi-v1.0"}
    assert r["thresholds"] == {"screen": {"default": 0.5, "classes": ["Defective"]}}
    with sqlite3.connect(tmp_path / "shadowline.db") as c:
        (rec,) = c.execute("SELECT record FROM reviews WHERE prediction_id = ?", (first["id"],)).fetchone()
        (outbox,) = c.execute("SELECT payload FROM outbox WHERE kind='reviews'").fetchone()
        (pinned,) = c.execute("SELECT pinned FROM kept_images WHERE prediction_id = ?", (first["id"],)).fetchone()
    assert json.loads(rec)["override"] is True and json.loads(outbox)["id"] == r["id"]
    assert pinned == 1  # retention keeps what an inspector touched
