"""/metrics: HTTP metrics by route pattern, fleet gauges read at scrape time, token, multi-process totals."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from devices.models import Device
from devices.services import device_decommission
from iotcloud import metrics
from iotcloud.testing import subprocess_database_url
from jobs.choices import ExecutionStatus
from jobs.services import execution_update, job_create
from mqtt_bridge.heartbeat import write_beat
from mqtt_bridge.models import BridgeHeartbeat
from mqtt_bridge.tests.conftest import free_port, wait_until
from twin.services import twin_update_desired

ROOT = Path(__file__).resolve().parents[2]
TWIN_ROUTE = "/customer/devices/<str:device_id>/twin"

pytestmark = pytest.mark.django_db


def scrape(client, **headers) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one /metrics response."""
    response = client.get("/metrics", headers=headers or None)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text: str) -> dict[str, dict[tuple, float]]:
    result: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return result


def requests_total(samples, route: str, method: str = "GET", status: str = "200") -> float:
    key = (("method", method), ("route", route), ("status", status))
    return samples.get("iotcloud_http_requests_total", {}).get(key, 0.0)


def observed(samples, route: str) -> float:
    """How many requests the latency histogram holds for a route."""
    return samples.get("iotcloud_http_request_duration_seconds_count", {}).get((("route", route),), 0.0)


