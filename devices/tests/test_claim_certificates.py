"""Claim certificates (devices.claims.claim_create_with_certificate): a claim whose credential is an X.509
certificate of the platform CA, CN "_claim-cert/<claim id>", for the factory's CSR or with a key made once.

Over HTTP it is forwarded by the trusted TLS proxy (as a device's certificate is) to POST /device/v1/register;
revoking the claim or deleting its template puts the certificate on the revocation list; hostile CSRs and
forwarded garbage are a clear refusal. (Over MQTT: mqtt_bridge/tests/test_claim_certificates.py.)
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.test import Client
from django.utils import timezone

from devices import claims
from devices.certificates import certificate_issue, revocation_list_pem
from devices.models import Device, DeviceCertificate, ProvisioningClaim
from devices.tokens import hash_token
from iotcloud.errors import InvalidInput

pytestmark = pytest.mark.django_db
REGISTER = "/device/v1/register"
PROXY = "10.0.0.7"


@pytest.fixture(autouse=True)
def trusted_proxy(settings):
    settings.DEVICE_CERT_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/24")]


@pytest.fixture
def template(tenant):
    return claims.template_create(tenant=tenant, name="pumps", device_id_prefix="pump-", tags={"fleet": "pumps"})


def csr_pem(common_name: str | None = None, key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def register(pem: str, serial: str, *, proxy: str = PROXY, **body):
    return Client().post(REGISTER, {"serial": serial, **body}, content_type="application/json", REMOTE_ADDR=proxy,
                         HTTP_X_CLIENT_CERTIFICATE=quote(pem))  # fmt: skip


def test_a_claim_certificate_is_made_with_a_key_shown_once_and_ends_with_the_claim(template):
    ends = timezone.now() + timedelta(days=30)
    claim, issued, key_pem = claims.claim_create_with_certificate(template=template, expires_at=ends)

    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"_claim-cert/{claim.pk}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
    assert abs(cert.not_valid_after_utc - ends) < timedelta(seconds=1), "valid no longer than the claim"
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert claim.credential == "certificate" and claim.token_hash is None and issued.claim_id == claim.pk
    assert issued.device_id is None and claim.broker_account_version == 1, "its broker account is pending"


def test_a_claim_certificate_for_the_factorys_csr_and_hostile_csrs(template):
    key = ec.generate_private_key(ec.SECP256R1())
    _claim, issued, key_pem = claims.claim_create_with_certificate(template=template, csr=csr_pem(key=key))
    assert key_pem is None
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()

    before = ProvisioningClaim.objects.count()
    for bad, code in [
        (csr_pem("acme/pump-1"), "csr_subject_mismatch"),  # a device's name: not a claim's
        ("-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----", "invalid_csr"),
        (csr_pem(key=ec.generate_private_key(ec.SECP521R1())), "invalid_csr_key"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            claims.claim_create_with_certificate(template=template, csr=bad)
        assert refused.value.code == code
    assert ProvisioningClaim.objects.count() == before, "a refused CSR creates no claim"


def test_a_forwarded_claim_certificate_registers_a_device_over_http(template):
    _claim, issued, _ = claims.claim_create_with_certificate(template=template, max_registrations=2)

    answer = register(issued.certificate_pem, "SN-1")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["device_id"] == "pump-SN-1" and body["provision_token"], "a token template's identity"
    device = Device.objects.get(tenant=template.tenant, device_id="pump-SN-1")
    assert device.provision_token_hash == hash_token(body["provision_token"]) and device.tags == {"fleet": "pumps"}

    assert register(issued.certificate_pem, "SN-1").json()["code"] == "serial_registered"
    assert register(issued.certificate_pem, "SN-2").status_code == 201
    assert register(issued.certificate_pem, "SN-3").json()["code"] == "claim_exhausted"


def test_a_certificate_template_answers_a_claim_certificate_with_the_devices_certificate(tenant):
    meters = claims.template_create(tenant=tenant, name="meters", device_id_prefix="m-", credential="certificate")
    _, issued, _ = claims.claim_create_with_certificate(template=meters)

    answer = register(issued.certificate_pem, "SN-9", csr=csr_pem("acme/m-SN-9"))
    assert answer.status_code == 201, answer.content
    device_cert = x509.load_pem_x509_certificate(answer.json()["certificate_pem"].encode())
    assert device_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme/m-SN-9"
    assert answer.json()["private_key_pem"] is None


def test_revoked_expired_foreign_and_garbage_claim_certificates_are_refused(tenant, template, make_device):
    revoked, revoked_cert, _ = claims.claim_create_with_certificate(template=template)
    claims.claim_revoke(claim=revoked)
    _expiring, expiring_cert, _ = claims.claim_create_with_certificate(template=template)
    DeviceCertificate.objects.filter(pk=expiring_cert.pk).update(not_after=timezone.now() - timedelta(seconds=1))
    device_cert, _ = certificate_issue(device=make_device(tenant, "pump-7"))  # a device's, not a claim's

    assert register(revoked_cert.certificate_pem, "SN-1").json()["code"] == "claim_revoked"
    for pem in (expiring_cert.certificate_pem, device_cert.certificate_pem, "garbage", "x" * 40_000):
        answer = register(pem, "SN-1")
        assert answer.status_code == 401 and answer.json()["code"] == "invalid_claim", pem[:30]
    # From an address that is not a configured proxy the header is ignored.
    answer = register(revoked_cert.certificate_pem, "SN-1", proxy="192.0.2.1")
    assert answer.status_code == 401 and answer.json()["code"] == "missing_claim_token"
    assert not Device.objects.filter(device_id__startswith="pump-SN").exists()


def test_revoking_the_claim_or_deleting_its_template_puts_its_certificate_on_the_revocation_list(template):
    def listed(serial: str) -> bool:
        crl = x509.load_pem_x509_crl(revocation_list_pem().encode())
        return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    first, first_cert, _ = claims.claim_create_with_certificate(template=template)
    _second, second_cert, _ = claims.claim_create_with_certificate(template=template)
    assert not listed(first_cert.serial)

    claims.claim_revoke(claim=first)
    assert listed(first_cert.serial) and not listed(second_cert.serial)
    assert ProvisioningClaim.objects.get(pk=first.pk).broker_account_version == 2, "its account goes too"

    claims.template_delete(template=template)
    assert listed(second_cert.serial), "a deleted template's claim certificates stay revoked"
    assert DeviceCertificate.objects.get(pk=second_cert.pk).claim_id is None


def test_the_api_makes_a_claim_certificate_and_lists_it(operator, template):
    url = f"/customer/provisioning/templates/{template.name}/claims"
    made = operator.post(url, {"credential": "certificate", "label": "factory 2"}, expect=201)
    assert made["Cache-Control"] == "no-store"
    body = made.json()
    assert body["credential"] == "certificate" and body["claim_token"] is None
    assert "BEGIN CERTIFICATE" in body["certificate_pem"] and "PRIVATE KEY" in body["private_key_pem"]
    assert "BEGIN CERTIFICATE" in body["ca_certificate_pem"] and body["certificate_serial"]

    from_csr = operator.post(url, {"credential": "certificate", "csr": csr_pem()}, expect=201).json()
    assert from_csr["private_key_pem"] is None
    refused = operator.post(url, {"csr": csr_pem()}, expect=400).json()
    assert refused["code"] == "invalid_csr", "a CSR goes with a certificate claim"
    assert operator.post(url, {"credential": "certificate", "csr": "nope"}, expect=400).json()["code"] == "invalid_csr"

    listed = {c["id"]: c for c in operator.get(url, expect=200).json()}
    assert listed[body["id"]]["certificate_serial"] == body["certificate_serial"]
    assert "private_key_pem" not in listed[body["id"]]


def test_the_admin_makes_a_claim_certificate_and_shows_its_key_once(tenant, template):
    from iotcloud.testing import staff_client

    alice = staff_client(tenant, "alice-admin")
    page = alice.post(f"/admin/devices/provisioningtemplate/{template.pk}/new-claim/", {"credential": "certificate"})
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    claim = ProvisioningClaim.objects.get(template=template)
    assert claim.credential == "certificate"
    assert page.context["private_key_pem"].encode() in page.content and b"BEGIN CERTIFICATE" in page.content
    assert f"/claims/{claim.pk}/".encode() in page.content, "the MQTT topic of the claim"

    refused = alice.post(f"/admin/devices/provisioningtemplate/{template.pk}/new-claim/",
                         {"credential": "certificate", "csr": "garbage"})  # fmt: skip
    assert refused.status_code == 200 and b"not a PEM certificate signing request" in refused.content
    assert ProvisioningClaim.objects.filter(template=template).count() == 1
