"""Per-device broker credentials and topic ACLs on a real Mosquitto with the dynamic security plugin,
and the HTTP auth/ACL hooks for EMQX-style brokers, which must give the same answers.

The test starts its own Mosquitto (spare loopback port, dynamic security on, the bridge as its
admin); the bridge keeps device accounts in step with provisioning, rotation and decommission.
"""

from __future__ import annotations

import importlib
import json
import queue
import time
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command
from django.test import Client

from devices.models import Device
from devices.services import device_decommission, device_rotate_token
from mqtt_bridge import topics
from mqtt_bridge.accounts import acl, dynsec
from mqtt_bridge.tests.conftest import wait_until
from twin.services import twin_update_desired

HOOK_TOKEN = "hook-secret-for-tests"


@pytest.fixture
def managed(settings, dynsec_broker, start_bridge):
    """Dynamic security on, a bridge managing accounts on the test's Mosquitto."""
    settings.MQTT_DEVICE_AUTH = "dynsec"
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    settings.MQTT_URL = (
        f"mqtt://{dynsec_broker.USER}:{dynsec_broker.password}@127.0.0.1:{dynsec_broker.port}?protocol=5"
    )
    bridge = start_bridge(broker=dynsec_broker.settings)
    return bridge


def synced(*devices):
    def check():
        rows = Device.objects.filter(pk__in=[d.pk for d in devices]).values_list(
            "broker_account_version", "broker_synced_version", "broker_secret"
        )
        return all(version == done and not secret for version, done, secret in rows)

    wait_until(check, timeout=15, message="the bridge to apply the broker accounts")


