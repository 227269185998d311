"""The embedded MQTT broker (amqtt): accounts, device ACL, sessions, retained messages, lifecycle."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import signal
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command

from devices.services import device_decommission, device_provision, tenant_create
from mqtt_bridge.embedded import EmbeddedBroker, embedded_credentials

TIMEOUT = 5
SVC_USER, SVC_PASSWORD = "svc", "svc-password"
SERVICE = {SVC_USER: SVC_PASSWORD}
transactional = pytest.mark.django_db(transaction=True)  # device auth reads the database from another thread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Client:
    """A paho client with bounded waits: connect, subscribe, publish, receive."""

    def __init__(self, port, *, client_id="", username=None, password=None, clean=True, protocol=mqtt.MQTTv311,
                 manual_ack=False, will=None):  # fmt: skip
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connacks: queue.Queue = queue.Queue()
        self._subacks: queue.Queue = queue.Queue()
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean}
        self.paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            manual_ack=manual_ack,
            reconnect_on_failure=False,  # every test connects explicitly
            **kwargs,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            self.paho.will_set(*will, qos=1)
        self.paho.on_connect = lambda client, userdata, flags, rc, props: self._connacks.put((rc, flags))
        self.paho.on_subscribe = lambda client, userdata, mid, codes, props: self._subacks.put(codes)
        self.paho.on_message = lambda client, userdata, message: self.messages.put(message)
        self.paho.connect("127.0.0.1", port, keepalive=30)
        self.paho.loop_start()
        try:
            self.rc, flags = self._connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            self.close()
            raise AssertionError("no CONNACK") from None
        self.session_present = flags.session_present
        if self.rc.is_failure:
            self.close()

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        """True if granted."""
        self.paho.subscribe(topic_filter, qos=qos)
        (code,) = self._subacks.get(timeout=TIMEOUT)
        return not code.is_failure

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        self.paho.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(TIMEOUT)

    def receive(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def receive_until(self, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Everything up to and including the message carrying `payload`."""
        got = [self.receive()]
        while got[-1].payload != payload:
            got.append(self.receive())
        return got

    def quiet(self, seconds: float = 0.3) -> list[mqtt.MQTTMessage]:
        """Whatever arrives within `seconds` (expected: nothing)."""
        deadline, got = time.monotonic() + seconds, []
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def broker():
    with EmbeddedBroker(port=free_port(), service_users=SERVICE) as running:
        yield running


