"""MQTT over TLS: the development CA (manage.py tls_dev_ca), a Mosquitto serving TLS with it, the
bridge and devices connecting with its CA (paho and the stock mosquitto_sub), and what is refused:
a wrong CA, an expired certificate, a certificate for another host, plain MQTT on the TLS port."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from devices.models import Device
from iotcloud import pki
from mqtt_bridge import topics
from mqtt_bridge.config import BrokerSettings, parse_mqtt_url
from mqtt_bridge.dev_tls import ensure_dev_tls
from mqtt_bridge.tests.conftest import MqttClient, PrivateMosquitto, free_port, wait_until
from twin.services import twin_update_desired

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs mosquitto")


class TlsMosquitto(PrivateMosquitto):
    """A Mosquitto of the test's own serving MQTT over TLS only, with the given certificate files."""

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-tls-mosquitto-"))
        self.dir.chmod(0o755)
        for source in (cert_file, key_file, ca_file):  # Mosquitto started as root reads them as user mosquitto
            shutil.copy(source, self.dir / source.name)
            (self.dir / source.name).chmod(0o644)
        self.port = free_port()
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
            f"log_type error\ncafile {self.dir / ca_file.name}\ncertfile {self.dir / cert_file.name}\n"
            f"keyfile {self.dir / key_file.name}\n"
        )
        self.process = None


@pytest.fixture
def dev_tls(tmp_path):
    tls, _ = ensure_dev_tls(tmp_path / "tls")
    return tls


def tls_broker(request, cert_file: Path, key_file: Path, ca_file: Path) -> TlsMosquitto:
    broker = TlsMosquitto(cert_file, key_file, ca_file)
    broker.start()
    request.addfinalizer(broker.cleanup)
    return broker


@pytest.fixture
def broker(request, dev_tls):
    return tls_broker(request, dev_tls.cert_file, dev_tls.key_file, dev_tls.ca_file)


def over_tls(broker: TlsMosquitto, ca_file: Path, host: str = "127.0.0.1") -> BrokerSettings:
    return BrokerSettings(host=host, port=broker.port, tls=True, ca_file=str(ca_file), protocol="3.1.1")


