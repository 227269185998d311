"""One device ACL, three enforcers: the rule in mqtt_bridge/accounts/acl.py (which the embedded broker
calls), a real Mosquitto with the dynamic-security role built from it, and the HTTP hooks of
EMQX-style brokers. For every topic and filter below the three must give the same answer.

Mosquitto is spoken to over a raw MQTT 5 socket, so that malformed topics (NUL, wildcards in a
topic name) reach the broker as sent instead of being refused by a client library first.
"""

from __future__ import annotations

import json
import socket

import pytest
from django.test import Client

from mqtt_bridge.accounts import acl, dynsec
from mqtt_bridge.accounts.sync import ensure_device_accounts

HOOK_TOKEN = "agreement-hook-token"

T, D, OTHER = "acme", "sensor-1", "sensor-2"
BASE = f"tenant/{T}/device/{D}"
THING = f"$aws/things/{T}:{D}"

PUBLISH_CASES = [
    (f"{BASE}/shadow/reported", True),
    (f"{BASE}/shadow/desired", False),  # platform -> device only
    (f"{BASE}/shadow/reported/rejected", False),
    (f"{BASE}/jobs/notify", False),
    (f"{BASE}/jobs/j1", False),  # nothing reads it: a device could only park messages there
    (f"{BASE}/jobs/j1/update", True),  # the device protocol's requests, native and AWS dialect
    (f"{BASE}/jobs/$next/get", True),
    (f"{BASE}/jobs/start-next", True),
    (f"{BASE}/jobs/start-next/accepted", False),  # answers are the platform's
    (f"{BASE}/shadow/get", True),
    (f"{BASE}/shadow/update/accepted", False),
    (f"{BASE}/shadow/update/delta", False),
    (f"{BASE}/shadow/name/cfg/update", True),
    (f"{BASE}/shadow/name/cfg/desired", False),
    (f"{THING}/shadow/update", True),
    (f"{THING}/shadow/name/cfg/delete", True),
    (f"{THING}/jobs/j1/update", True),
    (f"{THING}/jobs/notify-next", False),
    (f"{THING}/shadow/update/documents", False),
    (f"$aws/things/{T}:{OTHER}/shadow/update", False),  # another thing
    (f"$aws/things/other:{D}/shadow/get", False),  # the same device id in another tenant
    (f"tenant/{T}/device/{OTHER}/shadow/update", False),
    (f"{BASE}/shadow/reported/extra", False),
    (f"tenant/{T}/device/{OTHER}/shadow/reported", False),
    (f"{BASE}/shadow/rep\x00orted", False),
    (f"{BASE}/shadow/+", False),
    (f"{BASE}/#", False),
    ("$SYS/broker/version", False),
]

SUBSCRIBE_CASES = [
    (f"{BASE}/shadow/desired", True),
    (f"{BASE}/#", True),
    (f"{BASE}/+/desired", True),
    (f"{BASE}/shadow/desired/+", True),
    (BASE, True),  # `.../d/#` matches `.../d` itself (nothing is published there)
    (f"tenant/{T}/device/+/shadow/desired", False),
    (f"tenant/{T}/device/{OTHER}/shadow/desired", False),
    (f"tenant/{T}/#", False),
    ("#", False),
    (f"+/{T}/device/{D}/shadow/desired", False),
    (f"{BASE}/shadow/desi\x00red", False),
    (f"{BASE}/sha#", False),
    (f"{BASE}/#/x", False),
    (f"{BASE}/sh+", False),
    (f"$share/g/{BASE}/shadow/desired", None),  # decided by Mosquitto, the others must follow
    (f"$share/g/tenant/{T}/#", False),
    ("$SYS/#", False),
    (f"{THING}/#", True),
    (f"{THING}/shadow/update/delta", True),
    (f"{THING}/jobs/+/update/accepted", True),
    (f"$aws/things/{T}:{OTHER}/shadow/update/delta", False),
    ("$aws/things/+/shadow/update/delta", False),
    ("$aws/#", False),
]


