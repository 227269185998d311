"""The stock AWS IoT Device SDK v2 connecting as AWS IoT firmware does: mutual TLS with the device's
X.509 certificate (mqtt_connection_builder.mtls_from_path), no username or password, to a Mosquitto
that takes the certificate's CN as the login; the bridge (with its own client certificate) answers
its shadow requests. Skipped without awscrt, except with REQUIRE_AWS_SDK=1 (.ci/run)."""

from __future__ import annotations

import os
import queue

import pytest
from django.core.management import call_command

from devices.certificates import certificate_issue, platform_ca
from devices.services import device_provision, tenant_create
from iotcloud import pki
from mqtt_bridge.config import BrokerSettings
from mqtt_bridge.tests.conftest import TIMEOUT
from mqtt_bridge.tests.test_device_certificates import CertificateMosquitto
from twin.services import twin_update_desired

if os.environ.get("REQUIRE_AWS_SDK") == "1":
    import awscrt  # noqa: F401
else:
    pytest.importorskip("awscrt", reason="the AWS IoT Device SDK is not installed (requirements-dev.txt has it)")

from awscrt import mqtt
from awsiot import iotshadow, mqtt_connection_builder

pytestmark = pytest.mark.django_db(transaction=True)
BRIDGE_CN = "iotcloud-bridge"


@pytest.fixture
def broker(tmp_path):
    tmp_path.chmod(0o755)
    tenant = tenant_create(tenant_id="acme")
    device, _ = device_provision(tenant=tenant, device_id="pump-7")
    call_command("broker_crl", "--dir", str(tmp_path))
    broker = CertificateMosquitto(tmp_path, [device], superusers=[BRIDGE_CN])
    broker.start()
    yield broker, device
    broker.cleanup()


def write_pair(tmp_path, name: str, cert_pem: str, key_pem: str):
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_text(cert_pem)
    pki.write_private(key_file, key_pem.encode())
    return cert_file, key_file


def test_the_stock_sdk_logs_in_with_its_certificate_and_gets_its_shadow(broker, tmp_path, start_bridge):
    broker, device = broker
    ca_cert, ca_key = platform_ca()
    bridge_key = pki.new_key()  # the bridge's own client certificate (MQTT_URL cert_file/key_file)
    bridge_cert = pki.client_certificate(ca_cert, ca_key, bridge_key.public_key(), BRIDGE_CN)
    bridge_files = write_pair(tmp_path, "bridge", pki.certificate_pem(bridge_cert).decode(),
                              pki.key_pem(bridge_key).decode())  # fmt: skip
    cert, key = (str(f) for f in bridge_files)
    bridge = BrokerSettings(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(broker.server_ca),
                            cert_file=cert, key_file=key, protocol="3.1.1")  # fmt: skip
    start_bridge(bridge)
    twin_update_desired(device=device, document={"fan": 3})

    issued, key_pem = certificate_issue(device=device)
    cert_file, key_file = write_pair(tmp_path, "pump-7", issued.certificate_pem, key_pem)
    # No username or password anywhere: the certificate is the login (the broker allows nothing else).
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1", port=broker.port, cert_filepath=str(cert_file), pri_key_filepath=str(key_file),
        ca_filepath=str(broker.server_ca), client_id="acme/pump-7", clean_session=True, keep_alive_secs=30,
    )  # fmt: skip
    connection.connect().result(TIMEOUT)
    try:
        shadow, answers = iotshadow.IotShadowClient(connection), queue.Queue()
        future, _ = shadow.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name="acme:pump-7"), mqtt.QoS.AT_LEAST_ONCE, answers.put
        )
        future.result(TIMEOUT)
        shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name="acme:pump-7", client_token="t-1"),
                                  mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)  # fmt: skip
        answer = answers.get(timeout=TIMEOUT)
        assert answer.state.desired == {"fan": 3} and answer.client_token == "t-1"
    finally:
        connection.disconnect().result(TIMEOUT)
