"""Devices that log in to Mosquitto with their X.509 certificate: `require_certificate` with the
certificate's CN as the username (use_identity_as_username), the device CA and its revocation list
from `manage.py broker_crl`. A valid certificate connects and reaches its own topics only; one
revoked (rotation, decommission) is refused at its next connect once the broker reloaded the
list (SIGHUP); a certificate from another CA is refused."""

from __future__ import annotations

import getpass
import shutil
import signal
import ssl
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command

from devices.certificates import certificate_issue, certificates_revoke
from devices.services import device_decommission, tenant_create
from iotcloud import pki
from mqtt_bridge import topics
from mqtt_bridge.accounts.acl import device_grants, device_username
from mqtt_bridge.dev_tls import ensure_dev_tls
from mqtt_bridge.tests.conftest import PrivateMosquitto, free_port

pytestmark = [pytest.mark.django_db, pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs mosquitto")]

ACL_ACCESS = {"publish": "write", "subscribe": "read", "receive": "read"}


class CertificateMosquitto(PrivateMosquitto):
    """Mosquitto asking every client for a certificate from the device CA; ACLs per device username."""

    def __init__(self, directory: Path, devices, superusers=()):
        self.dir = directory
        self.port = free_port()
        server, _ = ensure_dev_tls(directory / "server")  # the broker's own certificate, as compose's tls-init
        acl = []
        for device in devices:  # the grants the bridge gives each device account (mqtt_bridge.accounts.acl)
            acl.append(f"user {device_username(device.tenant_id, device.device_id)}")
            acl += [
                f"topic {ACL_ACCESS[g.action]} {g.pattern}" for g in device_grants(device.tenant_id, device.device_id)
            ]
        for name in superusers:  # e.g. the bridge, with a client certificate of its own
            acl += [f"user {name}", "topic readwrite #", "topic readwrite $aws/#"]
        (directory / "acl").write_text("\n".join(acl) + "\n")
        (directory / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\ncafile {directory}/device-ca.crt\ncertfile {server.cert_file}\n"
            f"keyfile {server.key_file}\nrequire_certificate true\nuse_identity_as_username true\n"
            f"crlfile {directory}/device-crl.pem\nallow_anonymous false\nacl_file {directory}/acl\n"
            f"persistence false\nlog_dest stderr\nlog_type error\nuser {getpass.getuser()}\n"  # reads tmp_path as us
        )
        self.server_ca = server.ca_file
        self.process = None

    def reload(self):
        """What a broker does with a changed revocation list: read it again on SIGHUP."""
        call_command("broker_crl", "--dir", str(self.dir))
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)


@pytest.fixture
def fleet(tmp_path):
    tmp_path.chmod(0o755)
    acme, globex = tenant_create(tenant_id="acme"), tenant_create(tenant_id="globex")
    from devices.services import device_provision

    devices = [
        device_provision(tenant=acme, device_id="pump-7")[0],
        device_provision(tenant=globex, device_id="g-1")[0],
    ]
    return devices


@pytest.fixture
def broker(tmp_path, fleet):
    call_command("broker_crl", "--dir", str(tmp_path))
    broker = CertificateMosquitto(tmp_path, fleet)
    broker.start()
    yield broker
    broker.cleanup()


def credentials(tmp_path: Path, device, name: str = "device") -> tuple[Path, Path]:
    issued, key_pem = certificate_issue(device=device)
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_text(issued.certificate_pem)
    pki.write_private(key_file, key_pem.encode())
    return cert_file, key_file