def connect_error(settings: BrokerSettings) -> Exception | None:
    """What a paho client connecting with these settings gets (None: it connected)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if settings.tls:
        client.tls_set(ca_certs=settings.ca_file)
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return exc
    client.disconnect()
    return None


def session_refused(settings: BrokerSettings, *, client_id: str) -> bool:
    """Did the broker answer this login with a refusing CONNACK?"""
    answered, outcome = threading.Event(), {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(settings.username, settings.password)
    client.tls_set(ca_certs=settings.ca_file)
    client.on_connect = lambda c, u, flags, reason, props: (outcome.update(reason=reason), answered.set())
    client.connect(settings.host, settings.port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome["reason"].is_failure


def test_the_bridge_and_a_device_talk_over_tls_with_the_development_ca(broker, dev_tls, start_bridge, provision):
    settings = over_tls(broker, dev_tls.ca_file)
    start_bridge(settings)
    device = provision(1)[0]
    with MqttClient(settings) as client:
        client.subscribe(topics.desired(device.tenant_id, device.device_id))
        twin_update_desired(device=device, document={"fan": 2})
        delivered = client.collect(1)
        assert json.loads(delivered[0].payload)["desired"] == {"fan": 2}
        client.publish(topics.reported(device.tenant_id, device.device_id),
                       json.dumps({"reported": {"fan": 2}, "version": 1}))  # fmt: skip
    wait_until(lambda: Device.objects.get(pk=device.pk).reported_state == {"fan": 2}, message="the report over TLS")


def test_the_stock_mosquitto_sub_receives_desired_over_tls(broker, dev_tls, start_bridge, provision):
    if not shutil.which("mosquitto_sub"):
        pytest.skip("needs mosquitto_sub (Debian package mosquitto-clients)")
    start_bridge(over_tls(broker, dev_tls.ca_file))
    device = provision(1)[0]
    twin_update_desired(device=device, document={"mode": "eco"})
    topic = topics.desired(device.tenant_id, device.device_id)
    got = subprocess.run(
        ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "--cafile", str(dev_tls.ca_file), "-t", topic,
         "-C", "1", "-W", "10"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["desired"] == {"mode": "eco"}  # the retained message, over TLS


def test_a_client_trusting_another_ca_is_refused(broker, tmp_path):
    other, _ = ensure_dev_tls(tmp_path / "other")
    error = connect_error(over_tls(broker, other.ca_file))
    assert isinstance(error, ssl.SSLCertVerificationError) and "certificate verify failed" in str(error)


def test_an_expired_broker_certificate_is_refused(request, dev_tls, tmp_path):
    ca_key, ca_cert = pki.load_key(dev_tls.ca_key), pki.load_certificate(dev_tls.ca_file)
    key = pki.new_key()
    old = pki.server_certificate(ca_cert, ca_key, key, ["127.0.0.1"], days=1,
                                 now=datetime.now(UTC) - timedelta(days=30))  # fmt: skip
    cert_file, key_file = tmp_path / "expired.crt", tmp_path / "expired.key"
    pki.write_public(cert_file, pki.certificate_pem(old))
    pki.write_private(key_file, pki.key_pem(key))
    broker = tls_broker(request, cert_file, key_file, dev_tls.ca_file)
    error = connect_error(over_tls(broker, dev_tls.ca_file))
    assert isinstance(error, ssl.SSLCertVerificationError) and "certificate has expired" in str(error)


def test_a_certificate_for_another_host_is_refused(request, dev_tls, tmp_path):
    ca_key, ca_cert = pki.load_key(dev_tls.ca_key), pki.load_certificate(dev_tls.ca_file)
    key = pki.new_key()
    cert_file, key_file = tmp_path / "other-host.crt", tmp_path / "other-host.key"
    pki.write_public(cert_file, pki.certificate_pem(pki.server_certificate(ca_cert, ca_key, key, ["broker.example"])))
    pki.write_private(key_file, pki.key_pem(key))
    broker = tls_broker(request, cert_file, key_file, dev_tls.ca_file)
    error = connect_error(over_tls(broker, dev_tls.ca_file))
    assert isinstance(error, ssl.SSLCertVerificationError) and "mismatch" in str(error)


def test_plain_mqtt_to_the_tls_port_gets_no_session(broker):
    connect = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])  # MQTT 3.1.1 CONNECT, empty id
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(connect)
        try:
            answer = sock.recv(4)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20")  # no CONNACK: the broker speaks TLS only there


def test_mqtts_urls_take_a_ca_bundle_and_a_client_certificate(dev_tls):
    ca, cert, key = dev_tls.ca_file, dev_tls.cert_file, dev_tls.key_file
    parsed = parse_mqtt_url(f"mqtts://bridge:pw@broker.example?ca_file={ca}&cert_file={cert}&key_file={key}")
    assert (parsed.tls, parsed.port, parsed.ca_file, parsed.cert_file, parsed.key_file) == (
        True, 8883, str(ca), str(cert), str(key))  # fmt: skip
    for url, text in [
        (f"mqtt://broker.example?ca_file={ca}", "need mqtts://"),
        (f"mqtts://broker.example?cert_file={cert}", "cert_file and key_file together"),
        ("mqtts://broker.example?ca_file=/no/such/ca.crt", "no such file '/no/such/ca.crt'"),
        ("mqtts://broker.example?cafile=x", "unknown parameter(s) cafile"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=text.replace("(", r"\(").replace(")", r"\)")):
            parse_mqtt_url(url)


def test_tls_dev_ca_keeps_its_ca_and_renews_the_broker_certificate_for_new_hosts(tmp_path, capsys):
    directory = tmp_path / "tls"
    call_command("tls_dev_ca", "--dir", str(directory))
    assert "wrote ca.crt, ca.key, broker.crt, broker.key" in capsys.readouterr().out
    assert oct((directory / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((directory / "broker.key").stat().st_mode & 0o777) == "0o600"
    ca = (directory / "ca.crt").read_bytes()
    call_command("tls_dev_ca", "--dir", str(directory))
    assert "up to date" in capsys.readouterr().out
    call_command("tls_dev_ca", "--dir", str(directory), "--host", "mosquitto")
    assert "wrote broker.crt, broker.key" in capsys.readouterr().out
    assert (directory / "ca.crt").read_bytes() == ca  # devices that trust it keep working
    cert = pki.load_certificate(directory / "broker.crt")
    assert pki.covers(cert, ["mosquitto", "localhost", "127.0.0.1"], valid_for=timedelta(days=365))
    call_command("tls_dev_ca", "--dir", str(directory), "--force")
    assert (directory / "ca.crt").read_bytes() != ca


def test_the_embedded_broker_serves_tls_too_with_the_same_accounts(dev_tls, mqtt_tenant):
    from devices.services import device_provision
    from mqtt_bridge.embedded import EmbeddedBroker

    plain, tls_port = free_port(), free_port()
    broker = EmbeddedBroker(port=plain, service_users={"svc": "pw"}, tls_port=tls_port,
                            tls_files=(dev_tls.cert_file, dev_tls.key_file))  # fmt: skip
    broker.start()
    try:
        _, token = device_provision(tenant=mqtt_tenant, device_id="tls-01")
        name = f"{mqtt_tenant.id}/tls-01"
        settings = BrokerSettings(host="127.0.0.1", port=tls_port, username=name, password=token, tls=True,
                                  ca_file=str(dev_tls.ca_file), protocol="3.1.1")  # fmt: skip
        with MqttClient(settings, client_id=name) as client:  # the device's own account, over TLS
            client.subscribe(topics.desired(mqtt_tenant.id, "tls-01"))
        wrong = BrokerSettings(host="127.0.0.1", port=tls_port, username=name, password="wrong", tls=True,
                               ca_file=str(dev_tls.ca_file))  # fmt: skip
        assert session_refused(wrong, client_id=name)  # over TLS as over plain MQTT: the token is checked
    finally:
        broker.stop()
