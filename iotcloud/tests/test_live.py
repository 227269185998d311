"""The operator websocket (/ws/live): who may subscribe, and that committed changes reach subscribers.

Driven through the real ASGI application (session cookie auth, origin check)
with Channels' WebsocketCommunicator; changes are made through the HTTP API
and the services, the way devices, operators and the bridge make them.
"""

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from devices.choices import Role
from devices.services import device_provision
from iotcloud.testing import device_client, make_operator_client
from iotcloud.tests.live_helpers import connect, next_event, run, session_headers, staff, subscribe
from jobs.services import execution_update, job_create
from twin.services import Report, twin_record_reports

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads the database from its own thread


def test_a_device_report_over_http_reaches_a_subscribed_operator(tenant):
    user = staff(tenant, "watcher")
    device, token = device_provision(tenant=tenant, device_id="pump-1")
    device.token = token

    async def scenario():
        communicator, connected, _ = await connect(await sync_to_async(session_headers)(user))
        assert connected
        assert await subscribe(communicator, "acme") == {"type": "subscribed", "tenants": ["acme"]}
        await sync_to_async(device_client(device).post)(
            "/device/v1/shadow/reported", {"reported": {"rpm": 900}, "version": 0}, expect=200
        )
        event = await next_event(communicator, "twin.changed")
        assert event == {"type": "twin.changed", "tenant": "acme", "devices": ["pump-1"]}
        await communicator.disconnect()

    run(scenario)


def test_operator_api_desired_change_and_bridge_batches_are_announced(tenant):
    user = staff(tenant, "watcher")
    device_provision(tenant=tenant, device_id="pump-1")
    device_provision(tenant=tenant, device_id="pump-2")
    operator = make_operator_client(tenant, "writer")

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
        await subscribe(communicator, ["acme"])
        await sync_to_async(operator.patch)(
            "/customer/devices/pump-1/twin/desired", {"desired": {"led": "on"}}, expect=200
        )
        assert (await next_event(communicator, "twin.changed"))["devices"] == ["pump-1"]
        # The bridge's path: one event for the whole batch.
        reports = [Report("acme", "pump-1", {"led": "on"}, 1), Report("acme", "pump-2", {"led": "off"}, 0)]
        await sync_to_async(twin_record_reports)(reports)
        assert (await next_event(communicator, "twin.changed"))["devices"] == ["pump-1", "pump-2"]
        await communicator.disconnect()

    run(scenario)


def test_a_refused_write_sends_nothing(tenant):
    user = staff(tenant, "watcher")
    device_provision(tenant=tenant, device_id="pump-1")
    operator = make_operator_client(tenant, "writer")

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
        await subscribe(communicator, "acme")
        await sync_to_async(operator.patch)(
            "/customer/devices/pump-1/twin/desired", {"desired": {"a": 1}, "expected_version": 5}, expect=409
        )
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_job_progress_is_announced(tenant):
    user = staff(tenant, "watcher")
    device, _token = device_provision(tenant=tenant, device_id="pump-1")

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
        await subscribe(communicator, "acme")
        await sync_to_async(job_create)(tenant=tenant, job_id="fw-1", document_type="update", device_ids=["pump-1"])
        assert (await next_event(communicator, "jobs.changed"))["jobs"] == ["fw-1"]
        await sync_to_async(execution_update)(device=device, job_id="fw-1", status="IN_PROGRESS")
        assert (await next_event(communicator, "jobs.changed"))["jobs"] == ["fw-1"]
        await communicator.disconnect()

    run(scenario)


def test_another_tenants_operator_cannot_subscribe(tenant, other_tenant):
    intruder = staff(other_tenant, "intruder")

    async def scenario():
        communicator, connected, _ = await connect(await sync_to_async(session_headers)(intruder))
        assert connected
        answer = await subscribe(communicator, ["globex", "acme"])
        assert answer["type"] == "error" and "acme" in answer["detail"]
        assert (await communicator.receive_output(timeout=5))["code"] == 4403
        await communicator.disconnect()

    run(scenario)


def test_events_of_other_tenants_are_not_delivered(tenant, other_tenant):
    watcher = staff(other_tenant, "globex-watcher")
    device_provision(tenant=tenant, device_id="pump-1")
    operator = make_operator_client(tenant, "writer")

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(watcher))
        await subscribe(communicator, "globex")
        await sync_to_async(operator.patch)("/customer/devices/pump-1/twin/desired", {"desired": {"a": 1}}, expect=200)
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_superuser_may_watch_existing_tenants_only(tenant, other_tenant):
    root = staff(None, "root", superuser=True)

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(root))
        assert (await subscribe(communicator, ["acme", "globex"]))["tenants"] == ["acme", "globex"]
        for bad in ["bad\x00id", "Upper/Case", "x" * 100]:  # not tenant ids: explained, nothing looked up
            assert "tenant ids" in (await subscribe(communicator, bad))["detail"]
        assert (await subscribe(communicator, "nope"))["type"] == "error"  # unknown: refused (and closed)
        await communicator.disconnect()

    run(scenario)


