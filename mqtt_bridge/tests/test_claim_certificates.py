"""Registration by claim certificate over MQTT, on a real Mosquitto with dynamic security and a
certificate listener (require_certificate, use_identity_as_username), as the compose stack runs it.

The bridge gives each claim certificate a broker account (`_claim-cert/<claim id>`, no password, a role
with its claim's registration topics only); a device presenting it registers with its own CSR and gets
its device certificate; the whole batch hears the answers, so nothing secret is ever sent there (no
token template, no key made for the device); the account reaches no other topic; a revoked claim's
certificate is refused at its next connect and its account is gone.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import queue
import shutil
import signal
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from django.core.management import call_command

from devices import claims
from devices.models import Device, ProvisioningClaim, Registration
from devices.services import tenant_create
from devices.tests.test_claim_certificates import csr_pem
from iotcloud import pki
from mqtt_bridge import topics
from mqtt_bridge.dev_tls import ensure_dev_tls
from mqtt_bridge.tests.conftest import DynsecMosquitto, dynsec_plugin, free_port, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("mosquitto") or not dynsec_plugin(), reason="needs mosquitto + dynsec"),
]


class CertificateDynsecMosquitto(DynsecMosquitto):
    """DynsecMosquitto plus the compose stack's certificate listener (device CA, its revocation list)."""

    def __init__(self, tls_dir):
        super().__init__()
        self.tls_dir = tls_dir
        self.cert_port = free_port()
        server, _ = ensure_dev_tls(tls_dir / "server")
        self.server_ca = server.ca_file
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            conf.read_text() + f"user {getpass.getuser()}\nlistener {self.cert_port} 127.0.0.1\n"
            f"cafile {tls_dir}/device-ca.crt\ncertfile {server.cert_file}\nkeyfile {server.key_file}\n"
            f"require_certificate true\nuse_identity_as_username true\ncrlfile {tls_dir}/device-crl.pem\n"
        )

    def reload(self):
        call_command("broker_crl", "--dir", str(self.tls_dir))
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)


class ClaimDevice:
    """A device of the batch: the claim certificate on the certificate listener, a client id of its own."""

    def __init__(self, broker, cert_file, key_file, client_id):
        self.messages, self.subacks, self.connack = queue.Queue(), queue.Queue(), queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(broker.server_ca), certfile=str(cert_file), keyfile=str(key_file))
        self.client.on_connect = lambda c, u, f, reason, p: self.connack.put(reason)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put([code.value for code in codes])
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_disconnect = lambda *a: self.connack.put(None)
        self.reason = None
        try:
            self.client.connect("127.0.0.1", broker.cert_port, keepalive=10)
        except (ssl.SSLError, OSError):
            return
        self.client.loop_start()
        with contextlib.suppress(queue.Empty):
            self.reason = self.connack.get(timeout=5)

    @property
    def connected(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=5)

    def register(self, topic: str, body: dict) -> tuple[str, dict]:
        self.client.publish(topic, json.dumps(body).encode(), qos=1)
        message = self.messages.get(timeout=10)
        return message.topic.rsplit("/", 1)[1], json.loads(message.payload)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    tmp_path.chmod(0o755)
    call_command("broker_crl", "--dir", str(tmp_path))  # the device CA and its list, as compose's device-ca
    broker = CertificateDynsecMosquitto(tmp_path)
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture
def managed(settings, broker, start_bridge):
    settings.MQTT_DEVICE_AUTH = "dynsec"
    settings.MQTT_URL = f"mqtt://{broker.USER}:{broker.password}@127.0.0.1:{broker.port}"
    return start_bridge(broker=broker.settings)


@pytest.fixture
def meters(managed):
    """A certificate template of tenant acme, with the bridge managing accounts."""
    acme = tenant_create(tenant_id="acme")
    return claims.template_create(tenant=acme, name="meters", device_id_prefix="m-", credential="certificate")


def claim_files(tmp_path, claim_issued, key_pem, name):
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_text(claim_issued.certificate_pem)
    pki.write_private(key_file, key_pem.encode())
    return cert_file, key_file


def synced(*claims_):
    def check():
        rows = ProvisioningClaim.objects.filter(pk__in=[c.pk for c in claims_])
        return all(c.broker_synced_version == c.broker_account_version for c in rows)

    wait_until(check, timeout=15, message="the bridge to apply the claim accounts")


