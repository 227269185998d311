"""X.509 device certificates: issued from a CSR or with a key made once, revoked by rotation,
decommission or an operator, listed in the CA's revocation list, and hostile CSRs refused with a
clear 400; the CA's key is sealed at rest."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command

from devices.certificates import certificate_issue, platform_ca, revocation_list_pem
from devices.models import AuditEvent, CertificateAuthority, DeviceCertificate
from devices.services import device_decommission

pytestmark = pytest.mark.django_db


def csr_pem(key=None, common_name: str | None = None, *, extra_cn: str | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in (common_name, extra_cn) if cn is not None]
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def url(device_id: str, suffix: str = "") -> str:
    return f"/customer/devices/{device_id}/certificates{suffix}"


def test_a_certificate_from_the_devices_csr_names_the_device_and_chains_to_the_ca(operator, tenant, make_device):
    make_device(tenant, "pump-7")
    key = ec.generate_private_key(ec.SECP256R1())
    body = operator.post(url("pump-7"), {"csr": csr_pem(key, f"{tenant.id}/pump-7")}, expect=201).json()
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_certificate_pem"].encode())
    cert.verify_directly_issued_by(ca)
    assert (
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == body["username"] == f"{tenant.id}/pump-7"
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == tenant.id
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # the device's own key
    assert body["private_key_pem"] is None and body["serial"] == format(cert.serial_number, "x")
    assert AuditEvent.objects.filter(action="device.certificate_issue", after__serial=body["serial"]).exists()


def test_without_a_csr_a_key_is_made_and_shown_once(operator, tenant, make_device):
    make_device(tenant, "pump-7")
    body = operator.post(url("pump-7"), {}, expect=201).json()
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    listed = operator.get(url("pump-7"), expect=200).json()
    assert [c["serial"] for c in listed] == [body["serial"]] and "private_key_pem" not in listed[0]
    assert "PRIVATE KEY" not in CertificateAuthority.objects.get().key_sealed  # sealed at rest


def test_a_new_certificate_revokes_the_old_one_and_the_crl_names_it(operator, tenant, make_device):
    make_device(tenant, "pump-7")
    first = operator.post(url("pump-7"), {}, expect=201).json()
    second = operator.post(url("pump-7"), {}, expect=201).json()
    rows = {c["serial"]: c for c in operator.get(url("pump-7"), expect=200).json()}
    assert rows[first["serial"]]["revoke_reason"] == "superseded" and rows[second["serial"]]["revoked_at"] is None
    crl = x509.load_pem_x509_crl(revocation_list_pem().encode())
    crl.is_signature_valid(platform_ca()[0].public_key())
    assert {format(r.serial_number, "x") for r in crl} == {first["serial"]}


def test_decommission_and_an_operator_revoke_every_certificate(operator, tenant, make_device):
    device = make_device(tenant, "pump-7")
    make_device(tenant, "pump-8")
    operator.post(url("pump-7"), {}, expect=201)
    operator.post(url("pump-8"), {}, expect=201)
    assert operator.post(url("pump-8", "/revoke"), expect=200).json() == {"revoked": 1}
    device_decommission(device=device)
    assert not DeviceCertificate.objects.filter(revoked_at__isnull=True).exists()
    assert set(DeviceCertificate.objects.values_list("revoke_reason", flat=True)) == {
        "revoked by an operator", "device decommissioned"}  # fmt: skip
    refused = operator.post(url("pump-7"), {}, expect=409).json()
    assert refused["code"] == "device_decommissioned"


@pytest.mark.parametrize(
    ("make_csr", "status", "code"),
    [
        (lambda tenant: "not a csr", 400, "invalid_csr"),
        (
            lambda tenant: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            400,
            "invalid_csr",
        ),
        (lambda tenant: csr_pem(None, "other-tenant/pump-7"), 400, "csr_subject_mismatch"),
        (lambda tenant: csr_pem(None, f"{tenant.id}/pump-8"), 400, "csr_subject_mismatch"),
        (lambda tenant: csr_pem(None, f"{tenant.id}/pump-7", extra_cn="x"), 400, "csr_subject_mismatch"),
        (lambda tenant: csr_pem(rsa.generate_private_key(65537, 1024)), 400, "invalid_csr_key"),
        (lambda tenant: csr_pem(ec.generate_private_key(ec.SECP521R1())), 400, "invalid_csr_key"),
        (lambda tenant: csr_pem() + "x" * 9000, 413, "csr_too_large"),
        (lambda tenant: 42, 400, None),
    ],
    ids=["garbage", "bad-der", "other-tenant", "other-device", "two-cns", "rsa-1024", "p521", "oversize", "number"],
)
def test_hostile_csrs_are_refused_naming_why(operator, tenant, make_device, make_csr, status, code):
    make_device(tenant, "pump-7")
    body = operator.post(url("pump-7"), {"csr": make_csr(tenant)}, expect=status).json()
    if code:
        assert body["code"] == code and body["detail"]
    assert not DeviceCertificate.objects.exists()


def test_a_csr_whose_signature_does_not_verify_is_refused(tenant, make_device):
    device = make_device(tenant, "pump-7")
    pem = csr_pem(None, f"{tenant.id}/pump-7")
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(der)
    tampered[-5] ^= 0x01  # inside the signature
    forged = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM).decode()
    from iotcloud.errors import InvalidInput

    with pytest.raises(InvalidInput, match="signature does not verify"):
        certificate_issue(device=device, csr_pem=forged)


def test_another_tenants_device_is_not_found(other_operator, tenant, make_device):
    make_device(tenant, "pump-7")
    other_operator.post(url("pump-7"), {}, expect=404)
    other_operator.get(url("pump-7"), expect=404)
    assert not DeviceCertificate.objects.exists()


def test_broker_crl_writes_the_ca_and_the_list(tmp_path, tenant, make_device, capsys):
    device = make_device(tenant, "pump-7")
    issued, _ = certificate_issue(device=device)
    certificate_issue(device=device)  # revokes the first
    call_command("broker_crl", "--dir", str(tmp_path))
    assert "1 revoked certificate(s)" in capsys.readouterr().out
    crl = x509.load_pem_x509_crl((tmp_path / "device-crl.pem").read_bytes())
    assert [format(r.serial_number, "x") for r in crl] == [issued.serial]
    ca = x509.load_pem_x509_certificate((tmp_path / "device-ca.crt").read_bytes())
    assert ca == platform_ca()[0]


def test_a_device_provisioned_with_a_certificate_gets_it_in_the_same_answer(operator, tenant):
    key = ec.generate_private_key(ec.SECP256R1())
    body = operator.post("/customer/devices", {"device_id": "pump-9", "csr": csr_pem(key)}, expect=201).json()
    cert = x509.load_pem_x509_certificate(body["certificate"]["certificate_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert body["provision_token"] and body["certificate"]["username"] == f"{tenant.id}/pump-9"
    generated = operator.post("/customer/devices", {"device_id": "pump-10", "certificate": True}, expect=201).json()
    assert "PRIVATE KEY" in generated["certificate"]["private_key_pem"]
    plain = operator.post("/customer/devices", {"device_id": "pump-11"}, expect=201).json()
    assert plain.get("certificate") is None


def test_a_bad_csr_at_provisioning_creates_nothing(operator, tenant):
    from devices.models import Device

    refused = operator.post("/customer/devices", {"device_id": "pump-9", "csr": csr_pem(None, "acme/other")},
                            expect=400).json()  # fmt: skip
    assert refused["code"] == "csr_subject_mismatch"
    operator.post("/customer/devices", {"device_id": "pump-9", "certificate": "yes"}, expect=400)
    assert not Device.objects.filter(device_id="pump-9").exists() and not DeviceCertificate.objects.exists()
