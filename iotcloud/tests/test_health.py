"""/healthz (liveness) and /readyz (readiness): database, broker, bridge heartbeat, delivery backlog."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from devices.models import Device
from devices.services import device_decommission
from iotcloud import health
from mqtt_bridge.heartbeat import write_beat
from mqtt_bridge.models import BridgeHeartbeat
from mqtt_bridge.selectors import delivery_backlog
from mqtt_bridge.tests.conftest import free_port, restartable_broker  # noqa: F401 (fixture)
from twin.services import twin_update_desired

pytestmark = pytest.mark.django_db


@pytest.fixture
def listening_broker(settings):
    """Something that accepts TCP connections where MQTT_URL points: all the broker check needs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        settings.MQTT_URL = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        health.clear_broker_cache()
        yield server
    health.clear_broker_cache()


def beat(client_id="bridge-a", age_seconds: float = 0.0, **fields) -> BridgeHeartbeat:
    now = timezone.now()
    row = BridgeHeartbeat(
        client_id=client_id, hostname="test-host", pid=1, protocol="5", connected=True,
        started_at=now - timedelta(hours=1), last_beat_at=now - timedelta(seconds=age_seconds),
        stats={"received": 3, "accepted": 2, "rejected": 1, "published": 5}, **fields,
    )  # fmt: skip
    write_beat(row)
    return row


@pytest.fixture
def all_ready(listening_broker):
    """Every check passes: broker accepts connections, a bridge beat just now, nothing waits for delivery."""
    beat()


def readyz(client, expect: int, path: str = "/readyz") -> dict:
    response = client.get(path)
    body = response.json()
    assert response.status_code == expect, body
    assert body["status"] == ("ok" if expect == 200 else "unavailable")
    return body


# --- liveness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/healthz/live"])
def test_liveness_answers_without_the_database(client, path, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- readiness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/readyz", "/healthz/ready"])
def test_ready_when_every_check_passes(client, all_ready, path):
    body = readyz(client, 200, path)
    assert body["failed"] == []
    assert set(body["checks"]) == {"database", "broker", "bridge", "delivery"}
    for name, check in body["checks"].items():
        assert check["status"] == "ok", name
        assert check["reason"], name
    assert body["checks"]["bridge"]["bridges"][0]["client_id"] == "bridge-a"
    assert body["checks"]["delivery"]["backlog"] == 0
    assert client.get(path).headers["Cache-Control"].startswith("max-age=0")


def test_unready_while_the_broker_is_down_and_ready_again_after(client, settings, restartable_broker):  # noqa: F811
    beat()
    settings.MQTT_URL = f"mqtt://{restartable_broker.settings.host}:{restartable_broker.settings.port}"
    health.clear_broker_cache()
    readyz(client, 200)

    restartable_broker.stop()
    health.clear_broker_cache()  # or wait BROKER_CACHE_SECONDS
    body = readyz(client, 503)
    assert body["failed"] == ["broker"]
    broker = body["checks"]["broker"]
    assert broker["status"] == "failed"
    assert f"127.0.0.1:{restartable_broker.port}" in broker["reason"]
    assert body["checks"]["database"]["status"] == "ok"

    restartable_broker.start()
    health.clear_broker_cache()
    readyz(client, 200)


def test_probes_answer_head_too(client, all_ready):
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200


def test_backlog_query_leaves_the_planner_settings_alone(postgres_only):
    delivery_backlog()
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone()[0] == "on"


def test_broker_probe_is_cached_briefly(listening_broker, monkeypatch):
    probes = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: probes.append(a) or real(*a, **kw))
    for _ in range(5):
        assert health.check_broker().ok
    assert len(probes) == 1
    health.clear_broker_cache()
    assert health.check_broker().ok
    assert len(probes) == 2


def test_embedded_broker_address_is_checked_without_mqtt_url(settings):
    settings.MQTT_URL = ""
    settings.EMBEDDED_MQTT_HOST = "127.0.0.1"
    settings.EMBEDDED_MQTT_PORT = free_port()  # nothing listens there
    health.clear_broker_cache()
    result = health.check_broker()
    health.clear_broker_cache()
    assert not result.ok
    assert f"127.0.0.1:{settings.EMBEDDED_MQTT_PORT}" in result.reason


