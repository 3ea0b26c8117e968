"""End to end in headless Chromium: a real `shadowline fleet serve` process on a real Mosquitto broker, two
simulated devices that obey their desired state over MQTT, and the dashboard driven like an admin would."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fleet.config import FleetConfig
from fleet.protocol import Desired, Reported, Topics, encode
from fleet.security import add_token
from fleet.service import Fleet
from tests.conftest import ROOT, Mosquitto, free_port
from tests.dashboard.world import DEVICES, add_device_detail, populate

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"


class SimDevice:
    """A device that applies every desired state at once and reports it: enough to drive rollouts."""

    def __init__(self, device: str, port: int, topics: Topics) -> None:
        import paho.mqtt.client as mqtt

        self.device, self.topics = device, topics
        self.active: str | None = None
        self.changed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{device}")
        self.client.will_set(topics.device(device, "status"), b"offline", qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_message = self._desired
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, rc, props=None) -> None:
        client.subscribe(self.topics.device(self.device, "desired"), qos=1)
        client.publish(self.topics.device(self.device, "status"), b"online", qos=1, retain=True)

    def _desired(self, client, userdata, msg) -> None:
        if not msg.payload:
            return
        want = Desired.model_validate_json(msg.payload)
        previous, self.active = self.active, want.release.ref
        # what the real agent reports (edge/agent/runtime.py): the release cache, backends and a hardware summary
        rep = Reported(device=self.device, active=self.active, desired_revision=want.revision,
                       cached=[r for r in (previous, self.active) if r], backends=["onnxruntime"],
                       activation={"state": "committed", "target": self.active,
                                   "chain": ["download", "verify", "prepare", "check", "activate", "commit"]},
                       hardware={"machine": platform.machine(), "system": platform.system(),
                                 "python": platform.python_version()})
        client.publish(self.topics.device(self.device, "reported"), encode(rep), qos=1, retain=True)
        self.changed.set()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(check, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def service(tmp_path_factory, bundles, keys):
    work = tmp_path_factory.mktemp("fleet-e2e")
    broker = Mosquitto(work / "mosquitto").start()
    tokens_file = work / "tokens.json"
    tokens = {r: add_token(tokens_file, f"{r}-user", [r]) for r in ("admin", "viewer")}
    data = work / "fleet"
    http_port = free_port()
    cfg = FleetConfig(data_dir=data, trust_store=keys["trust"], tokens_file=tokens_file,
                      public_url=f"http://127.0.0.1:{http_port}")
    fleet = Fleet(cfg, publish=lambda *a: None)  # filled offline; the service republishes desired on connect
    populate(fleet, bundles["pcb-aoi"])
    add_device_detail(fleet, bundles["pcb-aoi"], work)
    from fleet.protocol import AlertRecord
    fleet.store.insert_records("alerts", [  # one alert of each severity the pages must show
        AlertRecord(device="dev-a", rule="error_rate", state="raised", severity="critical", value=0.1, threshold=0.01,
                    message="error rate 10.00% over 30 predictions (limit 1.00%)"),
        AlertRecord(device="*", rule="override_rate", state="raised", severity="warning", value=0.2, threshold=0.15,
                    message="override rate 20.0% of 40 reviews (limit 15%)")])
    fleet.close()
    log = open(work / "fleet.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from shadowline.cli import main; raise SystemExit(main())", "fleet", "serve",
         "--data-dir", str(data), "--broker-url", f"mqtt://127.0.0.1:{broker.port}", "--port", str(http_port),
         "--trust-store", str(keys["trust"]), "--tokens-file", str(tokens_file), "--client-id", "fleet-e2e",
         "--public-url", f"http://127.0.0.1:{http_port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{http_port}"
    sims: list[SimDevice] = []
    try:
        wait_for(lambda: proc.poll() is None and _ready(url), 40, "the fleet service to be ready")
        sims = [SimDevice(d, broker.port, Topics("shadowline")) for d in DEVICES]
        yield {"url": url, "tokens": tokens, "sims": {s.device: s for s in sims}, "log": work / "fleet.log"}
    finally:
        for s in sims:
            s.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        broker.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def page(service):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = Path(service["log"]).parent / "chromium-profile"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1400, "height": 1000},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        p = ctx.new_page()
        p.set_default_timeout(20000)
        p.goto(service["url"] + "/dashboard/")
        p.fill("#token", service["tokens"]["admin"])
        p.click("#login")
        p.wait_for_selector("#devices")
        yield p
        ctx.close()


def api(service, path: str):
    r = httpx.get(service["url"] + path, headers={"Authorization": f"Bearer {service['tokens']['admin']}"})
    r.raise_for_status()
    return r.json()


def test_devices_page_shows_live_devices(service, page):
    wait_for(lambda: all(d["status"] == "online" for d in api(service, "/api/devices")), what="devices online")
    page.goto(service["url"] + "/dashboard/")
    rows = page.locator("#devices tbody tr")
    assert rows.count() == 2
    text = rows.all_inner_texts()
    assert all("online" in t for t in text) and "dev-a" in text[0] and "dev-b" in text[1]
    page.screenshot(path=str(ARTIFACTS / "devices.png"), full_page=True)


def test_pillars_page_renders_store_figures(service, page):
    page.goto(service["url"] + "/dashboard/pillars?window=30d")
    stored = api(service, "/api/ingest")["stored"]["predictions"]
    assert page.locator("#health p").first.inner_text().startswith(f"{stored} predictions")
    assert page.locator(".charts .chart svg").count() == 6  # the 30-day trends
    assert page.locator("#chart-predictions polyline").count() >= 1
    assert page.locator("#chart-confidence rect.bar").count() == 10  # the histogram's ten bins as bars
    assert page.locator("#chart-errors line.limit").count() == 1
    assert page.locator("#override-class tbody tr").count() == 2  # Defective and Normal
    page.screenshot(path=str(ARTIFACTS / "pillars.png"), full_page=True)


def test_alerts_page_evaluates_rules(service, page):
    page.goto(service["url"] + "/dashboard/alerts")
    page.click("#evaluate")
    page.wait_for_selector("#message")
    assert "alert(s) changed" in page.inner_text("#message")
    page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)


def test_shadow_report_and_go_no_go(service, page):
    page.goto(service["url"] + "/dashboard/shadow")
    page.select_option("#sel-release", "pcb-line@1")
    page.fill("#shadow-group", "line-3")
    page.fill("input[name=days]", "30")
    page.click("#show-report")
    page.wait_for_selector("#verdict")
    assert page.inner_text("#verdict") == "NO-GO"  # nobody signed off
    fails = [r for r in page.locator("#checks tbody tr").all_inner_texts() if "fail" in r]
    assert any(r.startswith("sign_off") for r in fails)
    report = httpx.get(page.url.replace("/dashboard/shadow?", "/dashboard/shadow/report?") + "&format=json",
                       headers={"Authorization": f"Bearer {service['tokens']['viewer']}"}).json()
    assert page.locator("#summary").inner_text().count(str(report["defects"])) >= 1 and not report["go"]
    page.screenshot(path=str(ARTIFACTS / "shadow.png"), full_page=True)


def test_rollback_from_the_page_takes_effect(service, page):
    ro = wait_for(lambda: next((r for r in api(service, "/api/rollouts") if r["release"] == "pcb-line@2"
                                and r["state"] == "completed"), None), 30, "the pcb-line@2 rollout to complete")
    sims = service["sims"]
    wait_for(lambda: all(s.active == "pcb-line@2" for s in sims.values()), what="devices on pcb-line@2")
    page.goto(service["url"] + "/dashboard/rollouts")
    for s in sims.values():
        s.changed.clear()
    page.click(f"#rollback-{ro['id']}")
    page.wait_for_selector("#question")
    assert ro["id"] in page.inner_text("#question")
    page.screenshot(path=str(ARTIFACTS / "rollback-confirm.png"), full_page=True)
    page.click("#confirm")
    page.wait_for_selector("#message")
    assert "rolled_back" in page.inner_text("#message")
    page.screenshot(path=str(ARTIFACTS / "rollouts.png"), full_page=True)
    # the devices got their previous release over MQTT, applied it and reported it back
    wait_for(lambda: all(s.active == "pcb-line@1" for s in sims.values()), what="devices back on pcb-line@1")
    wait_for(lambda: all(d["active"] == "pcb-line@1" for d in api(service, "/api/devices")), what="reported")
    page.goto(service["url"] + "/dashboard/")
    assert all("pcb-line@1" in t for t in page.locator("#devices tbody tr").all_inner_texts())
    page.screenshot(path=str(ARTIFACTS / "devices-after-rollback.png"), full_page=True)


def test_metrics_endpoint_of_the_running_service(service):
    text = httpx.get(service["url"] + "/metrics",
                     headers={"Authorization": f"Bearer {service['tokens']['viewer']}"}).text
    stored = api(service, "/api/ingest")["stored"]["predictions"]
    assert f'shadowline_fleet_records_total{{kind="predictions"}} {float(stored)}' in text
    assert 'shadowline_fleet_rollouts{state="rolled_back"} 1.0' in text
    assert "shadowline_fleet_broker_connected 1.0" in text  # the running service holds its MQTT connection


def test_halt_from_the_page_is_confirmed_and_stops_the_rollout(service, page):
    # a group whose one device has no simulator: the rollout's first wave stays pending, so it is still running
    admin = {"Authorization": f"Bearer {service['tokens']['admin']}"}
    httpx.put(service["url"] + "/api/devices/dev-z", json={"groups": ["line-9"]}, headers=admin).raise_for_status()
    r = httpx.post(service["url"] + "/api/rollouts", json={"release": "pcb-line@1", "group": "line-9",
                                                            "waves": ["100%"]}, headers=admin)
    r.raise_for_status()
    rid = r.json()["id"]
    page.goto(service["url"] + "/dashboard/rollouts")
    assert page.locator(f"#halt-{rid}").count() == 1
    page.click(f"#halt-{rid}")
    page.wait_for_selector("#question")
    assert rid in page.inner_text("#question") and "Halt" in page.inner_text("#question")
    assert api(service, f"/api/rollouts/{rid}")["state"] == "running"  # nothing happens before confirming
    page.screenshot(path=str(ARTIFACTS / "halt-confirm.png"), full_page=True)
    page.click("#confirm")
    page.wait_for_selector("#message")
    assert f"rollout {rid}: halted" in page.inner_text("#message")
    st = api(service, f"/api/rollouts/{rid}")
    assert st["state"] == "halted" and st["reason"] == "halted at wave 0: halted from the dashboard by admin-user"
    assert page.locator(f"#halt-{rid}").count() == 0  # no Halt control on a halted rollout; Roll back remains
    assert page.locator(f"#rollback-{rid}").count() == 1


def _fits(page, width: int) -> None:
    """Nothing but the tables that scroll inside their own box is wider than the window: the page itself does
    not scroll sideways (charts shrink to the width, cards stack)."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
    for box in page.locator(".chart svg").all():
        assert box.bounding_box()["width"] <= width


