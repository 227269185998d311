"""The operator UI in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The web server is a real process (`manage.py web`: daphne, HTTP + websockets)
on the test database; devices talk to it over HTTP, as they would in the
field. Screenshots go to test-artifacts/ (docs/screenshots/ has the README's).

Skipped where Chromium is not installed, unless REQUIRE_BROWSER=1 (.ci/run
installs Chromium and sets it, so CI never skips these).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from devices.choices import Role
from devices.services import device_provision, operator_create, tenant_create
from iotcloud.testing import subprocess_database_url
from mqtt_bridge import topics
from mqtt_bridge.tests import conftest as mqtt_fixtures
from mqtt_bridge.tests.conftest import (
    MqttClient,
    broker_url,
    free_port,
    purge_session,
    wait_until,
)

mqtt_broker = mqtt_fixtures.mqtt_broker  # the fixture: MQTT_URL's broker, or the embedded one

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PASSWORD = "browser-pw-123"
README_SHOTS = {"twin-panel", "job-progress", "device-list"}

if not Path(CHROMIUM).exists():
    if os.environ.get("REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


class WebServer:
    """`manage.py web --with-bridge`: make run's web process (daphne + the MQTT bridge in-process)."""

    def __init__(self, broker):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.broker = broker
        self.client_id = f"browser-bridge-{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="web-", suffix=".log", delete=False)  # noqa: SIM115
        env = {
            **os.environ,
            "DATABASE_URL": subprocess_database_url(),
            "DEBUG": "1",  # static files from the app folders, no collectstatic
            "LOG_LEVEL": "INFO",
            "MQTT_URL": broker_url(broker),
            "MQTT_CLIENT_ID": self.client_id,
            "MQTT_POLL_SECONDS": "0.2",
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "web", f"127.0.0.1:{self.port}", "--with-bridge"],
            cwd=settings.BASE_DIR, env=env, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        wait_until(self._up, timeout=30, message="the web server to answer")
        wait_until(lambda: b"connected to" in Path(self.log.name).read_bytes(), message="the bridge to connect")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"web server exited:\n{Path(self.log.name).read_text()}")
        try:
            urllib.request.urlopen(self.url + "/healthz/live", timeout=1)
        except OSError:
            return False
        return True

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        purge_session(self.broker, self.client_id)

    def device_call(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Provision-Token": token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None


@pytest.fixture
def fleet(transactional_db):
    tenant = tenant_create(tenant_id="acme", name="Acme")
    operator_create(username="olivia", tenant=tenant, role=Role.OPERATOR, password=PASSWORD)
    devices = {}
    for n in range(1, 6):
        device, token = device_provision(tenant=tenant, device_id=f"pump-{n}", tags={"site": "paris"})
        devices[device.device_id] = token
    return devices


@pytest.fixture
def server(fleet, mqtt_broker):
    web = WebServer(mqtt_broker)
    yield web
    web.stop()
    with MqttClient(mqtt_broker) as client:  # leave no retained state behind on a shared broker
        for device_id in fleet:
            client.publish(topics.desired("acme", device_id), b"", retain=True)
            client.publish(topics.jobs_notify("acme", device_id), b"", retain=True)


@pytest.fixture
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/admin/login/")
        page.fill("#id_username", "olivia")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        expect(page.locator("#user-tools")).to_contain_text("olivia")
        yield page
        browser.close()
        assert not errors, f"JavaScript errors: {errors}"


def shot(page, name: str, locator=None):
    path = ARTIFACTS / f"{name}.png"
    (locator or page).screenshot(path=str(path))
    if name in README_SHOTS and os.environ.get("UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures
        docs = Path(settings.BASE_DIR) / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, docs / path.name)


def test_edit_desired_then_a_device_report_turns_the_badge_green_without_reload(page, server, fleet):
    token = fleet["pump-1"]
    server.device_call("GET", "/device/v1/shadow", token)  # the device is online: not stale

    page.goto(server.url + "/admin/devices/device/?q=pump-1")
    page.click("text=pump-1")
    badge = page.locator("#iot-sync")
    expect(badge).to_have_text("synced")
    expect(page.locator("#iot-twin [data-live-status]")).to_have_attribute("data-live-status", "live")
    page.evaluate("window.__noReload = true")

    # The editor refuses what is not a JSON object before anything is sent.
    page.fill("#iot-document", '{"led": ')
    expect(page.locator("#iot-editor-status")).to_contain_text("Not valid JSON")
    page.fill("#iot-document", json.dumps({"led": "on", "interval_s": 30}))
    page.click("#iot-save")
    expect(page.locator("#iot-editor-status")).to_contain_text("Saved: desired version 1")
    expect(page.locator("#iot-desired-version")).to_have_text("1")
    expect(badge).to_have_text("pending")
    expect(page.locator("#iot-delta")).to_contain_text('"led": "on"')
    # Delivered over MQTT: the bridge publishes it retained, and the panel shows the published version.
    expect(page.locator("#iot-published-version")).to_have_text("1")
    with MqttClient(server.broker) as device_mqtt:
        device_mqtt.subscribe(topics.desired("acme", "pump-1"))
        (retained,) = device_mqtt.collect(count=1)
    assert json.loads(retained.payload)["desired"] == {"led": "on", "interval_s": 30}
    assert json.loads(retained.payload)["version"] == 1
    shot(page, "twin-panel-pending", page.locator("#iot-twin"))

    # The device applies it and reports over HTTP; the panel follows without a reload.
    desired = server.device_call("GET", "/device/v1/shadow", token)
    assert desired["desired"] == {"led": "on", "interval_s": 30}
    server.device_call("POST", "/device/v1/shadow/reported", token, {"reported": desired["desired"], "version": 1})
    expect(badge).to_have_text("synced")
    expect(page.locator("#iot-reported-version")).to_have_text("1")
    expect(page.locator("#iot-delta")).to_have_text("{}")
    assert page.evaluate("window.__noReload") is True
    shot(page, "twin-panel", page.locator("#iot-twin"))

    # A stale save (another operator moved the version on) is refused inline.
    page.evaluate("document.getElementById('iot-expected-version').value = '0'")
    page.fill("#iot-document", '{"led": "off"}')
    page.click("#iot-save")
    expect(page.locator("#iot-editor-status")).to_contain_text("does not match desired_version 1")
    expect(page.locator("#iot-desired-version")).to_have_text("1")


def test_named_shadow_picked_created_written_and_deleted_in_the_twin_panel(page, server, fleet):
    token = fleet["pump-1"]
    server.device_call("GET", "/device/v1/shadow", token)  # the device is online: not stale
    page.goto(server.url + "/admin/devices/device/?q=pump-1")
    page.click("text=pump-1")
    picker = page.locator("#iot-shadow")
    expect(picker).to_have_value("")
    expect(page.locator("#iot-twin [data-live-status]")).to_have_attribute("data-live-status", "live")
    page.evaluate("window.__noReload = true")

    # A bad name is the service's refusal, shown in the panel; a good one creates the shadow and shows it.
    page.fill("#iot-shadow-name", "no spaces")
    page.click("#iot-shadow-create-submit")
    expect(page.locator("#iot-shadow-status")).to_contain_text("Not created: Invalid shadow name")
    page.fill("#iot-shadow-name", "config")
    page.click("#iot-shadow-create-submit")
    expect(page.locator("#iot-shadow-status")).to_have_text("Created named shadow config.")
    expect(picker).to_have_value("config")
    assert page.url.endswith("&shadow=config")  # beside the admin's own parameters
    expect(page.locator("#iot-version")).to_have_text("1")
    expect(page.locator("#iot-published")).to_be_hidden()  # the classic shadow's retained message only

    # Save desired to it: its versions move, the classic shadow's do not.
    page.fill("#iot-document", json.dumps({"mode": "eco", "interval_s": 60}))
    page.click("#iot-save")
    expect(page.locator("#iot-editor-status")).to_contain_text("Saved: desired version 2 (document version 2)")
    expect(page.locator("#iot-version")).to_have_text("2")
    expect(page.locator("#iot-delta")).to_contain_text('"mode": "eco"')
    expect(page.locator("#iot-fields tr[data-field='mode'] td").nth(1)).not_to_have_text("\u2014")
    assert server.device_call("GET", "/device/v1/shadow", token) == {"desired": {}, "version": 0}

    # The device reports to the named shadow over HTTP; the panel follows it live.
    server.device_call("POST", "/device/v1/shadows/config/reported", token,
                       {"reported": {"mode": "eco", "interval_s": 60}, "version": 2})  # fmt: skip
    expect(page.locator("#iot-reported-version")).to_have_text("2")
    expect(page.locator("#iot-version")).to_have_text("3")
    expect(page.locator("#iot-delta")).to_have_text("{}")
    expect(page.locator("#iot-sync")).to_have_text("synced")
    expect(page.locator("#iot-fields tr[data-field='mode'] td").nth(2)).not_to_have_text("\u2014")
    assert page.evaluate("window.__noReload") is True
    shot(page, "twin-panel-named-shadow", page.locator("#iot-twin"))

    # The selection survives a reload; the picker switches back and forth without one.
    page.reload()
    expect(picker).to_have_value("config")
    expect(page.locator("#iot-version")).to_have_text("3")
    page.evaluate("window.__noReload = true")
    picker.select_option("")
    expect(page.locator("#iot-editor-shadow")).to_have_text("of the classic shadow")
    expect(page.locator("#iot-desired-version")).to_have_text("0")
    assert "shadow=" not in page.url
    picker.select_option("config")
    expect(page.locator("#iot-desired-version")).to_have_text("2")

    # Delete it, after the confirmation: the panel is back on the classic shadow, the picker without it.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#iot-shadow-delete")
    expect(page.locator("#iot-shadow-status")).to_have_text("Deleted named shadow config (at version 4).")
    expect(picker).to_have_value("")
    expect(picker.locator("option")).to_have_count(1)
    assert page.evaluate("window.__noReload") is True


def test_device_list_badges_follow_reports_live(page, server, fleet):
    for device_id in ("pump-1", "pump-2"):
        server.device_call("GET", "/device/v1/shadow", fleet[device_id])
    page.goto(server.url + "/admin/devices/device/")
    row_badge = page.locator("[data-key='acme/pump-2']")
    expect(row_badge).to_have_text("synced")
    expect(page.locator("#content [data-live-status]")).to_have_attribute("data-live-status", "live")
    page.evaluate("window.__noReload = true")
    # A change made elsewhere (the same session's cookies, outside this page) shows up here.
    response = page.request.post(
        f"{server.url}/admin/devices/device/{row_badge.get_attribute('data-pk')}/desired/",
        data=json.dumps({"document": {"fan": 2}}),
        headers={"Content-Type": "application/json", "X-CSRFToken": _csrf(page), "Referer": server.url + "/admin/"},
    )
    assert response.ok, response.text()
    expect(row_badge).to_have_text("pending")
    server.device_call("POST", "/device/v1/shadow/reported", fleet["pump-2"], {"reported": {"fan": 2}, "version": 1})
    expect(row_badge).to_have_text("synced")
    assert page.evaluate("window.__noReload") is True
    shot(page, "device-list")


def _csrf(page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == settings.CSRF_COOKIE_NAME)


def test_create_a_job_and_watch_its_progress_bar_move(page, server, fleet):
    page.goto(server.url + "/admin/jobs/job/add/")
    page.fill("#id_job_id", "fw-1-4-2")
    page.fill("#id_document_type", "firmware_update")
    page.fill("#id_document_params", '{"version": "1.4.2", "url": "https://fw.example/1.4.2.bin"}')
    page.fill("#id_tags", "site=paris")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("5 execution(s) queued")
    counts = page.locator("[data-job-progress] .iot-counts")
    expect(counts).to_have_text("queued 5 of 5")
    expect(page.locator("[data-jobs-live] [data-live-status]")).to_have_attribute("data-live-status", "live")
    page.evaluate("window.__noReload = true")

    # Devices pick the job up over HTTP and report; the bar follows without a reload.
    def execution(device_id, status):
        path = "/device/v1/jobs/fw-1-4-2/execution"
        server.device_call("PUT", path, fleet[device_id], {"status": status})

    pending = server.device_call("GET", "/device/v1/jobs/pending", fleet["pump-1"])
    assert [job["job_id"] for job in pending["jobs"]] == ["fw-1-4-2"]
    for device_id in ("pump-1", "pump-2", "pump-3", "pump-4"):
        execution(device_id, "IN_PROGRESS")
    expect(counts).to_have_text("in progress 4 · queued 1 of 5")
    for device_id in ("pump-1", "pump-2"):
        execution(device_id, "SUCCEEDED")
    execution("pump-3", "FAILED")
    expect(counts).to_have_text("succeeded 2 · failed 1 · in progress 1 · queued 1 of 5")
    assert page.evaluate("window.__noReload") is True
    shot(page, "job-page", page.locator("#content"))

    page.goto(server.url + "/admin/jobs/job/")
    row_counts = page.locator("[data-job-progress] .iot-counts").first
    expect(row_counts).to_have_text("succeeded 2 · failed 1 · in progress 1 · queued 1 of 5")
    shot(page, "job-progress")
    execution("pump-4", "SUCCEEDED")
    execution("pump-5", "IN_PROGRESS")
    execution("pump-5", "SUCCEEDED")
    expect(row_counts).to_have_text("succeeded 4 · failed 1 of 5")
    expect(page.locator("[data-job-status]").first).to_have_text("COMPLETED")
    shot(page, "job-list")