def unreachable_database(tmp_path):
    """A real connection to a database that cannot be reached (a closed port; SQLite: a missing directory)."""
    params = {**connection.settings_dict}
    if connection.vendor == "postgresql":
        params.update(HOST="127.0.0.1", PORT=free_port(), CONN_MAX_AGE=0)
    else:
        params["NAME"] = str(tmp_path / "no-such-directory" / "db.sqlite3")
    return type(connections["default"])(params, alias="unreachable")


def test_unready_when_the_database_is_unreachable(client, all_ready, monkeypatch, tmp_path):
    down = unreachable_database(tmp_path)
    monkeypatch.setattr(health, "_database", lambda: down)
    try:
        body = readyz(client, 503)
    finally:
        down.close()
    assert "database" in body["failed"]
    database = body["checks"]["database"]
    assert database["status"] == "failed"
    assert database["reason"].startswith(f"{connection.vendor} did not answer SELECT 1: ")
    # The checks that need the database are not attempted.
    assert body["checks"]["bridge"]["reason"] == "not checked: database unavailable"
    assert body["checks"]["broker"]["status"] == "ok"

    monkeypatch.undo()
    readyz(client, 200)


def test_a_database_that_accepts_but_never_answers_fails_within_the_connect_timeout(postgres_only, monkeypatch):
    """A hung host (here: a socket that accepts and stays silent) must not hold /readyz for minutes."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    params = {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": silent.getsockname()[1], "CONN_MAX_AGE": 0}
    assert params["OPTIONS"]["connect_timeout"] == 5  # the default (DB_CONNECT_TIMEOUT_SECONDS)
    params["OPTIONS"] = {**params["OPTIONS"], "connect_timeout": 1}
    hung = type(connections["default"])(params, alias="hung")
    monkeypatch.setattr(health, "_database", lambda: hung)
    started = time.monotonic()
    try:
        result = health.check_database()
    finally:
        hung.close()
        silent.close()
    assert not result.ok
    assert time.monotonic() - started < 4


def test_stale_bridge_heartbeat_makes_unready(client, listening_broker, settings):
    settings.BRIDGE_HEARTBEAT_STALE_SECONDS = 30
    beat("old-bridge", age_seconds=120)
    body = readyz(client, 503)
    assert body["failed"] == ["bridge"]
    assert "no bridge heartbeat within 30 s" in body["checks"]["bridge"]["reason"]
    assert "old-bridge" in body["checks"]["bridge"]["reason"]

    beat("new-bridge", age_seconds=1)  # a second bridge is alive: enough
    body = readyz(client, 200)
    assert [b["client_id"] for b in body["checks"]["bridge"]["bridges"]] == ["new-bridge"]


def test_no_heartbeat_at_all_makes_unready(client, listening_broker):
    body = readyz(client, 503)
    assert body["checks"]["bridge"]["reason"] == "no bridge has ever written a heartbeat"


def test_bridge_check_can_be_made_optional(client, listening_broker, settings):
    settings.READY_REQUIRE_BRIDGE = False
    body = readyz(client, 200)
    bridge = body["checks"]["bridge"]
    assert bridge["status"] == "failed"
    assert bridge["required"] is False


def test_delivery_lag_makes_unready_and_the_backlog_is_reported(client, all_ready, settings, tenant, make_device):
    settings.READY_MAX_DELIVERY_LAG_SECONDS = 60
    waiting = [make_device(tenant, f"lag-{n}") for n in range(3)]
    for device in waiting:
        twin_update_desired(device=device, document={"mode": "eco"})
    body = readyz(client, 200)  # fresh changes: waiting, not late
    assert body["checks"]["delivery"]["backlog"] == 3
    assert body["checks"]["delivery"]["oldest_age_seconds"] < 60

    Device.objects.filter(pk=waiting[0].pk).update(shadow_updated_at=timezone.now() - timedelta(seconds=300))
    body = readyz(client, 503)
    assert body["failed"] == ["delivery"]
    delivery = body["checks"]["delivery"]
    assert delivery["backlog"] == 3
    assert delivery["oldest_age_seconds"] >= 300
    assert "3 device(s) wait for desired delivery" in delivery["reason"]
    assert "limit 60 s" in delivery["reason"]

    settings.READY_MAX_DELIVERY_LAG_SECONDS = 0  # gate off: reported only
    assert readyz(client, 200)["checks"]["delivery"]["backlog"] == 3

    settings.READY_MAX_DELIVERY_LAG_SECONDS = 60
    Device.objects.filter(pk=waiting[0].pk).update(desired_published_version=1)  # the bridge delivered it
    assert readyz(client, 200)["checks"]["delivery"]["backlog"] == 2


def test_decommissioned_devices_are_not_backlog(tenant, make_device):
    device = make_device(tenant, "gone")
    twin_update_desired(device=device, document={"a": 1})
    assert delivery_backlog().count == 1
    device_decommission(device=device)
    assert delivery_backlog().count == 0


def test_readiness_logs_changes_not_every_probe(client, all_ready, caplog, monkeypatch):
    monkeypatch.setattr(health, "_last_failed", None)
    with caplog.at_level("INFO", logger="iotcloud.health"):
        readyz(client, 200)
        BridgeHeartbeat.objects.all().delete()
        for _ in range(3):
            readyz(client, 503)
    messages = [r.getMessage() for r in caplog.records if r.name == "iotcloud.health"]
    assert messages == ["ready", "not ready: bridge: no bridge has ever written a heartbeat"]
    assert not [r for r in caplog.records if r.name == "django.request"]


# --- who sees the detail ---------------------------------------------------------------------------

OPS_TOKEN = "ops-token-for-readyz"
SECRET_BRIDGE = "iotcloud-bridge-c0ffee-5ecret"


@pytest.fixture
def production_access(settings):
    """As with DEBUG=false: no detail for everyone; the metrics token unlocks it."""
    settings.METRICS_DEBUG_OPEN = False
    settings.METRICS_PUBLIC = False
    settings.METRICS_TOKEN = OPS_TOKEN


def test_readyz_without_the_metrics_token_names_the_failed_checks_only(client, production_access, listening_broker):
    beat(SECRET_BRIDGE, age_seconds=120)  # stale: the bridge check fails, and its reason names the bridge
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {OPS_TOKEN}"}):
        response = client.get("/readyz", headers=headers)
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "failed": ["bridge"]}
        text = response.content.decode()
        assert SECRET_BRIDGE not in text and "127.0.0.1" not in text
        assert "Authorization" in response["Vary"]

    full = client.get("/readyz", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert full.status_code == 503
    body = full.json()
    assert SECRET_BRIDGE in body["checks"]["bridge"]["reason"]
    assert body["checks"]["broker"]["host"] == "127.0.0.1"


def test_readyz_minimal_body_when_ready_and_when_the_broker_is_down(client, production_access, settings):
    beat(SECRET_BRIDGE)
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    health.clear_broker_cache()
    try:
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable", "failed": ["broker"]}
        assert str(settings.MQTT_URL.rsplit(":", 1)[1]) not in down.content.decode()
    finally:
        health.clear_broker_cache()
    settings.READY_REQUIRE_BRIDGE = False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        settings.MQTT_URL = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        health.clear_broker_cache()
        ok = client.get("/readyz")
        health.clear_broker_cache()
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "failed": []}


def test_readyz_is_minimal_with_public_metrics_too(client, settings, listening_broker):
    """METRICS_PUBLIC opens /metrics (without client ids), never the readiness detail."""
    settings.METRICS_DEBUG_OPEN = False
    settings.METRICS_PUBLIC = True
    settings.METRICS_TOKEN = ""
    beat(SECRET_BRIDGE)
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "failed": []}


def test_readyz_shows_everything_in_debug_without_a_token(client, settings, all_ready):
    """make run (DEBUG, METRICS_TOKEN empty): today's full detail, for convenience."""
    settings.METRICS_DEBUG_OPEN = True
    settings.METRICS_TOKEN = ""
    assert client.get("/readyz").json()["checks"]["bridge"]["bridges"][0]["client_id"] == "bridge-a"
