"""The bridge against a real broker and a real database."""

import json
import logging
import time

import pytest
from rest_framework.test import APIClient

from devices.models import Device
from devices.services import device_decommission
from iotcloud.testing import make_operator_client
from mqtt_bridge import topics
from mqtt_bridge.tests.conftest import BridgeProcess, wait_until
from twin.services import twin_update_desired


def published(device) -> bool:
    row = Device.objects.get(pk=device.pk)
    return row.desired_published_version == row.desired_version


def retained(mqtt_client, topic_filter: str, count: int, quiet: float = 1.0):
    """What a subscriber that connects now receives: the retained messages."""
    client = mqtt_client().subscribe(topic_filter)
    return {m.topic: m for m in client.collect(count=count, quiet=quiet)}


def test_desired_patch_reaches_a_later_subscriber_as_retained(start_bridge, provision, mqtt_client, mqtt_tenant):
    start_bridge()
    (device,) = provision(1)
    operator = make_operator_client(mqtt_tenant, f"op-{mqtt_tenant.id}")
    url = f"/customer/devices/{device.device_id}/twin/desired"
    operator.patch(url, {"desired": {"interval": 30}}, expect=200)
    operator.patch(url, {"desired": {"interval": 60}}, expect=200)
    wait_until(lambda: published(device), message="desired to be published")

    messages = retained(mqtt_client, topics.desired(mqtt_tenant.id, device.device_id), count=1)
    message = messages[topics.desired(mqtt_tenant.id, device.device_id)]
    assert message.retain
    body = json.loads(message.payload)
    assert body["desired"] == {"interval": 60} and body["version"] == 2
    assert body["timestamp"].endswith("Z")


def test_reported_over_mqtt_syncs_the_twin_and_never_rolls_back(start_bridge, provision, mqtt_client, mqtt_tenant):
    start_bridge()
    (device,) = provision(1)
    for n in range(3):
        twin_update_desired(device=device, document={"n": n})
    client = mqtt_client()
    topic = topics.reported(mqtt_tenant.id, device.device_id)
    client.publish(topic, json.dumps({"reported": {"n": 2}, "version": 3}))
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_version == 3, message="report to land")
    client.publish(topic, json.dumps({"reported": {"n": 0}, "version": 1}))  # late, older
    client.publish(topic, json.dumps({"reported": {"n": 2, "temp": 21}, "version": 3}))  # marker: processed after
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_state.get("temp") == 21, message="marker")

    operator = make_operator_client(mqtt_tenant, f"op-{mqtt_tenant.id}")
    twin = operator.get(f"/customer/devices/{device.device_id}/twin", expect=200).json()
    assert twin["reported_version"] == 3
    assert twin["sync_status"] == "synced"
    assert twin["reported"] == {"n": 2, "temp": 21}


def test_reports_in_one_batch_apply_the_newest(start_bridge, provision, mqtt_client, mqtt_tenant):
    bridge = start_bridge(batch_wait=0.3)
    (device,) = provision(1)
    for n in range(5):
        twin_update_desired(device=device, document={"n": n})
    client = mqtt_client()
    topic = topics.reported(mqtt_tenant.id, device.device_id)
    for version in (2, 5, 1, 4, 3):
        client.publish(topic, json.dumps({"reported": {"v": version}, "version": version}), qos=1)
    wait_until(lambda: bridge.stats["accepted"] >= 5, message="five reports")
    device.refresh_from_db()
    assert (device.reported_version, device.reported_state) == (5, {"v": 5})


def test_no_desired_update_is_lost_while_the_broker_is_down(restartable_broker, start_bridge, mqtt_tenant):
    from devices.services import device_provision

    bridge = start_bridge(broker=restartable_broker.settings)
    devices = [device_provision(tenant=mqtt_tenant, device_id=f"dev-{n}")[0] for n in range(10)]
    restartable_broker.stop()
    wait_until(lambda: not bridge.connected.is_set(), message="bridge to notice the outage")
    for round_ in range(5):
        for device in devices:
            twin_update_desired(device=device, document={"round": round_})  # 50 writes
    time.sleep(0.5)
    assert not any(published(d) for d in devices)
    restartable_broker.start()
    wait_until(lambda: all(published(d) for d in devices), timeout=40, message="catch-up after the outage")

    from mqtt_bridge.tests.conftest import MqttClient

    with MqttClient(restartable_broker.settings) as subscriber:
        subscriber.subscribe(f"tenant/{mqtt_tenant.id}/device/+/shadow/desired")
        got = {m.topic: json.loads(m.payload) for m in subscriber.collect(count=10, quiet=2)}
    assert len(got) == 10
    assert {body["version"] for body in got.values()} == {5}
    assert all(body["desired"] == {"round": 4} for body in got.values())


@pytest.mark.postgres
def test_sigkill_mid_stream_loses_no_report(mqtt_broker, provision, mqtt_tenant):
    devices = provision(150)
    bridge = BridgeProcess(mqtt_broker, client_id=f"test-kill-{mqtt_tenant.id}")
    bridge.start()
    from mqtt_bridge.tests.conftest import MqttClient, purge_session, reports_landed, stream_reports

    try:
        with MqttClient(mqtt_broker) as publisher:
            sender = stream_reports(publisher, mqtt_tenant.id, devices, 0.004)

            def landed():
                return reports_landed(mqtt_tenant)

            wait_until(lambda: landed() >= 30, message="some reports to land")
            bridge.kill()
            killed_at = landed()
            sender.join(30)
            assert killed_at < len(devices), "the stream ended before the kill; nothing was tested"
            bridge.start()
            wait_until(lambda: landed() == len(devices), timeout=40, message="every report after restart")
        for n, device in enumerate(devices):
            assert Device.objects.get(pk=device.pk).reported_state == {"seq": n}
        assert bridge.terminate() == 0  # SIGTERM: clean exit 0
    finally:
        if bridge.process and bridge.process.poll() is None:
            bridge.kill()
        purge_session(mqtt_broker, bridge.env["MQTT_CLIENT_ID"])


