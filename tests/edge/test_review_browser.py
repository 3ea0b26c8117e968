"""The review page in headless Chromium, against a real daemon process: an inspector logs in with a fleet-issued
token, marks a false positive and the override is stored under the token's holder; at 390 px wide the image, the
four verdict buttons and the class choice are on screen; on a desktop the keyboard shortcuts record verdicts.
Screenshots (phone and desktop, login and review) go to test-artifacts/."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.edge.conftest import INSPECTOR_TOKEN, PCB, fill_inbox, inspectors_file, pcb_release, write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _inside(page, selector: str) -> None:
    """The element is rendered and wholly inside the viewport (no scrolling, nothing cut off at the sides)."""
    box = page.locator(selector).bounding_box()
    vp = page.viewport_size
    assert box is not None, f"{selector} is not rendered"
    assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= vp["width"] + 0.5 and box["y"] + box["height"] <= vp["height"] + 0.5, \
        (selector, box, vp)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_inspector_logs_in_and_reviews_on_a_phone_and_a_desktop(tmp_path: Path, bundles, keys, daemons) -> None:
    from playwright.sync_api import sync_playwright

    ana, bo = "ana-" + "t" * 40, "bo-" + "u" * 40
    cfg = write_config(tmp_path, keys, pcb_release(bundles),
                       api={"port": free_port(), "inspectors_file": str(inspectors_file(tmp_path, {"ana": ana, "bo": bo,
                                                                                "inspector-1": INSPECTOR_TOKEN}))})
    fill_inbox(tmp_path / "inbox", PCB)
    d = daemons(cfg)
    d.wait_frames(4)
    queue = d.get("/v1/review/queue")
    first = queue[0]
    assert first["decision"] == "flag" and "flagged" in first["kept_reasons"]
    ARTIFACTS.mkdir(exist_ok=True)
    import httpx

    head = httpx.get(d.url + "/review", timeout=10).headers
    assert "default-src 'self'" in head["content-security-policy"] and head["x-frame-options"] == "DENY"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            # -- a phone: 390 x 844 CSS pixels, touch --------------------------------------------------------
            # bypass_csp: the page's Content-Security-Policy forbids eval, which Playwright's waits use
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True, bypass_csp=True)
            page = phone.new_page()
            page.goto(d.url + "/review")
            page.wait_for_selector("#login")
            page.screenshot(path=str(ARTIFACTS / "review-login-phone.png"))
            assert page.locator("#queue").count() == 0  # nothing of the queue before a login
            page.fill("#token", "not-a-token")
            page.click("#login-btn")
            page.wait_for_function("document.getElementById('login-msg').textContent.includes('unknown')")
            page.fill("#token", ana)
            page.click("#login-btn")
            page.wait_for_selector("#queue li", state="attached")
            assert page.locator("#who").inner_text() == "ana"
            page.wait_for_function("document.getElementById('img').naturalWidth > 0")
            for sel in ("#img", "#confirm", "#false_positive", "#missed_defect", "#bad_image", "#defect_class"):
                _inside(page, sel)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
            assert first["source"] in page.locator("#title").inner_text()
            page.screenshot(path=str(ARTIFACTS / "review-phone.png"))
            page.tap("#false_positive")
            page.wait_for_function("document.getElementById('msg').textContent.includes('Saved')")
            assert "override" in page.locator("#msg").inner_text()
            page.wait_for_function(f"document.querySelectorAll('#queue li').length === {len(queue) - 1}")
            phone.close()

            # -- a desktop: 1366 x 768, keyboard shortcuts -------------------------------------------------
            desk = browser.new_context(viewport={"width": 1366, "height": 768}, bypass_csp=True)
            page = desk.new_page()
            page.goto(d.url + "/review")
            page.fill("#token", bo)
            page.press("#token", "Enter")
            page.wait_for_selector("#queue li")
            page.wait_for_function("document.getElementById('img').naturalWidth > 0")
            for sel in ("#img", "#confirm", "#false_positive", "#missed_defect", "#bad_image", "#queue"):
                _inside(page, sel)
            page.screenshot(path=str(ARTIFACTS / "review-desktop.png"))
            second = page.locator("#queue li.sel").get_attribute("data-id")
            page.keyboard.press("c")  # confirm with the keyboard
            page.wait_for_function("document.getElementById('msg').textContent.includes('Saved confirm')")
            page.keyboard.press("j")
            desk.close()
        finally:
            browser.close()

    mine = d.get("/v1/reviews", params={"prediction_id": first["id"]})
    assert len(mine) == 1
    r = mine[0]
    assert r["verdict"] == "false_positive" and r["override"] is True and r["inspector"] == "ana"
    assert r["model_decision"] == "flag" and r["models"] == {"screen": "pcb-aoi-v1.0"}
    (conf,) = d.get("/v1/reviews", params={"prediction_id": second})
    assert conf["verdict"] == "confirm" and conf["inspector"] == "bo" and conf["override"] is False
    with sqlite3.connect(tmp_path / "shadowline.db") as c:
        (rec,) = c.execute("SELECT record FROM reviews WHERE prediction_id = ?", (first["id"],)).fetchone()
        (pinned,) = c.execute("SELECT pinned FROM kept_images WHERE prediction_id = ?", (first["id"],)).fetchone()
    assert json.loads(rec)["inspector"] == "ana"
    assert pinned == 1  # retention keeps what an inspector touched