@pytest.fixture
def connect(broker):
    clients: list[Client] = []

    def make(port: int | None = None, **kwargs) -> Client:
        kwargs.setdefault("username", SVC_USER)
        kwargs.setdefault("password", SVC_PASSWORD)
        client = Client(port or broker.port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def devices(transactional_db):
    """d1 and d2 of tenant acme, each with its token."""
    tenant = tenant_create(tenant_id="acme", name="Acme")
    made = {}
    for device_id in ("d1", "d2"):
        device, token = device_provision(tenant=tenant, device_id=device_id)
        device.token = token
        made[device_id] = device
    return made


def desired(device_id: str) -> str:
    return f"tenant/acme/device/{device_id}/shadow/desired"


def reported(device_id: str) -> str:
    return f"tenant/acme/device/{device_id}/shadow/reported"


# --- service accounts, retained messages, sessions ----------------------------------------


def test_retained_message_reaches_a_later_subscriber_until_cleared(connect):
    connect(client_id="platform").publish(desired("d1"), b'{"version": 1}', retain=True)

    later = connect(client_id="later")
    assert later.subscribe("tenant/+/device/+/shadow/desired")
    message = later.receive()
    assert (message.topic, message.payload, message.retain, message.qos) == (desired("d1"), b'{"version": 1}', 1, 1)

    connect(client_id="platform2").publish(desired("d1"), b"", retain=True)  # empty payload clears it
    assert later.receive().payload == b""  # live delivery of the clearing message
    again = connect(client_id="again")
    assert again.subscribe("tenant/#")
    assert again.quiet() == []


def test_persistent_session_keeps_subscription_and_queues_qos1_while_offline(connect):
    bridge = connect(client_id="bridge-1", clean=False)
    assert not bridge.session_present
    assert bridge.subscribe("tenant/+/device/+/shadow/reported")
    bridge.close()
    time.sleep(1.2)  # amqtt's session monitor (1 s) would drop it here if it were anonymous

    connect(client_id="device-like").publish(reported("d1"), b"while offline", qos=1)

    back = connect(client_id="bridge-1", clean=False)
    assert back.session_present
    message = back.receive()
    assert (message.topic, message.payload, message.qos) == (reported("d1"), b"while offline", 1)
    assert not message.retain  # queued, not retained (amqtt itself would set RETAIN here)


def test_unacknowledged_qos1_message_is_redelivered_after_reconnect(connect):
    bridge = connect(client_id="bridge-2", clean=False, manual_ack=True)
    assert bridge.subscribe("tenant/+/device/+/shadow/reported")
    connect(client_id="device-like").publish(reported("d1"), b"report", qos=1)
    first = bridge.receive()
    assert first.payload == b"report" and not first.dup
    bridge.close()  # crashed before its database write committed: never acknowledged

    back = connect(client_id="bridge-2", clean=False, manual_ack=True)
    again = back.receive()
    assert (again.payload, again.dup) == (b"report", True)
    back.paho.ack(again.mid, again.qos)
    back.close()
    assert connect(client_id="bridge-2", clean=False).quiet() == []  # acknowledged: gone


def test_shared_subscription_splits_messages_between_members(connect):
    publisher = connect(client_id="pub")
    publisher.publish(reported("d9"), b"retained-report", retain=True)
    members = [connect(client_id=f"bridge-{n}") for n in range(2)]
    for member in members:
        assert member.subscribe("$share/iotcloud/tenant/+/device/+/shadow/reported")
    assert not members[0].subscribe("$share/iotcloud")  # no filter after the group
    assert not members[0].subscribe("$share//tenant/#")  # empty group

    for n in range(6):
        publisher.publish(reported(f"d{n}"), f"m{n}".encode())
    got = [members[0].receive() for _ in range(3)] + [members[1].receive() for _ in range(3)]
    got += members[0].quiet(0.2) + members[1].quiet(0.1)
    assert sorted(m.payload for m in got) == [f"m{n}".encode() for n in range(6)]  # each once; no retained one


def test_mqtt5_connect_is_refused_at_once_as_unsupported_protocol(broker):
    started = time.monotonic()
    client = Client(broker.port, username=SVC_USER, password=SVC_PASSWORD, protocol=mqtt.MQTTv5)
    assert client.rc.is_failure and client.rc.getName() == "Unsupported protocol version"
    assert time.monotonic() - started < 3  # not after the keep-alive (30 s), as with plain amqtt


def raw_connect(port: int, *, keepalive: int) -> socket.socket:
    """A bare 3.1.1 CONNECT (service account), then silence."""

    def text(value: str) -> bytes:
        return len(value.encode()).to_bytes(2, "big") + value.encode()

    body = text("MQTT") + bytes([4, 0xC2]) + keepalive.to_bytes(2, "big")  # username, password, clean session
    body += text("silent") + text(SVC_USER) + text(SVC_PASSWORD)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return sock


def test_silent_client_is_disconnected_after_its_keepalive(broker):
    with raw_connect(broker.port, keepalive=1) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the broker
        assert 0.5 < time.monotonic() - started < 4


# --- refused connections ---------------------------------------------------------------------


@transactional
@pytest.mark.parametrize(
    "case", ["wrong password", "no username", "unknown device", "decommissioned device", "another device's token",
             "device username, service password", "empty token"],
)  # fmt: skip
def test_bad_credentials_are_refused(case, broker, devices, caplog):
    d1 = devices["d1"]
    username, password = {
        "wrong password": (SVC_USER, "nope"),
        "no username": (None, None),
        "unknown device": ("acme/ghost", d1.token),
        "decommissioned device": ("acme/d1", d1.token),
        "another device's token": ("acme/d2", d1.token),
        "device username, service password": ("acme/d1", SVC_PASSWORD),
        "empty token": ("acme/d1", ""),
    }[case]
    if case == "decommissioned device":
        device_decommission(device=d1)
    client = Client(broker.port, client_id="x", username=username, password=password)
    assert client.rc.is_failure, client.rc
    assert d1.token not in caplog.text and SVC_PASSWORD not in caplog.text


# --- devices ---------------------------------------------------------------------------------


@transactional
def test_device_touches_only_its_own_topics(connect, devices):
    d1, d2 = devices["d1"], devices["d2"]
    platform = connect(client_id="platform")
    platform.publish(desired("d1"), b"for d1", retain=True)
    platform.publish(desired("d2"), b"for d2", retain=True)
    watcher = connect(client_id="watcher", clean=False)
    assert watcher.subscribe("tenant/#")
    assert len(watcher.receive_until(b"for d2")) == 2  # the retained ones

    device = connect(client_id="acme/d1", username="acme/d1", password=d1.token)
    assert not device.rc.is_failure
    assert device.subscribe(desired("d1"))
    assert device.receive().payload == b"for d1"
    for foreign in (desired("d2"), "tenant/acme/device/+/shadow/desired", "tenant/#", "#", "$share/g/tenant/#"):
        assert not device.subscribe(foreign), foreign
    assert device.subscribe("tenant/acme/device/d1/#")  # its whole subtree
    # its own retained desired again (new subscription); never d2's, although the watcher's filter matches it
    assert [m.payload for m in device.receive_until(b"for d1")] == [b"for d1"]

    device.publish(reported("d2"), b"spoofed report")  # PUBACKed, then dropped
    device.publish(desired("d1"), b"spoofed desired")  # platform -> device only
    device.publish("tenant/acme/device/d1/jobs/notify", b"spoofed notify")
    device.publish("tenant/acme/device/d1/jobs/j1", b"job update")  # nothing reads it: refused
    device.publish(reported("d1"), b"my report", retain=True)
    expected = [(reported("d1"), b"my report")]
    assert [(m.topic, m.payload) for m in watcher.receive_until(b"my report")] == expected
    assert [(m.topic, m.payload) for m in device.receive_until(b"my report")] == expected

    late = connect(client_id="late")
    assert late.subscribe(reported("d1"))
    assert late.quiet() == []  # a device's retain flag is ignored

    # Its will message must be a topic it may publish to.
    device.close()
    spoofing_will = connect(client_id="acme/d1", username="acme/d1", password=d1.token, will=(reported("d2"), "x"))
    assert spoofing_will.rc.is_failure
    own_will = connect(client_id="acme/d1", username="acme/d1", password=d1.token, will=(reported("d1"), "gone"))
    assert not own_will.rc.is_failure

    # A device cannot take over another client's session by its client id: each account has one.
    for stolen in ("watcher", "acme/d1", "iotcloud-bridge"):
        hijack = connect(client_id=stolen, clean=False, username="acme/d2", password=d2.token)
        assert hijack.rc.is_failure, stolen
    assert connect(client_id="", username="acme/d2", password=d2.token).rc.is_failure  # no id: none of its own
    platform.publish(reported("d2"), b"still mine")
    assert watcher.receive().payload == b"still mine"


# --- persistence and lifecycle ------------------------------------------------------------------


def test_retained_messages_survive_a_restart_with_persistence(tmp_path):
    path = tmp_path / "mqtt-broker.sqlite3"
    port = free_port()
    with EmbeddedBroker(port=port, service_users=SERVICE, persistence_path=path):
        publisher = Client(port, username=SVC_USER, password=SVC_PASSWORD)
        watcher = Client(port, username=SVC_USER, password=SVC_PASSWORD, client_id="watcher")
        assert watcher.subscribe("t/#")
        publisher.publish("t/text", b"kept", retain=True)
        publisher.publish("t/binary", b"\x00\xff\xfe", retain=True)
        publisher.publish("t/cleared", b"soon gone", retain=True)
        publisher.publish("t/cleared", b"", retain=True)
        assert len(watcher.receive_until(b"")) == 4  # all processed by the broker
        publisher.close()
        watcher.close()

    with EmbeddedBroker(port=port, service_users=SERVICE, persistence_path=path):
        reader = Client(port, username=SVC_USER, password=SVC_PASSWORD)
        assert reader.subscribe("t/#")
        got = {m.topic: m.payload for m in [reader.receive(), reader.receive(), *reader.quiet()]}
        reader.close()
    assert got == {"t/text": b"kept", "t/binary": b"\x00\xff\xfe"}


def test_start_stop_twice_on_the_same_port():
    port = free_port()
    broker = EmbeddedBroker(port=port, service_users=SERVICE)
    for _ in range(2):
        broker.start()
        assert broker.is_running and port_open(port)
        client = Client(port, username=SVC_USER, password=SVC_PASSWORD)
        assert not client.rc.is_failure
        broker.stop()
        broker.stop()  # idempotent
        client.close()
        assert not broker.is_running and not port_open(port)
    assert not [t for t in threading.enumerate() if t.name == f"mqtt-broker-{port}"]


def test_start_fails_loudly_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="could not start"):
            EmbeddedBroker(port=taken.getsockname()[1], service_users=SERVICE).start(timeout=5)