class DeviceSession:
    """A device's own MQTT 5 connection."""

    def __init__(self, broker, tenant_id, device_id, token, *, client_id=None, clean=True):
        self.messages: queue.Queue = queue.Queue()
        self.suback: queue.Queue = queue.Queue()
        self.puback: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=acl.device_client_id(tenant_id, device_id) if client_id is None else client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(acl.device_username(tenant_id, device_id), token)
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.client.reconnect_delay_set(60, 60)  # a refused session stays refused within the test
        self.clean = clean
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.suback.put(codes)
        self.client.on_publish = lambda c, u, mid, rc, p: self.puback.put(rc)
        self.client.connect_async(
            broker.host, broker.port, clean_start=clean,
            properties=None if clean else _expiry(3600),
        )  # fmt: skip
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)

    @property
    def connected(self) -> bool:
        return not self.reason.is_failure

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=1)
        (code,) = self.suback.get(timeout=10)
        return code

    def publish(self, topic, body):
        self.client.publish(topic, json.dumps(body), qos=1)
        return self.puback.get(timeout=10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _expiry(seconds):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = seconds
    return properties


@pytest.fixture
def sessions():
    opened = []

    def open_(*args, **kwargs):
        session = DeviceSession(*args, **kwargs)
        opened.append(session)
        return session

    yield open_
    for session in opened:
        session.close()


def test_a_device_uses_its_own_topics_and_nobody_elses(managed, dynsec_broker, provision, mqtt_tenant, sessions):
    a, b = provision(2)
    synced(a, b)
    twin_update_desired(device=a, document={"led": "on"})
    device = sessions(dynsec_broker.settings, mqtt_tenant.id, a.device_id, a.token)
    assert device.connected, device.reason

    # Its own desired state: allowed, and the retained message arrives.
    assert not device.subscribe(topics.desired(mqtt_tenant.id, a.device_id)).is_failure
    message = device.messages.get(timeout=10)
    assert json.loads(message.payload)["desired"] == {"led": "on"}
    # Someone else's: refused by the broker.
    assert device.subscribe(topics.desired(mqtt_tenant.id, b.device_id)).is_failure
    assert device.subscribe(f"tenant/{mqtt_tenant.id}/device/+/shadow/desired").is_failure

    # Its own report goes through the bridge; a report to B's topic is refused and B is unchanged.
    accepted = device.publish(topics.reported(mqtt_tenant.id, a.device_id), {"reported": {"led": "on"}, "version": 1})
    assert not accepted.is_failure
    wait_until(lambda: Device.objects.get(pk=a.pk).reported_version == 1, message="A's report to be ingested")
    refused = device.publish(topics.reported(mqtt_tenant.id, b.device_id), {"reported": {"evil": 1}, "version": 0})
    assert refused.is_failure  # MQTT 5: PUBACK "not authorized"
    assert device.publish(topics.jobs_notify(mqtt_tenant.id, a.device_id), {"jobs": []}).is_failure
    time.sleep(0.5)
    b_now = Device.objects.get(pk=b.pk)
    assert b_now.reported_state == {} and b_now.last_seen is None


def test_no_device_can_take_over_another_clients_session(managed, dynsec_broker, provision, mqtt_tenant, sessions):
    """The review's finding 1: valid device credentials with the bridge's (or another device's)
    client id and a persistent session took that session over. Every account is bound now."""
    a, b, c = provision(3)
    synced(a, b, c)
    t = mqtt_tenant.id
    victim = sessions(dynsec_broker.settings, t, b.device_id, b.token, clean=False)
    assert victim.connected and not victim.subscribe(topics.desired(t, b.device_id)).is_failure

    for stolen in (managed.client_id, f"{managed.client_id}-accounts", acl.device_client_id(t, b.device_id), "x"):
        thief = sessions(dynsec_broker.settings, t, a.device_id, a.token, client_id=stolen, clean=False)
        assert not thief.connected, f"{stolen}: {thief.reason}"
        assert thief.reason.getName() == "Not authorized"

    # Nobody was kicked off: the bridge still ingests C's report, B still gets its desired state.
    report = sessions(dynsec_broker.settings, t, c.device_id, c.token)
    assert not report.publish(topics.reported(t, c.device_id), {"reported": {"ok": 1}, "version": 0}).is_failure
    wait_until(lambda: Device.objects.get(pk=c.pk).reported_state == {"ok": 1}, message="C's report")
    twin_update_desired(device=b, document={"fan": "on"})
    assert json.loads(victim.messages.get(timeout=10).payload)["desired"] == {"fan": "on"}
    assert victim.disconnects.empty() and managed.connected.is_set()


def test_accounts_made_before_the_binding_are_bound_by_the_migration(
    managed, dynsec_broker, provision, mqtt_tenant, sessions
):
    (device,) = provision(1)
    synced(device)
    t, username = mqtt_tenant.id, acl.device_username(mqtt_tenant.id, device.device_id)
    control = dynsec.DynsecClient(dynsec_broker.settings, client_id="test-admin")
    try:  # as the bridge left it before: no client id, and the old ACL (jobs/+ publishable)
        outcomes = control.run([
            {"command": "modifyClient", "username": username, "clientid": ""},
            {"command": "addRoleACL", "rolename": dynsec.role_name(t, device.device_id),
             "acltype": "publishClientSend", "topic": f"tenant/{t}/device/{device.device_id}/jobs/+", "allow": True},
        ])  # fmt: skip
        assert all(o.ok for o in outcomes), outcomes
        assert sessions(dynsec_broker.settings, t, device.device_id, device.token, client_id="anything").connected

        migration = importlib.import_module("mqtt_bridge.migrations.0002_bind_device_client_ids")
        from django.apps import apps

        migration.rebind(apps, None)
        synced(device)
        assert not sessions(dynsec_broker.settings, t, device.device_id, device.token, client_id="anything").connected
        own = sessions(dynsec_broker.settings, t, device.device_id, device.token)
        assert own.connected  # the password was kept
        assert own.publish(f"tenant/{t}/device/{device.device_id}/jobs/x", {"a": 1}).is_failure  # ACL refreshed
    finally:
        control.close()


def test_wrong_password_rotation_and_decommission(managed, dynsec_broker, provision, mqtt_tenant, sessions):
    (device,) = provision(1)
    synced(device)
    assert not sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, "iotd_wrong").connected
    assert not sessions(dynsec_broker.settings, mqtt_tenant.id, "no-such-device", device.token).connected
    assert sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, device.token).connected

    old, new = device.token, device_rotate_token(device=device)
    synced(device)
    assert not sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, old).connected
    assert sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, new).connected

    device_decommission(device=device)
    synced(device)
    assert not sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, new).connected


