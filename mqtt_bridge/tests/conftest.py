"""MQTT test fixtures: a real broker, bridges, and device-like MQTT clients.

With MQTT_URL set (CI: the machine's Mosquitto) the tests use that broker;
without it they start the embedded broker, as `make run` does. Every test
works in a tenant of its own, so retained messages of earlier runs never
leak into a test.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings

from devices.models import Device
from devices.services import device_provision, tenant_create
from iotcloud.testing import subprocess_database_url
from mqtt_bridge import topics
from mqtt_bridge.bridge import Bridge
from mqtt_bridge.config import BrokerSettings, parse_mqtt_url

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = TIMEOUT, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def broker_url(broker: BrokerSettings) -> str:
    auth = f"{quote(broker.username, safe='')}:{quote(broker.password or '', safe='')}@" if broker.username else ""
    files = "".join(f"&{name}={quote(getattr(broker, name), safe='/')}"
                    for name in ("ca_file", "cert_file", "key_file") if getattr(broker, name))  # fmt: skip
    return f"{'mqtts' if broker.tls else 'mqtt'}://{auth}{broker.host}:{broker.port}?protocol={broker.protocol}{files}"


# --- brokers ---------------------------------------------------------------------------


class EmbeddedTestBroker:
    """The embedded broker on a free port, with a service account for tests."""

    USER, PASSWORD = "iotcloud-test", "test-password"

    def __init__(self, port: int | None = None):
        from mqtt_bridge.embedded import EmbeddedBroker

        self.port = port or free_port()
        self._broker = EmbeddedBroker(port=self.port, service_users={self.USER: self.PASSWORD})
        self.settings = BrokerSettings(
            host="127.0.0.1", port=self.port, username=self.USER, password=self.PASSWORD,
            protocol="3.1.1", embedded=True,
        )  # fmt: skip

    def start(self):
        self._broker.start()

    def stop(self):
        self._broker.stop()


class PrivateMosquitto:
    """A Mosquitto of the test's own, with persistence, that can be stopped and started."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-mosquitto-"))
        self.port = free_port()
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nlog_dest stderr\nlog_type error\n"
        )
        self.settings = BrokerSettings(host="127.0.0.1", port=self.port)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")])
        wait_until(lambda: _port_open(self.port), message="mosquitto to listen")

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


DYNSEC_PLUGIN_PATHS = [
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
]


def dynsec_plugin() -> str | None:
    return next((p for p in DYNSEC_PLUGIN_PATHS if Path(p).exists()), None)


class DynsecMosquitto(PrivateMosquitto):  # start/stop/cleanup as PrivateMosquitto; its own config
    """A Mosquitto of the test's own with the dynamic security plugin; the bridge's account is its admin."""

    USER = "iotcloud-bridge"

    def __init__(self):
        import base64
        import hashlib
        import json

        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-dynsec-"))
        self.dir.chmod(0o777)  # Mosquitto started as root runs as user mosquitto and rewrites the file
        self.port = free_port()
        self.password = uuid.uuid4().hex
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", self.password.encode(), salt, 101)
        everything = [
            {"acltype": kind, "topic": "#", "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
        ]
        control = "$CONTROL/dynamic-security/#"
        config = {
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                                 "unsubscribe": True},
            "clients": [{"username": self.USER, "roles": [{"rolename": "iotcloud-bridge"}],
                         "password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
                         "iterations": 101}],
            "groups": [],
            "roles": [{"rolename": "iotcloud-bridge", "acls": [
                *everything,
                {"acltype": "publishClientSend", "topic": control, "allow": True},
                {"acltype": "publishClientReceive", "topic": control, "allow": True},
                {"acltype": "subscribePattern", "topic": control, "allow": True},
            ]}],
        }  # fmt: skip
        security = self.dir / "dynamic-security.json"
        security.write_text(json.dumps(config))
        security.chmod(0o666)
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\nplugin {dynsec_plugin()}\n"
            f"plugin_opt_config_file {security}\npersistence false\nlog_dest stderr\nlog_type error\n"
        )
        self.settings = BrokerSettings(host="127.0.0.1", port=self.port, username=self.USER, password=self.password)
        self.process = None


@pytest.fixture
def dynsec_broker():
    if not shutil.which("mosquitto") or not dynsec_plugin():
        pytest.skip("needs mosquitto and its dynamic security plugin (Debian package mosquitto)")
    broker = DynsecMosquitto()
    broker.start()
    yield broker
    broker.cleanup()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def mqtt_broker():
    """The broker under test: MQTT_URL's, or the embedded one."""
    if settings.MQTT_URL:
        yield parse_mqtt_url(settings.MQTT_URL)
        return
    broker = EmbeddedTestBroker()
    broker.start()
    yield broker.settings
    broker.stop()


@pytest.fixture
def restartable_broker():
    """A broker the test may stop and start: a private Mosquitto, or the embedded broker."""
    if shutil.which("mosquitto"):
        broker = PrivateMosquitto()
        broker.start()
        yield broker
        broker.cleanup()
    else:
        broker = EmbeddedTestBroker()
        broker.start()
        yield broker
        broker.stop()