def _on_screen(locator, width: int, tag: str) -> None:
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (tag, locator, box)


@pytest.mark.parametrize("width,height", [(390, 844), (1400, 1000)])
def test_pages_at_phone_and_desktop_width(service, page, width, height):
    """Devices, pillars, alerts, one alert and the API docs at phone and desktop width; saved for people to look
    at. The API docs load with every request to another host refused (a plant network without internet)."""
    page.set_viewport_size({"width": width, "height": height})
    try:
        tag = "phone" if width < 600 else "desktop"
        page.goto(service["url"] + "/dashboard/")
        assert page.locator("meta[name=viewport]").count() == 1
        _fits(page, width)
        cells = page.locator("#devices tbody tr").first.locator("td")
        for i in (1, 2, 7, 10):  # status, release, error rate, alerts: on screen without a sideways scroll
            _on_screen(cells.nth(i), width, tag)
        page.screenshot(path=str(ARTIFACTS / f"devices-{tag}.png"), full_page=True)
        page.click("#devices tbody tr:first-child td:first-child a")
        page.wait_for_selector("#recent-predictions")
        assert page.inner_text("h1") == "Device dev-a" and "online" in page.inner_text("#summary")
        _fits(page, width)
        page.screenshot(path=str(ARTIFACTS / f"device-{tag}.png"), full_page=True)
        page.goto(service["url"] + "/dashboard/pillars?window=30d")
        _fits(page, width)
        page.screenshot(path=str(ARTIFACTS / f"pillars-{tag}.png"), full_page=True)
        page.goto(service["url"] + "/dashboard/alerts")
        first = page.locator("#active-alerts tbody tr").first
        assert "critical" in first.inner_text().lower()
        _fits(page, width)
        # the on-call person's whole alert is on screen at either width: its message and the buttons to take it
        # (on a phone each alert is a card; a table would hide them behind a sideways scroll)
        for part in (first.get_by_text("error rate", exact=False).first, first.locator("button", has_text="Acknowledge")):
            _on_screen(part, width, tag)
        page.screenshot(path=str(ARTIFACTS / f"alerts-{tag}.png"), full_page=True)
        first.locator("a").first.click()
        page.wait_for_selector("#runbook")
        assert "error_rate" in page.inner_text("h1")
        page.screenshot(path=str(ARTIFACTS / f"alert-{tag}.png"), full_page=True)
        # nothing may leave loopback: the docs must render from the fleet's own assets
        outside: list[str] = []

        def guard(route):
            if route.request.url.startswith(service["url"]):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", guard)
        try:
            page.goto(service["url"] + "/docs")
            page.wait_for_selector(".opblock", timeout=30000)
            page.screenshot(path=str(ARTIFACTS / f"api-docs-{tag}.png"), full_page=False)
            page.goto(service["url"] + "/redoc")
            page.wait_for_selector("h1", timeout=30000)
            assert "Shadowline fleet" in page.inner_text("h1")
        finally:
            page.unroute("**/*")
        # ReDoc's bundle asks for its "powered by" logo from its vendor; refused, the page renders all the same
        assert [u for u in outside if not u.endswith("/redoc/logo-mini.svg")] == []
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