# --- settings and the management command -----------------------------------------------------


def test_embedded_credentials_default_and_override(settings):
    settings.SECRET_KEY = "k" * 50
    settings.EMBEDDED_MQTT_USER = ""
    settings.EMBEDDED_MQTT_PASSWORD = ""
    settings.EMBEDDED_MQTT_PORT = 1999
    expected = hmac.new(b"k" * 50, b"embedded-mqtt", hashlib.sha256).hexdigest()[:32]
    assert embedded_credentials() == ("iotcloud-bridge", expected, 1999)
    settings.EMBEDDED_MQTT_USER, settings.EMBEDDED_MQTT_PASSWORD = "me", "secret"
    assert embedded_credentials() == ("me", "secret", 1999)


def test_mqtt_broker_command_serves_until_sigterm(settings, tmp_path, caplog):
    port = free_port()
    settings.EMBEDDED_MQTT_PORT = port
    settings.EMBEDDED_MQTT_USER, settings.EMBEDDED_MQTT_PASSWORD = "cmd-user", "cmd-password"
    outcome = {}

    def drive():
        deadline = time.monotonic() + 10
        while not port_open(port):  # the command installs its signal handlers before it listens
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        try:
            client = Client(port, username="cmd-user", password="cmd-password")
            outcome["rc"] = client.rc
            client.close()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    with caplog.at_level(logging.INFO, logger="mqtt_bridge"):
        call_command("mqtt_broker", "--host", "127.0.0.1", "--persistence-path", str(tmp_path / "broker.sqlite3"))
    driver.join(TIMEOUT)
    assert not outcome["rc"].is_failure
    assert not port_open(port)
    assert f"127.0.0.1:{port}" in caplog.text and "cmd-password" not in caplog.text


