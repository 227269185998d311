"""The device HTTP API with a certificate forwarded by a trusted TLS proxy (DEVICE_CERT_HEADER from
DEVICE_CERT_PROXIES only): the device it was issued to is the caller; from anyone else the header
is ignored; revoked, expired, foreign, garbage certificates are a 401."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.test import Client
from django.utils import timezone

from devices.certificates import certificate_issue, certificates_revoke
from devices.models import DeviceCertificate
from devices.services import device_decommission
from iotcloud import pki
from twin.services import twin_update_desired

pytestmark = pytest.mark.django_db
SHADOW = "/device/v1/shadow"


@pytest.fixture(autouse=True)
def trusted_proxy(settings):
    settings.DEVICE_CERT_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/24")]


def call(pem: str, *, proxy: str = "10.0.0.7", **extra):
    return Client().get(SHADOW, REMOTE_ADDR=proxy, HTTP_X_CLIENT_CERTIFICATE=quote(pem), **extra)


def test_a_forwarded_certificate_is_its_device(tenant, make_device):
    device = make_device(tenant, "pump-7")
    twin_update_desired(device=device, document={"fan": 2})
    issued, _ = certificate_issue(device=device)
    answer = call(issued.certificate_pem)
    assert answer.status_code == 200 and answer.json()["desired"] == {"fan": 2}


def test_from_an_address_that_is_not_a_configured_proxy_the_header_is_ignored(tenant, make_device):
    issued, _ = certificate_issue(device=make_device(tenant, "pump-7"))
    answer = call(issued.certificate_pem, proxy="192.0.2.1")  # a client sending the header itself
    assert answer.status_code == 401 and answer.json()["code"] == "missing_token"


def test_revoked_expired_decommissioned_foreign_and_garbage_certificates_are_refused(tenant, make_device):
    device, other = make_device(tenant, "pump-7"), make_device(tenant, "pump-8")
    revoked, _ = certificate_issue(device=device)
    certificates_revoke(device=device)
    expired, _ = certificate_issue(device=other)
    DeviceCertificate.objects.filter(pk=expired.pk).update(not_after=timezone.now() - timedelta(seconds=1))
    retired_device = make_device(tenant, "pump-9")
    retired, _ = certificate_issue(device=retired_device)
    device_decommission(device=retired_device)
    ca_key = pki.new_key()
    ca = pki.ca_certificate(ca_key, "someone else's CA")
    foreign = pki.certificate_pem(pki.client_certificate(ca, ca_key, pki.new_key().public_key(), "acme/pump-7"))
    for pem in (revoked.certificate_pem, expired.certificate_pem, retired.certificate_pem, foreign.decode(),
                "garbage", "-----BEGIN CERTIFICATE-----\n" + "A" * 40000):  # fmt: skip
        answer = call(pem)
        assert answer.status_code == 401, pem[:40]
        assert answer.json()["code"] == "invalid_certificate"