def test_accounts_made_while_the_broker_is_down_are_applied_when_it_returns(
    managed, dynsec_broker, provision, mqtt_tenant, sessions
):
    dynsec_broker.stop()
    (device,) = provision(1)
    time.sleep(0.5)
    row = Device.objects.get(pk=device.pk)
    assert row.broker_synced_version < row.broker_account_version
    assert row.broker_secret and device.token not in row.broker_secret  # waiting, encrypted
    dynsec_broker.start()  # same port; the broker kept its accounts file
    synced(device)
    assert sessions(dynsec_broker.settings, mqtt_tenant.id, device.device_id, device.token).connected


def test_resync_rebuilds_accounts_and_removes_strays(
    managed, dynsec_broker, provision, mqtt_tenant, sessions, tmp_path
):
    kept, lost, gone = provision(3)
    synced(kept, lost, gone)
    control = dynsec.DynsecClient(dynsec_broker.settings, client_id="test-admin")
    try:
        control.run(dynsec.delete_commands(mqtt_tenant.id, lost.device_id))  # the broker lost an account
        control.run(dynsec.upsert_commands(mqtt_tenant.id, "stray", "x"))  # one the database never knew
        Device.objects.filter(pk=gone.pk).update(status="decommissioned")  # changed behind the bridge's back
        tokens = tmp_path / "tokens.json"
        call_command("broker_resync", "--rotate-missing", "--tokens-file", str(tokens))
        lost.refresh_from_db()
        synced(lost)  # the rotation may have been applied by the running bridge rather than by the command
        clients = set(control.query("listClients", "clients"))
    finally:
        control.close()
    assert acl.device_username(mqtt_tenant.id, "stray") not in clients
    assert acl.device_username(mqtt_tenant.id, gone.device_id) not in clients
    assert sessions(dynsec_broker.settings, mqtt_tenant.id, kept.device_id, kept.token).connected
    new_token = json.loads(tokens.read_text())[acl.device_username(mqtt_tenant.id, lost.device_id)]
    assert tokens.stat().st_mode & 0o077 == 0
    assert not sessions(dynsec_broker.settings, mqtt_tenant.id, lost.device_id, lost.token).connected
    assert sessions(dynsec_broker.settings, mqtt_tenant.id, lost.device_id, new_token).connected


# --- the HTTP hooks: the same answers -------------------------------------------------------------------


def hook(path, body, token=HOOK_TOKEN, content_type="application/json"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body) if content_type == "application/json" else urlencode(body)
    return Client().post(path, data, content_type=content_type, headers=headers)


def login(username, password, clientid=None):
    # A device's own client id is its username (acl.device_client_id).
    body = {"username": username, "password": password, "clientid": clientid or username}
    response = hook("/mqtt/auth", body)
    assert response.status_code == 200, response.content
    return response.json()["result"]


def may(username, action, topic, clientid=None):
    response = hook(
        "/mqtt/acl", {"username": username, "clientid": clientid or username, "topic": topic, "action": action}
    )
    assert response.status_code == 200, response.content
    return response.json()["result"]