def test_device_protocol_topics_are_each_devices_own_in_both_dialects(connect, devices):
    """d1 may ask about its own shadows and jobs (native and $aws/things/acme:d1/...), never d2's."""
    d1 = devices["d1"]
    watcher = connect(client_id="watcher")
    assert watcher.subscribe("tenant/#") and watcher.subscribe("$aws/things/+/#")
    device = connect(client_id="acme/d1", username="acme/d1", password=d1.token)
    for foreign in ("$aws/things/acme:d2/shadow/update/delta", "$aws/things/+/shadow/update/delta", "$aws/#"):
        assert not device.subscribe(foreign), foreign
    assert device.subscribe("$aws/things/acme:d1/#")
    refused = [
        "$aws/things/acme:d2/shadow/update", "$aws/things/acme:d2/jobs/j1/update", "$aws/things/acme:d2/jobs/get",
        "tenant/acme/device/d2/shadow/get", "tenant/acme/device/d2/jobs/start-next",
        "$aws/things/acme:d1/shadow/update/accepted",  # answers are the platform's
        "$aws/things/acme:d1/jobs/notify-next",
    ]  # fmt: skip
    for topic in refused:
        device.publish(topic, b"spoofed")
    allowed = ["$aws/things/acme:d1/shadow/name/cfg/get", "tenant/acme/device/d1/jobs/$next/get",
               "$aws/things/acme:d1/shadow/update"]  # fmt: skip
    for topic in allowed:
        device.publish(topic, b"mine")
    got = watcher.receive_until(b"mine") + watcher.receive_until(b"mine") + watcher.receive_until(b"mine")
    assert sorted(m.topic for m in got) == sorted(allowed)