class Session:
    """A paho client presenting a certificate; `.reason` is the CONNACK's, None when TLS refused it."""

    def __init__(self, broker, cert_file, key_file, client_id):
        self.reason, self.granted, self.error, self.received = None, None, None, []
        self._answer, self._suback = threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(broker.server_ca), certfile=str(cert_file), keyfile=str(key_file))
        self.client.on_connect = lambda c, u, f, reason, p: (setattr(self, "reason", reason), self._answer.set())
        self.client.on_subscribe = lambda c, u, mid, codes, p: (setattr(self, "granted", codes), self._suback.set())
        self.client.on_message = lambda c, u, message: self.received.append(message.topic)
        self.client.on_disconnect = lambda *a: self._answer.set()  # the broker dropped it (TLS refused)
        try:
            self.client.connect("127.0.0.1", broker.port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:  # the handshake itself refused
            self.error = exc
            return
        self.client.loop_start()
        self._answer.wait(3)

    @property
    def connected(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str):
        self._suback.clear()
        self.client.subscribe(topic, qos=1)
        assert self._suback.wait(5)
        return [code.value for code in self.granted]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_a_certificate_logs_in_as_its_device_and_reaches_its_own_topics_only(broker, fleet, tmp_path):
    pump, other = fleet
    session = Session(broker, *credentials(tmp_path, pump), client_id=device_username("acme", "pump-7"))
    neighbour = Session(broker, *credentials(tmp_path, other, "other"), client_id=device_username("globex", "g-1"))
    try:
        assert session.connected and neighbour.connected  # the certificate alone logs them in
        session.subscribe(topics.reported("acme", "pump-7"))
        session.subscribe(topics.reported("globex", "g-1"))  # another tenant's device: never delivered
        neighbour.client.publish(topics.reported("globex", "g-1"), b'{"reported": {}, "version": 0}', qos=1)
        session.client.publish(topics.reported("acme", "pump-7"), b'{"reported": {}, "version": 0}', qos=1)
        deadline = time.monotonic() + 5
        while topics.reported("acme", "pump-7") not in session.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert session.received == [topics.reported("acme", "pump-7")]  # its own, under its certificate's name
    finally:
        session.close()
        neighbour.close()


def test_a_revoked_certificate_is_refused_at_its_next_connect(broker, fleet, tmp_path):
    pump, _ = fleet
    old = credentials(tmp_path, pump, "old")
    new = credentials(tmp_path, pump, "new")  # rotation: the old one is revoked
    broker.reload()
    refused = Session(broker, *old, client_id="acme/pump-7")
    assert (not refused.connected and refused.error is not None) or refused.reason is None
    fresh = Session(broker, *new, client_id="acme/pump-7")
    try:
        assert fresh.connected
    finally:
        fresh.close()
    certificates_revoke(device=pump, reason="test")
    broker.reload()
    assert not Session(broker, *new, client_id="acme/pump-7").connected


def test_decommissioning_refuses_the_devices_certificate(broker, fleet, tmp_path):
    pump, _ = fleet
    cert = credentials(tmp_path, pump)
    first = Session(broker, *cert, client_id="acme/pump-7")
    assert first.connected
    first.close()
    device_decommission(device=pump)
    broker.reload()
    assert not Session(broker, *cert, client_id="acme/pump-7").connected


def test_a_certificate_from_another_ca_is_refused(broker, fleet):
    ca_dir = Path(tempfile.mkdtemp(prefix="iotcloud-foreign-ca-"))
    try:
        ca_key = pki.new_key()
        ca = pki.ca_certificate(ca_key, "someone else's CA")
        key = pki.new_key()
        forged = pki.client_certificate(ca, ca_key, key.public_key(), "acme/pump-7", organization="acme")
        cert_file, key_file = ca_dir / "forged.crt", ca_dir / "forged.key"
        cert_file.write_bytes(pki.certificate_pem(forged))
        pki.write_private(key_file, pki.key_pem(key))
        assert not Session(broker, cert_file, key_file, client_id="acme/pump-7").connected
    finally:
        shutil.rmtree(ca_dir, ignore_errors=True)


def test_an_expired_device_certificate_is_refused(broker, fleet, tmp_path):
    from datetime import UTC, datetime, timedelta

    from devices.certificates import platform_ca

    ca_cert, ca_key = platform_ca()
    key = pki.new_key()
    old = pki.client_certificate(ca_cert, ca_key, key.public_key(), "acme/pump-7", organization="acme", days=1,
                                 now=datetime.now(UTC) - timedelta(days=3))  # fmt: skip
    cert_file, key_file = tmp_path / "expired.crt", tmp_path / "expired.key"
    cert_file.write_bytes(pki.certificate_pem(old))
    pki.write_private(key_file, pki.key_pem(key))
    assert not Session(broker, cert_file, key_file, client_id="acme/pump-7").connected
