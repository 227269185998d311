"""The shadow service over MQTT with a plain paho device: native topics and the AWS IoT dialect.

Real broker (MQTT_URL's, else the embedded one) and the real bridge; every answer is checked
against the database, and every refusal leaves the database as it was.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.choices import DesiredWrites
from devices.models import Device
from mqtt_bridge import bridge as bridge_module
from mqtt_bridge import topics
from mqtt_bridge.delivery import shadow_events_deliver_pending
from mqtt_bridge.tests.conftest import wait_until
from twin.engine import CLASSIC, ShadowChange, leased_events, shadow_apply
from twin.models import NamedShadow, ShadowEvent
from twin.services import twin_update_desired

NATIVE, AWS = topics.NATIVE, topics.AWS


class Device_:
    """A device on one dialect: publish a request, read its answer (accepted or rejected)."""

    def __init__(self, mqtt_client, device, dialect: str, shadow: str = CLASSIC):
        self.device, self.dialect, self.shadow = device, dialect, shadow
        self.client = mqtt_client()
        self.client.subscribe(topics.device_own(dialect, device.tenant_id, device.device_id))

    def topic(self, suffix: str, shadow: str | None = None) -> str:
        name = self.shadow if shadow is None else shadow
        return topics.shadow_topic(self.dialect, self.device.tenant_id, self.device.device_id, name, suffix)

    def ask(self, operation: str, body=None, *, shadow: str | None = None, raw: bytes | None = None):
        """(outcome, payload) of the answer to one request."""
        request = self.topic(operation, shadow)
        payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.client.publish(request, payload)
        while True:
            (message,) = self.client.collect(count=1, timeout=10) or [None]
            assert message is not None, f"no answer to {request}"
            if message.topic in (f"{request}/accepted", f"{request}/rejected"):
                return message.topic.rsplit("/", 1)[1], json.loads(message.payload)

    def next_on(self, suffix: str, shadow: str | None = None, timeout: float = 10) -> dict:
        wanted = self.topic(suffix, shadow)
        while True:
            (message,) = self.client.collect(count=1, timeout=timeout) or [None]
            assert message is not None, f"nothing on {wanted}"
            if message.topic == wanted:
                return json.loads(message.payload)

    def quiet(self, seconds: float = 0.5):
        return self.client.collect(timeout=seconds, quiet=seconds)


@pytest.fixture
def bridge(start_bridge):
    return start_bridge()


@pytest.fixture
def one(provision):
    (device,) = provision(1)
    return device


def state(device) -> dict:
    row = Device.objects.get(pk=device.pk)
    return {
        "desired": row.desired_state, "reported": row.reported_state, "desired_version": row.desired_version,
        "reported_version": row.reported_version, "version": row.shadow_version,
    }  # fmt: skip


@pytest.mark.parametrize("dialect", [NATIVE, AWS])
def test_get_update_delta_documents_round_trip(dialect, bridge, one, mqtt_client):
    device = Device_(mqtt_client, one, dialect)
    outcome, got = device.ask("get", {"clientToken": "g1"})
    assert outcome == "accepted" and got["clientToken"] == "g1"
    assert got["state"] == {"desired": {}, "reported": {}} and got["version"] == 0
    assert isinstance(got["timestamp"], int)

    twin_update_desired(device=one, document={"mode": "eco", "fan": {"speed": 3}})
    delta = device.next_on("update/delta")
    assert delta["state"] == {"mode": "eco", "fan": {"speed": 3}} and delta["version"] == 1
    assert set(delta["metadata"]) == {"mode", "fan"} and "timestamp" in delta["metadata"]["fan"]["speed"]

    # A partial report: only what changed, null deletes a key.
    outcome, got = device.ask("update", {"state": {"reported": {"mode": "eco", "rssi": -60}}, "clientToken": "u1"})
    assert outcome == "accepted", got
    assert got["state"] == {"reported": {"mode": "eco", "rssi": -60}} and got["version"] == 2
    assert got["clientToken"] == "u1" and set(got["metadata"]["reported"]) == {"mode", "rssi"}
    documents = device.next_on("update/documents")
    assert documents["previous"]["version"] == 1 and documents["current"]["version"] == 2
    assert documents["previous"]["state"]["reported"] == {}
    assert documents["current"]["state"]["reported"] == {"mode": "eco", "rssi": -60}
    assert documents["clientToken"] == "u1"

    outcome, got = device.ask("update", {"state": {"reported": {"rssi": None, "fan": {"speed": 3}}}, "version": 2})
    assert outcome == "accepted" and got["version"] == 3
    assert state(one) == {"desired": {"mode": "eco", "fan": {"speed": 3}}, "reported": {"mode": "eco",
                          "fan": {"speed": 3}}, "desired_version": 1, "reported_version": 1, "version": 3}  # fmt: skip

    outcome, got = device.ask("get")
    assert outcome == "accepted" and "delta" not in got["state"] and got["version"] == 3
    assert set(got["metadata"]["reported"]) == {"mode", "fan"}
    if dialect == NATIVE:
        assert got["desired_version"] == 1 and got["reported_version"] == 1


@pytest.mark.parametrize("dialect", [NATIVE, AWS])
def test_refusals_name_the_problem_and_change_nothing(dialect, bridge, one, mqtt_client):
    device = Device_(mqtt_client, one, dialect)
    twin_update_desired(device=one, document={"a": 1})
    before = state(one)
    big = {"state": {"reported": {"blob": "x" * 9000}}}
    cases = [
        (b"{not json", 400, "parse_error"),
        (json.dumps([1, 2]).encode(), 400, "invalid"),
        (json.dumps({"state": "on"}).encode(), 400, "invalid_state"),
        (json.dumps({"state": {"reported": [1]}}).encode(), 400, "invalid_state"),
        (json.dumps({"state": {"colour": {}}}).encode(), 400, "invalid_state"),
        (json.dumps({}).encode(), 400, "invalid_state"),
        (json.dumps({"state": {"reported": {"a": 1}}, "version": "1"}).encode(), 400, "invalid_version"),
        (json.dumps({"state": {"reported": {"a": 1}}, "version": 0}).encode(), 409, "version_conflict"),
        (json.dumps({"state": {"reported": {"a": 1}}, "clientToken": "x" * 65}).encode(), 400, "invalid_client_token"),
        (json.dumps({"state": {"reported": {"a": 1}}, "extra": 1}).encode(), 400, "invalid"),
        (json.dumps({"state": {"desired": {"a": 2}}}).encode(), 403, "desired_write_forbidden"),
        (json.dumps(big).encode(), 413, "too_large"),
        (
            json.dumps({"state": {"reported": {"deep": {"a": {"b": {"c": {"d": {"e": {}}}}}}}}}).encode(),
            400,
            "too_deep",
        ),
        ("\ud800".encode("utf-8", "surrogatepass"), 400, "parse_error"),
    ]
    for raw, status, code in cases:
        outcome, got = device.ask("update", raw=raw)
        assert outcome == "rejected", (raw[:60], got)
        if dialect == AWS:
            assert got["code"] == status, (raw[:60], got)
            assert got["message"]
        else:
            assert (got["status"], got["code"]) == (status, code), (raw[:60], got)
            assert got["detail"]
    outcome, got = device.ask("update", {"state": {"reported": {"a": 1}}, "version": 0, "clientToken": "c"})
    assert outcome == "rejected" and got["clientToken"] == "c"  # the token is echoed in rejections too
    for name in ("bad.name", "$reserved", "x" * 65):
        outcome, got = device.ask("get", shadow=name)
        assert outcome == "rejected" and (
            got["code"] == 400 if dialect == AWS else got["code"] == "invalid_shadow_name"
        )
    outcome, got = device.ask("get", shadow="missing")
    assert outcome == "rejected" and (got["code"] == 404 if dialect == AWS else got["code"] == "shadow_not_found")
    outcome, got = device.ask("delete", shadow="missing")
    assert outcome == "rejected"
    assert state(one) == before
    assert not NamedShadow.objects.filter(device=one).exists()
    assert bridge.stopping.is_set() is False


def test_messages_nobody_can_be_told_about_are_dropped_and_logged(bridge, one, mqtt_client, caplog):
    client = mqtt_client()
    t = one.tenant_id
    before = state(one)
    client.publish(f"$aws/things/{t}:ghost/shadow/update", b'{"state": {"reported": {"a": 1}}}')  # unknown thing
    client.publish("$aws/things/no-colon/shadow/get", b"")  # names no device at all
    client.publish(f"$aws/things/other-tenant:{one.device_id}/shadow/get", b"")  # same id, another tenant
    client.publish(f"tenant/{t}/device/{one.device_id}/shadow/update/extra", b"{}")  # extra level: not a request
    client.publish(topics.reported(t, one.device_id), json.dumps({"reported": {"ok": 1}, "version": 0}))
    wait_until(lambda: state(one)["reported"] == {"ok": 1}, message="the report after them")  # still running
    # Logged once the batch committed (the report's row may be seen a moment before the line).
    wait_until(lambda: "No active device for thing" in caplog.text, message="the drops logged")
    assert "code=device_not_found" in caplog.text
    assert state(one)["desired"] == before["desired"]


def test_named_shadow_end_to_end(bridge, one, mqtt_client):
    device = Device_(mqtt_client, one, NATIVE, shadow="firmware")
    aws = Device_(mqtt_client, one, AWS, shadow="firmware")
    outcome, got = device.ask("update", {"state": {"reported": {"version": "1.0"}}})
    assert outcome == "accepted" and got["version"] == 1
    row = NamedShadow.objects.get(device=one, name="firmware")
    assert row.reported_state == {"version": "1.0"} and row.shadow_version == 1
    assert state(one)["version"] == 0  # the classic shadow is another document

    from twin.engine import ShadowChange, shadow_apply

    (result,) = shadow_apply([ShadowChange(one.tenant_id, one.device_id, "firmware", desired={"version": "2.0"})])
    assert result.error is None
    assert aws.next_on("update/delta")["state"] == {"version": "2.0"}
    # Beside the seed's shadow/desired, a named shadow's desired state is retained on the native tree.
    retained = topics.named_desired(one.tenant_id, one.device_id, "firmware")
    late = mqtt_client().subscribe(retained)
    (message,) = late.collect(count=1)
    assert json.loads(message.payload)["desired"] == {"version": "2.0"} and message.retain
    outcome, got = aws.ask("get")
    assert outcome == "accepted" and got["state"]["delta"] == {"version": "2.0"} and got["version"] == 2

    outcome, got = device.ask("delete", {"clientToken": "d"})
    assert outcome == "accepted" and got["version"] == 3 and got["clientToken"] == "d"
    outcome, got = aws.ask("get")
    assert outcome == "rejected" and got["code"] == 404
    wait_until(lambda: NamedShadow.objects.get(device=one, name="firmware").desired_published_version == 2,
               message="the deleted shadow's retained desired cleared")  # fmt: skip
    assert [m for m in mqtt_client().subscribe(retained).collect(timeout=1, quiet=1) if m.payload] == []
    outcome, got = aws.ask("update", {"state": {"reported": {"version": "2.0"}}})
    assert outcome == "accepted" and got["version"] == 4  # AWS IoT: a deleted shadow's version goes on


def test_device_desired_writes_follow_the_tenant_setting(bridge, one, mqtt_client):
    device = Device_(mqtt_client, one, AWS)
    tenant = one.tenant
    tenant.device_desired_writes = DesiredWrites.VERSIONED
    tenant.save()
    outcome, got = device.ask("update", {"state": {"desired": {"led": "on"}}})
    assert outcome == "rejected" and got["code"] == 400  # must carry the version
    twin_update_desired(device=one, document={"led": "off", "level": 2})  # the operator's newer desired
    outcome, got = device.ask("update", {"state": {"desired": {"led": "on"}}, "version": 0})
    assert outcome == "rejected" and got["code"] == 409  # it never overwrites what it did not see
    outcome, got = device.ask("update", {"state": {"desired": {"led": "on"}}, "version": 1})
    assert outcome == "accepted", got
    assert state(one)["desired"] == {"led": "on", "level": 2} and state(one)["desired_version"] == 2

    tenant.device_desired_writes = DesiredWrites.ALLOW
    tenant.save()
    outcome, got = device.ask("update", {"state": {"desired": {"level": None}, "reported": {"led": "on"}}})
    assert outcome == "accepted", got
    assert state(one)["desired"] == {"led": "on"} and state(one)["reported_version"] == 3  # in step: no delta


def test_retained_requests_are_refused_and_cleared(start_bridge, one, mqtt_client):
    """A retained request would be replayed to the bridge on every reconnect: never applied, cleared."""
    device = Device_(mqtt_client, one, NATIVE)
    request = device.topic("update")
    mqtt_client().publish(request, json.dumps({"state": {"reported": {"a": 1}}, "clientToken": "r"}), retain=True)
    bridge = start_bridge()
    outcome, answer = device.ask("get")  # the replayed one was answered first, in arrival order
    wait_until(lambda: bridge.stats["retained"] >= 1, message="the retained request refused")
    assert outcome == "accepted" and answer["state"]["reported"] == {}
    late = mqtt_client().subscribe(request)
    assert [m for m in late.collect(timeout=1, quiet=1) if m.payload] == []  # the broker's copy is gone
    assert state(one)["reported"] == {} and state(one)["version"] == 0


def test_shadow_events_wait_for_the_bridge(transactional_db, one, start_bridge, mqtt_client):
    twin_update_desired(device=one, document={"a": 1})  # no bridge yet: the event waits in the outbox
    assert ShadowEvent.objects.filter(device=one).count() == 1
    device = Device_(mqtt_client, one, AWS)
    start_bridge()
    assert device.next_on("update/delta")["state"] == {"a": 1}
    wait_until(lambda: not ShadowEvent.objects.filter(device=one).exists(), message="the event published")


def test_a_batch_publishes_its_own_events_without_the_delivery_loop(monkeypatch, start_bridge, one, mqtt_client):
    """The events of the bridge's own batch go out right behind the answer (leased to it: the delivery
    loop is not involved), and leave the outbox once acknowledged."""
    by_delivery_loop = []

    def counted(**kwargs):
        by_delivery_loop.append(shadow_events_deliver_pending(**kwargs))
        return by_delivery_loop[-1]

    monkeypatch.setattr(bridge_module, "DELIVERIES", (*bridge_module.DELIVERIES[:-1], counted))
    start_bridge()
    native, aws = Device_(mqtt_client, one, NATIVE), Device_(mqtt_client, one, AWS)
    twin_update_desired(device=one, document={"led": "on"})
    native.next_on("update/delta")  # the operator's event: the delivery loop's (woken by the write)
    outcome, _ = native.ask("update", {"state": {"reported": {"led": "off"}}, "clientToken": "own"})
    assert outcome == "accepted"
    for device in (native, aws):  # both dialects (past the operator's events)
        while (documents := device.next_on("update/documents")).get("clientToken") != "own":
            pass
        assert documents["current"]["state"]["reported"] == {"led": "off"}
        while (delta := device.next_on("update/delta")).get("clientToken") != "own":
            pass
        assert delta["state"] == {"led": "on"}  # the report touched a field that still differs
    wait_until(lambda: not ShadowEvent.objects.filter(device=one).exists(), message="the events forgotten")
    assert [m.topic for m in native.quiet() if m.topic.endswith("update/documents")] == []  # no second copy
    assert sum(by_delivery_loop) == 1  # the operator's event only


def test_leased_events_wait_for_their_lease_to_end(db, one):
    """An event leased to the bridge that made it is not the delivery loop's until the lease ends
    (the bridge died, or the broker never acknowledged it): then any bridge publishes it."""
    published = []

    def publish(publications):
        published.extend(publications)
        return publications

    with leased_events(30) as leased:
        results = shadow_apply([ShadowChange(one.tenant_id, one.device_id, reported={"a": 1}, by_device=True)])
    assert results[0].error is None and [e.device_id for e in leased] == [one.device_id]
    (event,) = ShadowEvent.objects.filter(device=one)
    assert event.pk == leased[0].pk and event.leased_until is not None
    assert shadow_events_deliver_pending(publish=publish) == 0 and published == []
    ShadowEvent.objects.filter(pk=event.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
    assert shadow_events_deliver_pending(publish=publish) == 1
    assert {p.topic.rsplit("/", 1)[1] for p in published} == {"documents"} and len(published) == 2  # 2 dialects
    assert not ShadowEvent.objects.exists()


def test_a_dialect_can_be_turned_off(settings, start_bridge, one, mqtt_client):
    settings.MQTT_DIALECTS = ["native"]
    start_bridge()
    aws, native = Device_(mqtt_client, one, AWS), Device_(mqtt_client, one, NATIVE)
    aws.client.publish(aws.topic("get"), b"")
    assert native.ask("get")[0] == "accepted"
    twin_update_desired(device=one, document={"a": 1})
    assert native.next_on("update/delta")["state"] == {"a": 1}
    assert [m.topic for m in aws.quiet(1.0) if m.topic != aws.topic("get")] == []  # no answer, no delta


@pytest.mark.django_db
def test_requests_of_one_batch_are_answered_in_arrival_order(tenant, make_device):
    from mqtt_bridge.shadow_api import handle_shadow_requests

    device = make_device(tenant, "d1")

    def request(operation: str, body: dict | None = None):
        topic = topics.shadow_topic(AWS, tenant.id, "d1", CLASSIC, operation)
        return topics.parse_request(topic), device, json.dumps(body).encode() if body else b""

    update = {"state": {"reported": {"a": 1}}}
    replies = handle_shadow_requests([request("get"), request("update", update), request("get"),
                                      request("update", {**update, "version": 0}), request("get")])  # fmt: skip
    bodies = [(r.topic.rsplit("/", 1)[1], json.loads(r.payload)) for r in replies]
    assert [(outcome, body.get("version")) for outcome, body in bodies] == [
        ("accepted", 0), ("accepted", 1), ("accepted", 1), ("rejected", None), ("accepted", 1)]  # fmt: skip
    assert bodies[0][1]["state"]["reported"] == {} and bodies[2][1]["state"]["reported"] == {"a": 1}
    assert bodies[3][1]["code"] == 409 and "desired_version" not in bodies[2][1]
