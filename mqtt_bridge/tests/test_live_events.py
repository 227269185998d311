"""Reports ingested by the MQTT bridge reach operator screens (the websocket), in-process and across processes."""

import os
import uuid

import pytest
from asgiref.sync import sync_to_async

from iotcloud.tests.live_helpers import connect, next_event, run, session_headers, staff, subscribe
from mqtt_bridge import topics
from mqtt_bridge.tests.conftest import BridgeProcess


def report_over_mqtt(mqtt_client, tenant_id, device_id, reported, version):
    import json

    with mqtt_client() as client:
        client.publish(topics.reported(tenant_id, device_id), json.dumps({"reported": reported, "version": version}))


def test_a_report_over_mqtt_reaches_a_subscribed_operator(start_bridge, provision, mqtt_client, mqtt_tenant):
    """`make run`'s shape: the bridge is a thread of the web process (in-memory layer) or Redis carries it."""
    start_bridge()
    (device,) = provision(1)
    user = staff(mqtt_tenant, f"watcher-{uuid.uuid4().hex[:6]}")

    async def scenario():
        communicator, connected, _ = await connect(await sync_to_async(session_headers)(user))
        assert connected
        await subscribe(communicator, mqtt_tenant.id)
        await sync_to_async(report_over_mqtt)(mqtt_client, mqtt_tenant.id, device.device_id, {"rpm": 1200}, 0)
        event = await next_event(communicator, "twin.changed", timeout=10)
        assert event == {"type": "twin.changed", "tenant": mqtt_tenant.id, "devices": [device.device_id]}
        await communicator.disconnect()

    run(scenario)


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (events cross processes through Redis)")
def test_a_bridge_process_reaches_operators_through_redis(mqtt_broker, provision, mqtt_client, mqtt_tenant):
    """Production's shape: the bridge is its own process; its events reach this process's websocket via Redis."""
    (device,) = provision(1)
    user = staff(mqtt_tenant, f"watcher-{uuid.uuid4().hex[:6]}")
    bridge = BridgeProcess(mqtt_broker, client_id=f"test-bridge-{uuid.uuid4().hex[:8]}")
    bridge.start()
    try:

        async def scenario():
            communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
            await subscribe(communicator, mqtt_tenant.id)
            await sync_to_async(report_over_mqtt)(mqtt_client, mqtt_tenant.id, device.device_id, {"rpm": 1}, 0)
            event = await next_event(communicator, "twin.changed", timeout=10)
            assert event["devices"] == [device.device_id]
            await communicator.disconnect()

        run(scenario)
    finally:
        assert bridge.terminate() == 0, bridge.output()
