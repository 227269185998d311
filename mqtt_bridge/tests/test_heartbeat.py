"""The bridge's heartbeat row: written while it runs, read by /readyz, exported by /metrics."""

import json
import os
import socket
import threading
from datetime import timedelta

import pytest
from django.db.utils import OperationalError
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from iotcloud import health
from mqtt_bridge import heartbeat as heartbeat_module
from mqtt_bridge import topics
from mqtt_bridge.heartbeat import Heartbeat, write_beat
from mqtt_bridge.models import BridgeHeartbeat
from mqtt_bridge.tests.conftest import broker_url, wait_until
from twin.services import twin_update_desired


def row(client_id: str) -> BridgeHeartbeat | None:
    return BridgeHeartbeat.objects.filter(client_id=client_id).first()


def samples(client, name: str) -> dict[tuple, float]:
    """{label values: value} of one metric family from /metrics."""
    text = client.get("/metrics").content.decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name.endswith("_total")}
    return {}


def test_a_running_bridge_makes_readyz_ready(start_bridge, mqtt_broker, settings, client):
    settings.MQTT_URL = broker_url(mqtt_broker)
    settings.BRIDGE_HEARTBEAT_SECONDS = 0.2
    health.clear_broker_cache()
    body = client.get("/readyz").json()
    assert body["failed"] == ["bridge"]

    bridge = start_bridge()
    beat = wait_until(lambda: (r := row(bridge.client_id)) and r.connected and r, message="a connected heartbeat")
    assert beat.pid == os.getpid()
    assert beat.hostname == socket.gethostname()
    assert beat.protocol in ("5", "3.1.1")
    assert beat.started_at <= beat.last_beat_at
    first = beat.last_beat_at
    wait_until(lambda: row(bridge.client_id).last_beat_at > first, message="a second beat")

    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert [b["client_id"] for b in response.json()["checks"]["bridge"]["bridges"]] == [bridge.client_id]


def test_heartbeat_carries_the_counters_to_metrics_and_a_final_beat_on_stop(
    start_bridge, provision, mqtt_client, mqtt_tenant, settings, client
):
    settings.BRIDGE_HEARTBEAT_SECONDS = 0.2
    bridge = start_bridge()
    (device,) = provision(1)
    twin_update_desired(device=device, document={"mode": "eco"})
    publisher = mqtt_client()
    topic = topics.reported(mqtt_tenant.id, device.device_id)
    publisher.publish(topic, json.dumps({"reported": {"mode": "eco"}, "version": 1}))
    publisher.publish(topic, b"not json")

    def counted():
        beat = row(bridge.client_id)  # None until the first beat is written
        stats = beat.stats if beat is not None else {}
        return stats.get("accepted") == 1 and stats.get("rejected") == 1 and stats.get("published", 0) >= 1

    wait_until(counted, message="the heartbeat to carry the counters")
    labels = (("client_id", bridge.client_id),)
    assert samples(client, "iotcloud_bridge_reports_ingested")[labels] == 1.0
    assert samples(client, "iotcloud_bridge_reports_rejected")[labels] == 1.0
    assert samples(client, "iotcloud_bridge_reports_received")[labels] == 2.0
    assert samples(client, "iotcloud_bridge_desired_published")[labels] >= 1.0

    bridge.stop()
    final = row(bridge.client_id)
    assert final.connected is False
    assert final.stats == bridge.stats


class FakeBridge:
    client_id = "fake-bridge"
    protocol = None

    def __init__(self):
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.stats = {"received": 0, "accepted": 0, "rejected": 0, "published": 0}


@pytest.mark.django_db(transaction=True)  # beat() manages its connection like a bridge thread
def test_a_failed_beat_is_logged_and_does_not_stop_the_bridge(monkeypatch, caplog):
    def refuse(row):
        raise OperationalError("database is down")

    monkeypatch.setattr(heartbeat_module, "write_beat", refuse)
    assert Heartbeat(FakeBridge()).beat() is False
    assert "bridge heartbeat failed" in caplog.text
    monkeypatch.undo()
    assert Heartbeat(FakeBridge()).beat() is True
    assert row("fake-bridge").protocol == "3.1.1"


@pytest.mark.django_db(transaction=True)  # beat() manages its connection like a bridge thread
def test_rows_of_long_gone_bridges_are_pruned():
    now = timezone.now()
    for client_id, age in (("gone", timedelta(days=2)), ("recent", timedelta(hours=1))):
        write_beat(BridgeHeartbeat(client_id=client_id, started_at=now - age, last_beat_at=now - age))
    Heartbeat(FakeBridge()).beat()
    assert sorted(BridgeHeartbeat.objects.values_list("client_id", flat=True)) == ["fake-bridge", "recent"]


@pytest.mark.django_db(transaction=True)  # beat() manages its connection like a bridge thread
def test_the_heartbeat_loop_beats_until_stopped_then_once_more():
    bridge = FakeBridge()
    beats = Heartbeat(bridge, interval=0.05)
    thread = threading.Thread(target=beats.run)
    thread.start()
    wait_until(lambda: row("fake-bridge"), message="a first beat")
    bridge.stats["accepted"] = 7
    bridge.stopping.set()
    thread.join(5)
    assert not thread.is_alive()
    assert row("fake-bridge").stats["accepted"] == 7