def gauge(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


# --- HTTP metrics ----------------------------------------------------------------------------


def test_requests_are_counted_by_route_pattern_not_path(client, operator, tenant, make_device):
    devices = [make_device(tenant, f"pump-{n}") for n in range(3)]
    before = scrape(client)
    for device in devices:
        operator.get(f"/customer/devices/{device.device_id}/twin", expect=200)
    operator.get("/customer/devices/no-such-device/twin", expect=404)
    after = scrape(client)

    assert requests_total(after, TWIN_ROUTE) - requests_total(before, TWIN_ROUTE) == 3
    assert requests_total(after, TWIN_ROUTE, status="404") - requests_total(before, TWIN_ROUTE, status="404") == 1
    assert observed(after, TWIN_ROUTE) - observed(before, TWIN_ROUTE) == 4
    text = client.get("/metrics").content.decode()
    assert "pump-1" not in text  # no raw path, no device id: bounded label values
    assert 'route="/metrics"' in text


def test_unknown_paths_and_methods_share_one_label(client):
    before = scrape(client)
    for n in range(5):
        client.get(f"/scanner/probe-{n}.php")
    client.generic("BREW", "/healthz")
    after = scrape(client)
    assert (
        requests_total(after, metrics.UNMATCHED, status="404") - requests_total(before, metrics.UNMATCHED, status="404")
        == 5
    )
    assert requests_total(after, "/healthz", method="other", status="405") >= 1
    assert not [k for k in after["iotcloud_http_requests_total"] if "probe" in str(k)]


def test_async_requests_are_counted_too(client):
    before = requests_total(scrape(client), "/healthz")
    response = async_to_sync(AsyncClient().get)("/healthz")
    assert response.status_code == 200
    assert requests_total(scrape(client), "/healthz") - before == 1


# --- fleet gauges ----------------------------------------------------------------------------


def test_job_executions_by_status(client, tenant, make_device):
    devices = [make_device(tenant, f"d-{n}") for n in range(4)]
    job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
    job = job_create(tenant=tenant, document_type="update", device_ids=[devices[0].device_id])
    execution_update(device=devices[0], job_id=job.job_id, status="IN_PROGRESS")
    execution_update(device=devices[0], job_id=job.job_id, status="FAILED")

    samples = scrape(client)
    assert gauge(samples, "iotcloud_job_executions", status="QUEUED") == 4
    assert gauge(samples, "iotcloud_job_executions", status="FAILED") == 1
    assert gauge(samples, "iotcloud_job_executions", status="IN_PROGRESS") == 0  # every status, zeros included
    assert len(samples["iotcloud_job_executions"]) == len(ExecutionStatus.values)  # one series per status


def test_devices_by_status_and_sync_status_and_delivery_backlog(client, tenant, make_device):
    now = timezone.now()
    synced, pending, _never_seen, gone = (make_device(tenant, name) for name in ("s", "p", "n", "g"))
    Device.objects.filter(pk__in=[synced.pk, pending.pk]).update(last_seen=now)
    twin_update_desired(device=pending, document={"mode": "eco"})
    Device.objects.filter(pk=pending.pk).update(shadow_updated_at=now - timedelta(seconds=90))
    device_decommission(device=gone)

    samples = scrape(client)
    assert gauge(samples, "iotcloud_devices", status="active") == 3
    assert gauge(samples, "iotcloud_devices", status="decommissioned") == 1
    assert gauge(samples, "iotcloud_devices_sync", sync_status="synced") == 1
    assert gauge(samples, "iotcloud_devices_sync", sync_status="pending") == 1
    assert gauge(samples, "iotcloud_devices_sync", sync_status="stale") == 1
    assert gauge(samples, "iotcloud_desired_backlog") == 1
    assert 90 <= gauge(samples, "iotcloud_desired_oldest_undelivered_seconds") < 120
    assert gauge(samples, "iotcloud_metrics_database_up") == 1


def test_fleet_figures_take_a_fixed_number_of_queries(tenant, make_device):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            metrics.render()
        return len(captured)

    few = queries()
    devices = [make_device(tenant, f"q-{n}") for n in range(20)]
    job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
    for device in devices[:5]:
        twin_update_desired(device=device, document={"n": 1})
    assert queries() == few <= 8  # aggregates, not a query per device or status


def test_a_database_outage_does_not_break_the_scrape(client, monkeypatch):
    def down():
        raise RuntimeError("connection refused")

    monkeypatch.setattr(metrics, "fleet_snapshot", down)
    samples = scrape(client)
    assert gauge(samples, "iotcloud_metrics_database_up") == 0
    assert "iotcloud_devices" not in samples
    assert "iotcloud_http_requests_total" in samples


# --- access ----------------------------------------------------------------------------------


def test_metrics_token_is_enforced_when_set(client, settings):
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic s3cret-metrics-token"}).status_code == 401
    assert "iotcloud_http_requests_total" in scrape(client, Authorization="Bearer s3cret-metrics-token")


def test_metrics_are_open_in_debug_without_a_token(client, settings):
    """make run: DEBUG and no METRICS_TOKEN keeps /metrics open, client ids included."""
    settings.METRICS_DEBUG_OPEN = True
    settings.METRICS_TOKEN = ""
    beat("iotcloud-bridge-dev")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert 'client_id="iotcloud-bridge-dev"' in response.content.decode()


def test_production_without_a_token_or_public_opt_in_is_refused(client, settings):
    """Start-up refuses this configuration (test_deploy_settings); should it happen anyway, nothing leaks."""
    settings.METRICS_DEBUG_OPEN = False
    settings.METRICS_PUBLIC = False
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated" and response.json()["detail"]


SECRET_BRIDGES = ("iotcloud-bridge-4f2a9c1b-7d3e5a60b1c2d3e4", "iotcloud-bridge-88aa77bb-0011223344556677")


def test_public_metrics_leave_the_bridge_client_ids_out(client, settings):
    """METRICS_PUBLIC=true (no token): open, but a bridge is a stable pseudonym, never its MQTT client id."""
    settings.METRICS_DEBUG_OPEN = False
    settings.METRICS_PUBLIC = True
    settings.METRICS_TOKEN = ""
    for client_id in SECRET_BRIDGES:
        beat(client_id)
    first, second = client.get("/metrics"), client.get("/metrics")
    assert first.status_code == 200
    text = first.content.decode()
    for client_id in SECRET_BRIDGES:
        assert client_id not in text
        assert client_id.rsplit("-", 1)[1] not in text
    labels = {labels for labels in parse(text)["iotcloud_bridge_reports_ingested_total"]}
    assert len(labels) == 2  # still one series per bridge
    assert all(dict(label)["client_id"].startswith("bridge-") for label in labels)
    assert parse(second.content.decode())["iotcloud_bridge_reports_ingested_total"].keys() == labels  # stable

    settings.METRICS_TOKEN = "s3cret-metrics-token"  # with a token, the token is what counts
    assert client.get("/metrics").status_code == 401
    full = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"}).content.decode()
    for client_id in SECRET_BRIDGES:
        assert f'client_id="{client_id}"' in full


def beat(client_id: str) -> None:
    now = timezone.now()
    write_beat(
        BridgeHeartbeat(
            client_id=client_id, hostname="h", pid=1, protocol="5", connected=True,
            started_at=now - timedelta(minutes=5), last_beat_at=now, stats={"accepted": 7},
        )
    )  # fmt: skip


# --- several worker processes ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the server processes read the test database
def test_gunicorn_workers_report_correct_totals_in_multiprocess_mode():
    """Workers restart every 5 requests (--max-requests), so 30 requests land in at least 6 processes."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="iotcloud-prom-") as prom_dir:
        env = {**os.environ, "DATABASE_URL": subprocess_database_url(), "PROMETHEUS_MULTIPROC_DIR": prom_dir}
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "iotcloud.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--max-requests", "5", "--log-level", "warning"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _get(base + "/healthz/live") == 200, timeout=30, message="gunicorn to answer")
            for _ in range(30):
                assert _get(base + "/healthz") == 200
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                samples = parse(response.read().decode())
            worker_files = list(Path(prom_dir).glob("counter_*.db"))
        finally:
            server.terminate()
            server.wait(30)
    assert requests_total(samples, "/healthz") == 30
    assert len(worker_files) >= 6
    assert gauge(samples, "iotcloud_metrics_database_up") == 1


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # a loaded machine restarts workers slowly
            return response.status
    except OSError:
        return None