# --- data --------------------------------------------------------------------------------


@pytest.fixture
def mqtt_tenant(transactional_db, mqtt_broker):
    tenant = tenant_create(tenant_id=f"t-{uuid.uuid4().hex[:10]}")
    yield tenant
    # Leave no retained messages behind on a shared broker.
    device_ids = list(Device.objects.filter(tenant=tenant).values_list("device_id", flat=True))
    if device_ids:
        with MqttClient(mqtt_broker) as client:
            for device_id in device_ids:
                client.publish(topics.desired(tenant.id, device_id), b"", retain=True)
                client.publish(topics.jobs_notify(tenant.id, device_id), b"", retain=True)


@pytest.fixture
def provision(mqtt_tenant):
    def make(count: int = 1, prefix: str = "dev"):
        devices = []
        for n in range(count):
            device, token = device_provision(tenant=mqtt_tenant, device_id=f"{prefix}-{n:04}")
            device.token = token
            devices.append(device)
        return devices

    return make


# --- MQTT clients ---------------------------------------------------------------------------


class MqttClient:
    """A small synchronous MQTT client for tests: connect, subscribe, publish, collect."""

    def __init__(self, broker: BrokerSettings, *, client_id: str = "", clean: bool = True):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(TIMEOUT), "test client could not connect"

    def subscribe(self, topic_filter: str, qos: int = 1):
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=qos)
        assert self._subscribed.wait(TIMEOUT), f"no SUBACK for {topic_filter}"
        return self

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        return info

    def collect(self, count: int | None = None, timeout: float = TIMEOUT, quiet: float | None = None):
        """Messages until `count` arrived, or until `quiet` seconds pass without one."""
        got, deadline = [], time.monotonic() + timeout
        while (count is None or len(got) < count) and time.monotonic() < deadline:
            wait = quiet if quiet is not None else deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(0.01, min(wait, deadline - time.monotonic()))))
            except queue.Empty:
                if quiet is not None:
                    break
        return got

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def mqtt_client(mqtt_broker):
    clients = []

    def make(**kwargs) -> MqttClient:
        client = MqttClient(mqtt_broker, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# --- bridges ------------------------------------------------------------------------------


def purge_session(broker: BrokerSettings, client_id: str) -> None:
    """End a persistent session so a shared broker stops queueing for it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                         clean_session=True)  # fmt: skip
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    try:
        client.connect(broker.host, broker.port)
        client.loop_start()
        connected.wait(TIMEOUT)  # a clean session replaced the persistent one
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass


@pytest.fixture
def start_bridge(mqtt_broker, transactional_db):
    """Start in-process bridges (threads); all stopped and their sessions purged at teardown."""
    started: list[Bridge] = []

    def start(broker: BrokerSettings | None = None, **kwargs) -> Bridge:
        kwargs.setdefault("client_id", f"test-bridge-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("poll_seconds", 0.2)
        bridge = Bridge(broker=broker or mqtt_broker, **kwargs)
        bridge.start()
        started.append(bridge)
        wait_until(bridge.subscribed.is_set, message="bridge to connect and subscribe")
        return bridge

    yield start
    for bridge in started:
        bridge.stop()
        purge_session(bridge.broker, bridge.client_id)


class BridgeProcess:
    """`manage.py mqtt_bridge` as a real process, for crash tests."""

    def __init__(self, broker: BrokerSettings, client_id: str):
        self.env = {
            **os.environ, "DATABASE_URL": subprocess_database_url(), "MQTT_URL": broker_url(broker),
            "MQTT_CLIENT_ID": client_id, "MQTT_POLL_SECONDS": "0.2", "LOG_LEVEL": "INFO",
            "MQTT_BRIDGE_PROCESSES": "1",  # one bridge, the process a crash test kills (test_processes: several)
        }  # fmt: skip
        self.process = None
        self.log = tempfile.NamedTemporaryFile(prefix="bridge-", suffix=".log", delete=False)  # noqa: SIM115

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "mqtt_bridge"], cwd=ROOT, env=self.env, stdout=self.log, stderr=self.log
        )
        wait_until(lambda: b"subscribed to reports" in Path(self.log.name).read_bytes(),
                   message="bridge process to connect and subscribe")  # fmt: skip

    def kill(self):
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(30)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def stream_reports(publisher, tenant_id: str, devices, pause: float) -> threading.Thread:
    """Publish one seed report per device ({"seq": n}, version 0), `pause` s apart, in a thread (started)."""

    def stream():
        for n, device in enumerate(devices):
            publisher.publish(topics.reported(tenant_id, device.device_id),
                              json.dumps({"reported": {"seq": n}, "version": 0}))  # fmt: skip
            time.sleep(pause)

    sender = threading.Thread(target=stream)
    sender.start()
    return sender


def reports_landed(tenant) -> int:
    """Devices of the tenant whose report was committed."""
    return Device.objects.filter(tenant=tenant, reported_updated_at__isnull=False).count()
