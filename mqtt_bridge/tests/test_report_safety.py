"""Reports the bridge must not apply: retained ones (replayed by the broker on every reconnect)
and those over a device's MQTT report rate. Both are answered on .../reported/rejected."""

from __future__ import annotations

import json

import pytest

from devices.models import Device
from mqtt_bridge import topics
from mqtt_bridge.tests.conftest import wait_until
from twin.services import twin_update_desired


def rejections(client, count, timeout=10):
    return [json.loads(m.payload) for m in client.collect(count=count, timeout=timeout)]


def test_a_retained_report_replayed_at_connect_is_not_applied_and_is_cleared(
    start_bridge, provision, mqtt_client, mqtt_tenant
):
    """The review's finding 4: an old (or planted, pre-rotation) retained report overwrote newer
    state and refreshed last_seen each time the bridge reconnected."""
    (device,) = provision(1)
    twin_update_desired(device=device, document={"led": "on"})
    topic = topics.reported(mqtt_tenant.id, device.device_id)
    answers = mqtt_client().subscribe(topics.reported_rejected(mqtt_tenant.id, device.device_id))
    mqtt_client().publish(topic, json.dumps({"reported": {"planted": True}, "version": 1}), retain=True)

    bridge = start_bridge()
    (answer,) = rejections(answers, 1)
    assert answer["code"] == "retained_report" and "retain" in answer["detail"]
    wait_until(lambda: bridge.stats["retained"] == 1, message="the bridge to count it")
    row = Device.objects.get(pk=device.pk)
    assert (row.reported_state, row.reported_version, row.last_seen) == ({}, 0, None)
    # The broker's copy is gone: a new subscriber gets nothing retained.
    late = mqtt_client().subscribe(topic)
    assert [m for m in late.collect(quiet=1.0) if m.payload] == []

    # A normal report still goes through.
    mqtt_client().publish(topic, json.dumps({"reported": {"led": "on"}, "version": 1}))
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_version == 1, message="the live report")


def test_a_report_published_with_the_retain_flag_is_refused_at_once(
    start_bridge, provision, mqtt_client, mqtt_tenant, mqtt_broker
):
    if mqtt_broker.embedded:
        pytest.skip("the embedded broker never keeps a device's retained message (test_embedded covers it)")
    bridge = start_bridge()
    if bridge.protocol != 5:
        pytest.skip("needs MQTT 5 (retain-as-published) to see the flag on a live message")
    (device,) = provision(1)
    topic = topics.reported(mqtt_tenant.id, device.device_id)
    answers = mqtt_client().subscribe(topics.reported_rejected(mqtt_tenant.id, device.device_id))
    mqtt_client().publish(topic, json.dumps({"reported": {"x": 1}, "version": 0}), retain=True)
    (answer,) = rejections(answers, 1)
    assert answer["code"] == "retained_report"
    assert Device.objects.get(pk=device.pk).last_seen is None
    late = mqtt_client().subscribe(topic)
    assert [m for m in late.collect(quiet=1.0) if m.payload] == []


def test_reports_over_the_devices_rate_are_dropped_and_answered(
    settings, start_bridge, provision, mqtt_client, mqtt_tenant
):
    settings.MQTT_REPORT_RATE_LIMIT, settings.MQTT_REPORT_RATE_BURST = "3/m", 0
    bridge = start_bridge(batch_wait=0.3)
    flood, calm = provision(2)
    answers = mqtt_client().subscribe(topics.reported_rejected(mqtt_tenant.id, flood.device_id))
    publisher = mqtt_client()
    for n in range(6):
        publisher.publish(
            topics.reported(mqtt_tenant.id, flood.device_id), json.dumps({"reported": {"n": n}, "version": 0})
        )
    publisher.publish(
        topics.reported(mqtt_tenant.id, calm.device_id), json.dumps({"reported": {"ok": 1}, "version": 0})
    )

    got = rejections(answers, 3)
    assert [a["code"] for a in got] == ["rate_limited"] * 3
    assert "3 reports per minute per device" in got[0]["detail"] and got[0]["limit"] == "3/m"
    wait_until(lambda: bridge.stats["rate_limited"] == 3, message="three dropped")
    assert Device.objects.get(pk=flood.pk).reported_state == {"n": 2}  # the first three only
    assert Device.objects.get(pk=calm.pk).reported_state == {"ok": 1}  # another device: not affected
    assert answers.collect(quiet=0.5) == []