# --- a minimal MQTT 5 client over a socket -------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class RawMqtt5:
    def __init__(self, port: int, username: str, password: str, client_id: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        flags = 0x80 | 0x40 | 0x02  # username, password, clean start
        variable = _str("MQTT") + bytes([5, flags]) + (30).to_bytes(2, "big") + b"\x00"
        self.sock.sendall(_packet(0x10, variable + _str(client_id) + _str(username) + _str(password)))
        kind, body = self._read()
        assert kind == 0x20 and body[1] == 0, f"CONNACK {body!r}"

    def _read(self) -> tuple[int | None, bytes]:
        head = self.sock.recv(1)
        if not head:
            return None, b""
        length, shift = 0, 0
        while True:
            byte = self.sock.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = self.sock.recv(length - len(body))
            if not chunk:
                return None, b""
            body += chunk
        return head[0] & 0xF0, body

    def _answer(self, kind: int) -> bytes | None:
        """The body of the next packet of `kind`, or None if the broker closed the connection."""
        try:
            while True:
                got, body = self._read()
                if got is None or got == 0xE0:  # closed, or DISCONNECT: a malformed packet
                    return None
                if got == kind:
                    return body
        except OSError:
            return None

    def subscribe(self, topic_filter: str) -> bool:
        self.sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + b"\x00" + _str(topic_filter) + b"\x01"))
        body = self._answer(0x90)
        if body is None:
            return False
        properties = body[2]  # (short: no properties in Mosquitto's SUBACK)
        return body[3 + properties] < 0x80

    def publish(self, topic: str) -> bool:
        self.sock.sendall(_packet(0x32, _str(topic) + (2).to_bytes(2, "big") + b"\x00" + b"{}"))
        body = self._answer(0x40)
        if body is None:
            return False
        return len(body) < 3 or body[2] < 0x80  # 0x10 "no matching subscribers" is a success

    def close(self):
        self.sock.close()


# --- the three answers ------------------------------------------------------------------------------


def _hook(path: str, body: dict) -> bool:
    response = Client().post(
        path, json.dumps(body), content_type="application/json", headers={"Authorization": f"Bearer {HOOK_TOKEN}"}
    )
    if response.status_code == 400:  # a body the strict parser refuses (NUL): never an allow
        return False
    assert response.status_code == 200, response.content
    return response.json()["result"] == "allow"


@pytest.fixture
def device_account(settings, dynsec_broker, tenant, make_device):
    settings.MQTT_AUTH_HOOK_TOKEN = HOOK_TOKEN
    device = make_device(tenant, D)
    make_device(tenant, OTHER)
    control = dynsec.DynsecClient(dynsec_broker.settings, client_id="agreement-admin")
    try:
        ((ok, _),) = ensure_device_accounts(control.run, [(T, D, device.token)])
        assert ok
    finally:
        control.close()
    return device


@pytest.mark.parametrize(("action", "cases"), [("publish", PUBLISH_CASES), ("subscribe", SUBSCRIBE_CASES)])
def test_rule_mosquitto_and_hooks_agree(action, cases, device_account, dynsec_broker):
    username = acl.device_username(T, D)
    disagreements = []
    for topic, expected in cases:
        session = RawMqtt5(dynsec_broker.port, username, device_account.token, acl.device_client_id(T, D))
        try:
            broker = session.publish(topic) if action == "publish" else session.subscribe(topic)
        finally:
            session.close()
        rule = acl.device_may(action, T, D, topic)
        hook = _hook("/mqtt/acl", {"username": username, "clientid": username, "topic": topic, "action": action})
        wanted = broker if expected is None else expected
        if not broker == rule == hook == wanted:
            disagreements.append((topic, {"expected": wanted, "mosquitto": broker, "rule": rule, "hook": hook}))
    assert not disagreements, disagreements


def test_logins_agree(device_account, dynsec_broker):
    """The client id binding: the same three answers for a device's own and borrowed client ids."""
    username = acl.device_username(T, D)
    for client_id, expected in [(username, True), ("iotcloud-bridge", False), (f"{T}/{OTHER}", False), ("x", False)]:
        try:
            RawMqtt5(dynsec_broker.port, username, device_account.token, client_id).close()
            broker = True
        except AssertionError:
            broker = False
        hook = _hook("/mqtt/auth", {"username": username, "password": device_account.token, "clientid": client_id})
        rule = acl.client_id_allowed(acl.parse_username(username), client_id)
        assert broker == hook == rule == expected, client_id