def test_sigterm_exits_zero(mqtt_broker, mqtt_tenant):
    bridge = BridgeProcess(mqtt_broker, client_id=f"test-term-{mqtt_tenant.id}")
    bridge.start()
    assert bridge.terminate() == 0
    assert "bridge stopped" in bridge.output()


def test_two_bridges_share_reports_and_split_desired(start_bridge, provision, mqtt_client, mqtt_tenant):
    group = f"g{mqtt_tenant.id}"
    first = start_bridge(shared_group=group)
    second = start_bridge(shared_group=group)
    devices = provision(40)
    watcher = mqtt_client().subscribe(f"tenant/{mqtt_tenant.id}/device/+/shadow/desired")
    for device in devices:
        twin_update_desired(device=device, document={"a": 1})
    wait_until(lambda: all(published(d) for d in devices), message="all published")
    assert first.stats["published"] + second.stats["published"] == len(devices)
    got = watcher.collect(count=len(devices) + 1, timeout=3, quiet=1)
    assert sorted(m.topic for m in got) == sorted(topics.desired(mqtt_tenant.id, d.device_id) for d in devices)

    publisher = mqtt_client()
    for device in devices:
        publisher.publish(
            topics.reported(mqtt_tenant.id, device.device_id), json.dumps({"reported": {"a": 1}, "version": 1})
        )
    wait_until(lambda: first.stats["accepted"] + second.stats["accepted"] >= len(devices), message="reports")
    time.sleep(0.5)
    assert first.stats["accepted"] + second.stats["accepted"] == len(devices)  # each applied once
    assert first.stats["accepted"] > 0 and second.stats["accepted"] > 0  # the load was split
    assert Device.objects.filter(tenant=mqtt_tenant, reported_version=1).count() == len(devices)


def test_bad_mqtt_input_is_dropped_logged_and_answered(start_bridge, provision, mqtt_client, mqtt_tenant, caplog):
    from devices.services import device_provision, tenant_create

    bridge = start_bridge()
    (device,) = provision(1)
    other_tenant = tenant_create(tenant_id=f"o-{mqtt_tenant.id}")
    foreign, _ = device_provision(tenant=other_tenant, device_id="foreign-1")
    twin_update_desired(device=device, document={"a": 1})
    wait_until(lambda: published(device), message="desired published")
    before = list(Device.objects.order_by("id").values())

    listener = mqtt_client().subscribe(topics.reported_rejected(mqtt_tenant.id, device.device_id))
    publisher = mqtt_client()
    mine = topics.reported(mqtt_tenant.id, device.device_id)
    bad = [
        (mine, b"{not json", "parse_error"),
        (mine, json.dumps({"reported": [1, 2], "version": 1}), "not_an_object"),
        (mine, json.dumps({"reported": {"a": 1}, "version": "1"}), "invalid_version"),
        (mine, json.dumps({"reported": {"a": "x" * 100_000}, "version": 1}), "too_large"),
        (mine, json.dumps({"reported": {"a": 1}, "version": 2}), "version_conflict"),
        (mine, json.dumps({"reported": {"a": 1}}), "invalid"),
        (topics.reported(mqtt_tenant.id, "ghost"), json.dumps({"reported": {}, "version": 0}), None),
        (topics.reported(mqtt_tenant.id, foreign.device_id), json.dumps({"reported": {}, "version": 0}), None),
        (mine + "/extra", json.dumps({"reported": {}, "version": 0}), None),
        (f"tenant/{mqtt_tenant.id}/device/{device.device_id}/x/shadow/reported", b"{}", None),
    ]
    with caplog.at_level(logging.WARNING, logger="mqtt_bridge"):
        for topic, payload, _ in bad:
            publisher.publish(topic, payload)
        answers = listener.collect(count=6, timeout=10)
        wait_until(lambda: bridge.stats["rejected"] >= 8, message="rejections")

    codes = [json.loads(m.payload)["code"] for m in answers]
    assert codes == [code for _, _, code in bad if code]
    conflict = json.loads(answers[4].payload)
    assert conflict["desired_version"] == 1
    logged = "\n".join(r.getMessage() for r in caplog.records if "report rejected" in r.getMessage())
    for code in ("parse_error", "not_an_object", "invalid_version", "too_large", "device_not_found"):
        assert f"code={code}" in logged
    assert list(Device.objects.order_by("id").values()) == before

    # Still running: a good report goes through.
    publisher.publish(mine, json.dumps({"reported": {"a": 1}, "version": 1}))
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_version == 1, message="good report")
    assert bridge.client.is_connected()


def test_decommission_clears_the_retained_desired_message(start_bridge, provision, mqtt_client, mqtt_tenant):
    start_bridge()
    (device,) = provision(1)
    twin_update_desired(device=device, document={"a": 1})
    wait_until(lambda: published(device), message="desired published")
    topic = topics.desired(mqtt_tenant.id, device.device_id)
    assert topic in retained(mqtt_client, topic, count=1)

    device_decommission(device=device)
    wait_until(lambda: published(device), message="retained message cleared")
    assert retained(mqtt_client, topic, count=1, quiet=1.0) == {}


def test_device_token_is_refused_after_decommission_over_http_too(provision, mqtt_tenant):
    (device,) = provision(1)
    device_decommission(device=device)
    client = APIClient()
    client.credentials(HTTP_X_PROVISION_TOKEN=device.token)
    assert client.get("/device/v1/shadow").status_code == 401