def test_http_hooks_answer_like_the_broker(settings, provision, mqtt_tenant):
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    a, b = provision(2)
    t, user_a = mqtt_tenant.id, acl.device_username(mqtt_tenant.id, a.device_id)

    assert login(user_a, a.token) == "allow"
    assert login(user_a, "iotd_wrong") == "deny"
    assert login(acl.device_username(t, b.device_id), a.token) == "deny"  # A's token is not B's
    assert login(acl.device_username(t, "no-such-device"), a.token) == "deny"
    assert login("not-a-device-name", a.token) == "deny"

    assert may(user_a, "subscribe", topics.desired(t, a.device_id)) == "allow"
    assert may(user_a, "subscribe", topics.jobs_notify(t, a.device_id)) == "allow"
    assert may(user_a, "publish", topics.reported(t, a.device_id)) == "allow"
    assert may(user_a, "subscribe", topics.desired(t, b.device_id)) == "deny"
    assert may(user_a, "subscribe", f"tenant/{t}/device/+/shadow/desired") == "deny"
    assert may(user_a, "publish", topics.reported(t, b.device_id)) == "deny"
    assert may(user_a, "publish", topics.jobs_notify(t, a.device_id)) == "deny"

    # Bound to its client id: its own credentials with any other id (the bridge's, B's) are refused.
    for stolen in ("iotcloud-bridge", acl.device_client_id(t, b.device_id), "c1", user_a + "-2"):
        assert login(user_a, a.token, clientid=stolen) == "deny", stolen
    assert may(user_a, "subscribe", topics.desired(t, a.device_id), clientid="iotcloud-bridge") == "deny"

    old, new = a.token, device_rotate_token(device=a)
    assert login(user_a, old) == "deny" and login(user_a, new) == "allow"
    device_decommission(device=a)
    assert login(user_a, new) == "deny"
    assert may(user_a, "subscribe", topics.desired(t, a.device_id)) == "deny"


def test_http_hooks_know_the_bridge(settings, mqtt_tenant):
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    settings.MQTT_URL = "mqtt://svc-bridge:svc-secret@broker:1883"
    response = hook("/mqtt/auth", {"username": "svc-bridge", "password": "svc-secret", "clientid": "bridge-7f3a"})
    assert response.json() == {"result": "allow", "is_superuser": True}
    assert login("svc-bridge", "wrong") == "deny"
    assert may("svc-bridge", "subscribe", "$share/iotcloud/tenant/+/device/+/shadow/reported") == "allow"


def test_http_hooks_refuse_callers_that_are_not_the_broker(settings, db):
    settings.MQTT_AUTH_HOOK_TOKEN = ""
    assert hook("/mqtt/auth", {"username": "a/b", "password": "x"}).status_code == 403
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    assert hook("/mqtt/auth", {"username": "a/b", "password": "x"}, token=None).status_code == 401
    assert hook("/mqtt/auth", {"username": "a/b", "password": "x"}, token="guess").status_code == 401
    bad = hook("/mqtt/acl", {"username": "a/b", "topic": "t"})
    assert bad.status_code == 400 and "action" in bad.json()["detail"]
    assert Client().post("/mqtt/auth", "{", content_type="application/json",
                         headers={"Authorization": f"Bearer {HOOK_TOKEN}"}).status_code == 400  # fmt: skip
    no_id = hook("/mqtt/auth", {"username": "a/b", "password": "x"})
    assert no_id.status_code == 400 and "clientid" in no_id.json()["detail"]
    form = hook(
        "/mqtt/auth", {"username": "a/b", "password": "x", "clientid": "a/b"},
        content_type="application/x-www-form-urlencoded",
    )  # fmt: skip
    assert form.status_code == 200 and form.json()["result"] == "deny"  # EMQX may send forms too


def test_http_hooks_refuse_hostile_json(settings, db):
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    deep = '{"username": ' + "[" * 20_000 + "]" * 20_000 + "}"
    for raw in [deep, '{"username": NaN}', '{"username": "\\ud800", "password": "x"}', "[1]"]:
        response = Client().post(
            "/mqtt/auth", raw, content_type="application/json", headers={"Authorization": f"Bearer {HOOK_TOKEN}"}
        )
        assert response.status_code == 400, (raw[:40], response.content[:200])