def test_anonymous_and_non_staff_connections_are_closed(tenant):
    from django.contrib.auth import get_user_model

    plain = get_user_model().objects.create_user("plain", password="pw-123456789")

    async def scenario():
        _, connected, code = await connect([(b"origin", b"http://testserver"), (b"host", b"testserver")])
        assert not connected and code == 4401
        _, connected, code = await connect(await sync_to_async(session_headers)(plain))
        assert not connected and code == 4401

    run(scenario)


def test_a_foreign_or_missing_origin_is_refused(tenant):
    user = staff(tenant, "watcher", role=Role.VIEWER)

    async def scenario():
        headers = [h for h in await sync_to_async(session_headers)(user) if h[0] != b"origin"]
        _, connected, _ = await connect([*headers, (b"origin", b"http://evil.example")])
        assert not connected
        _, connected, _ = await connect(headers)
        assert not connected
        _, connected, _ = await connect([*headers, (b"origin", b"http://testserver")])
        assert connected

    run(scenario)


def test_malformed_subscriptions_get_an_explanation(tenant):
    user = staff(tenant, "watcher")

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
        for bad in [{}, {"subscribe": 3}, {"subscribe": []}, {"subscribe": ["x"] * 101}, ["acme"]]:
            await communicator.send_json_to(bad)
            answer = await communicator.receive_json_from(timeout=5)
            assert answer["type"] == "error" and "subscribe" in answer["detail"]
        for raw in [{"text_data": "{not json"}, {"bytes_data": b"\x00\x01"}]:
            await communicator.send_to(**raw)
            answer = await communicator.receive_json_from(timeout=5)
            assert answer["type"] == "error" and "JSON" in answer["detail"]
        assert (await subscribe(communicator, "acme"))["type"] == "subscribed"  # still open
        await communicator.disconnect()

    run(scenario)


def test_events_from_a_plain_thread_reach_the_servers_loop(tenant):
    """The bridge runs in its own thread in `make run`: its events must wake the web server's loop at once."""
    import threading
    import time

    from django.db import connection

    user = staff(tenant, "watcher")
    device_provision(tenant=tenant, device_id="pump-1")
    done = threading.Event()

    def bridge_batch():  # like the bridge: not a sync_to_async thread, so async_to_sync makes its own loop
        try:
            twin_record_reports([Report("acme", "pump-1", {"on": True}, 0)])
        finally:
            connection.close()
            done.wait(5)  # stays alive: its exit must not be what wakes the server's loop

    async def scenario():
        communicator, _, _ = await connect(await sync_to_async(session_headers)(user))
        await subscribe(communicator, "acme")
        thread = threading.Thread(target=bridge_batch)
        started = time.monotonic()
        thread.start()
        try:
            assert (await next_event(communicator, "twin.changed", timeout=3))["devices"] == ["pump-1"]
            assert time.monotonic() - started < 1.5
        finally:
            done.set()
            await sync_to_async(thread.join)()
        await communicator.disconnect()

    run(scenario)


def test_without_listeners_the_in_memory_layer_is_not_called(monkeypatch):
    """Gunicorn workers and bridges without Redis have no websocket consumers: sending would be pure overhead."""
    from iotcloud.live import events
    from iotcloud.live.layers import ThreadSafeInMemoryChannelLayer

    layer = ThreadSafeInMemoryChannelLayer()
    sent = []

    async def group_send(group, message):
        sent.append(group)

    monkeypatch.setattr(layer, "group_send", group_send)
    monkeypatch.setattr(events, "get_channel_layer", lambda: layer)
    events._send(events.tenant_group("acme"), {"type": events.TWIN_CHANGED, "devices": ["x"]})
    assert sent == []
    async_to_sync(layer.group_add)(events.tenant_group("acme"), "specific.inmemory!abc")
    events._send(events.tenant_group("acme"), {"type": events.TWIN_CHANGED, "devices": ["x"]})
    assert sent == ["tenant.acme"]


def test_the_sweeper_announces_the_jobs_it_closed(tenant, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from iotcloud.live import events
    from jobs.models import JobExecution
    from jobs.services import job_sweep

    device, _ = device_provision(tenant=tenant, device_id="pump-1")
    device_provision(tenant=tenant, device_id="pump-2")
    job_create(tenant=tenant, job_id="slow", document_type="x", device_ids=["pump-1"], in_progress_timeout_seconds=60)
    job_create(tenant=tenant, job_id="calm", document_type="x", device_ids=["pump-2"])
    execution_update(device=device, job_id="slow", status="IN_PROGRESS")
    JobExecution.objects.filter(job__job_id="slow").update(started_at=timezone.now() - timedelta(minutes=5))
    sent = []
    monkeypatch.setattr(events, "_send", lambda group, message: sent.append((group, message)))
    assert job_sweep() == {"timed_out": 1, "expired": 0}
    assert sent == [("tenant.acme", {"type": "jobs.changed", "tenant": "acme", "jobs": ["slow"]})]