def test_a_claim_certificate_registers_a_device_with_its_csr_over_mqtt(tmp_path, broker, meters):
    pumps = claims.template_create(tenant=meters.tenant, name="pumps", device_id_prefix="p-")  # issues tokens
    claim, issued, key_pem = claims.claim_create_with_certificate(template=meters)
    token_claim, token_issued, token_key = claims.claim_create_with_certificate(template=pumps)
    synced(claim, token_claim)

    device = ClaimDevice(broker, *claim_files(tmp_path, issued, key_pem, "claim"), client_id="factory-SN-1")
    try:
        assert device.connected, "the claim certificate alone logs it in"
        assert device.subscribe(topics.claim_registration("acme", claim.pk, "SN-1") + "/+") == [1]
        topic = topics.claim_registration("acme", claim.pk, "SN-1")

        outcome, body = device.register(topic, {"serial": "SN-1", "csr": csr_pem("acme/m-SN-1"), "clientToken": "c"})
        assert outcome == "accepted", body
        assert body["device_id"] == "m-SN-1" and body["clientToken"] == "c" and body["provision_token"] is None
        cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme/m-SN-1"
        assert body["private_key_pem"] is None
        assert Registration.objects.get(serial="SN-1").channel == "mqtt"

        # Nothing secret on the batch's shared topics: no key made for the device, no token template.
        outcome, body = device.register(topic, {"serial": "SN-2"})
        assert (outcome, body["code"]) == ("rejected", "csr_required")
        assert not Device.objects.filter(device_id="m-SN-2").exists()
    finally:
        device.close()

    token_device = ClaimDevice(broker, *claim_files(tmp_path, token_issued, token_key, "tok"), client_id="f-SN-3")
    try:
        topic = topics.claim_registration("acme", token_claim.pk, "SN-3")
        assert token_device.subscribe(topic + "/+") == [1]
        outcome, body = token_device.register(topic, {"serial": "SN-3", "csr": csr_pem()})
        assert (outcome, body["code"]) == ("rejected", "token_over_shared_topic")
        assert "POST /device/v1/register" in body["detail"]
    finally:
        token_device.close()


def test_a_claim_certificates_account_reaches_its_claims_topics_only(tmp_path, broker, meters):
    claim, issued, key_pem = claims.claim_create_with_certificate(template=meters)
    other, _, _ = claims.claim_create_with_certificate(template=meters)
    synced(claim, other)

    device = ClaimDevice(broker, *claim_files(tmp_path, issued, key_pem, "claim"), client_id="factory-SN-1")
    try:
        assert device.connected
        for foreign in (
            topics.claim_registration("acme", other.pk, "+") + "/+",  # another claim's answers
            topics.registration("acme", "+") + "/+",  # token claims' answers
            "tenant/acme/device/+/desired",
            "tenant/#",
            "#",
        ):
            assert device.subscribe(foreign)[0] >= 0x80, foreign
        # Publishing on another claim's topic registers nothing (the broker drops it).
        device.client.publish(topics.claim_registration("acme", other.pk, "SN-7"),
                              json.dumps({"serial": "SN-7", "csr": csr_pem()}).encode(), qos=1)  # fmt: skip
        time.sleep(1.0)
        assert not Registration.objects.filter(serial="SN-7").exists()
    finally:
        device.close()


def test_a_revoked_claims_certificate_is_refused_at_its_next_connect(tmp_path, broker, meters):
    claim, issued, key_pem = claims.claim_create_with_certificate(template=meters)
    synced(claim)
    files = claim_files(tmp_path, issued, key_pem, "claim")
    first = ClaimDevice(broker, *files, client_id="factory-SN-1")
    assert first.connected
    first.close()

    claims.claim_revoke(claim=claim)
    synced(claim)  # its broker account deleted
    broker.reload()  # the revocation list, as compose's mosquitto reloads it

    assert not ClaimDevice(broker, *files, client_id="factory-SN-1").connected


def test_resync_rebuilds_live_claim_accounts_and_removes_stale_ones(tmp_path, broker, meters):
    from mqtt_bridge.accounts import dynsec

    live, issued, key_pem = claims.claim_create_with_certificate(template=meters)
    doomed = claims.template_create(tenant=meters.tenant, name="old", credential="certificate")
    stale, _, _ = claims.claim_create_with_certificate(template=doomed)
    synced(live, stale)
    claims.template_delete(template=doomed)  # its claim's row is gone: only a resync finds its account
    control = dynsec.DynsecClient(broker.settings, client_id="test-admin")
    try:
        control.run(dynsec.delete_account_commands(dynsec.claim_account("acme", live.pk)))  # the broker lost it
        call_command("broker_resync")
        clients = set(control.query("listClients", "clients"))
    finally:
        control.close()
    assert f"_claim-cert/{live.pk}" in clients and f"_claim-cert/{stale.pk}" not in clients
    device = ClaimDevice(broker, *claim_files(tmp_path, issued, key_pem, "claim"), client_id="factory-SN-1")
    try:
        assert device.connected
    finally:
        device.close()
