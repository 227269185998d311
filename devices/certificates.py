"""X.509 device certificates: a second device credential beside the provision token.

One platform CA (devices.models.CertificateAuthority, made on first use, its key sealed at rest)
signs every device certificate with subject CN "<tenant>/<device_id>" (the device's broker
username: Mosquitto's use_identity_as_username) and O "<tenant>", so a certificate names exactly
one device of one tenant and the broker's per-device ACL applies to it.

- `certificate_issue(device, csr_pem=None)`: from the device's CSR (its private key never leaves
  it) or, without one, with a key made here and returned once. Each new certificate revokes the
  device's previous ones (rotation); decommissioning revokes them all.
- `revocation_list_pem()`: the CA's CRL of every revoked certificate not yet expired, for the
  broker (`manage.py broker_crl` writes it; Mosquitto reads it again on SIGHUP).
CSRs are hostile input: size, PEM, signature, key type and size, and subject are checked, each
refusal a 400 naming the problem.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices.audit import audit_record
from devices.choices import DeviceStatus
from devices.models import CertificateAuthority, Device, DeviceCertificate, ProvisioningClaim
from iotcloud import pki
from iotcloud.errors import Conflict, InvalidInput, PayloadTooLarge
from iotcloud.rules import claim_certificate_login, device_login
from iotcloud.sealing import seal, unseal

logger = logging.getLogger(__name__)

PLATFORM_CA = "platform"
MAX_CSR_BYTES = 8 * 1024
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


def identity(device: Device) -> str:
    """The certificate subject's CN: the device's broker username."""
    return device_login(device.tenant_id, device.device_id)


def platform_ca() -> tuple[x509.Certificate, pki.PrivateKey]:
    """The CA's certificate and key, made on first use (concurrent first uses make one)."""
    row = CertificateAuthority.objects.filter(name=PLATFORM_CA).first()
    if row is None:
        key = pki.new_key()
        cert = pki.ca_certificate(key, "iotcloud device CA", days=settings.DEVICE_CA_DAYS)
        try:
            with transaction.atomic():
                row = CertificateAuthority.objects.create(
                    name=PLATFORM_CA, certificate_pem=pki.certificate_pem(cert).decode(),
                    key_sealed=seal(pki.key_pem(key).decode()),
                )  # fmt: skip
            logger.info("device CA created")
        except IntegrityError:  # another process made it first: use theirs
            row = CertificateAuthority.objects.get(name=PLATFORM_CA)
    key_pem = unseal(row.key_sealed)
    if key_pem is None:
        raise RuntimeError("the device CA's key cannot be unsealed: BROKER_CREDENTIALS_KEY / SECRET_KEY changed")
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return x509.load_pem_x509_certificate(row.certificate_pem.encode()), key


def ca_certificate_pem() -> str:
    return pki.certificate_pem(platform_ca()[0]).decode()


def check_csr(csr_pem, device: Device):
    """The CSR's public key, if the CSR is one this device may have signed; InvalidInput naming why not."""
    return check_csr_for(csr_pem, identity(device))


def check_csr_for(csr_pem, login: str):
    """check_csr for the device whose login (tenant/device id) this is, before it exists."""
    if not isinstance(csr_pem, str):
        raise InvalidInput("csr must be a PEM string (-----BEGIN CERTIFICATE REQUEST-----...)", code="invalid_csr")
    if len(csr_pem.encode()) > MAX_CSR_BYTES:
        raise PayloadTooLarge(f"csr is larger than {MAX_CSR_BYTES} bytes", code="csr_too_large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput("csr is not a PEM certificate signing request", code="invalid_csr") from None
    if not csr.is_signature_valid:
        raise InvalidInput("csr's signature does not verify: it was not signed by its own key", code="invalid_csr")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            raise InvalidInput(f"csr key: curve {key.curve.name} is not accepted (secp256r1, secp384r1)",
                               code="invalid_csr_key")  # fmt: skip
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(f"csr key: RSA {key.key_size} bits is too short (at least {MIN_RSA_BITS})",
                               code="invalid_csr_key")  # fmt: skip
    else:
        raise InvalidInput("csr key must be EC (secp256r1, secp384r1) or RSA", code="invalid_csr_key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = names[0].value if names else None
    if common not in (None, login) or len(names) > 1:
        raise InvalidInput(f"csr subject CN={common!r} is not this device: leave it empty or use {login!r}",
                           code="csr_subject_mismatch")  # fmt: skip
    return key


def certificate_issue(*, device: Device, csr_pem: str | None = None) -> tuple[DeviceCertificate, str | None]:
    """A new certificate for an active device (and its private key, only when no CSR was given; shown
    only now); the device's previous certificates are revoked in the same transaction."""
    cert, key = _sign(csr_pem, identity(device), device.tenant_id)
    with transaction.atomic():
        if not Device.objects.filter(pk=device.pk, status=DeviceStatus.ACTIVE).select_for_update().exists():
            raise Conflict(f"Device {device.device_id!r} is decommissioned: no certificate for it",
                           code="device_decommissioned")  # fmt: skip
        revoked = _revoke(DeviceCertificate.objects.filter(device=device), "superseded")
        issued = _record(cert, device=device)
        audit_record(tenant_id=device.tenant_id, device_id=device.pk, action="device.certificate_issue",
                     after={"serial": issued.serial, "from_csr": csr_pem is not None, "revoked": revoked})  # fmt: skip
    logger.info("certificate issued %s serial=%s (revoked %d)", device, issued.serial, revoked)
    return issued, pki.key_pem(key).decode() if key is not None else None


def claim_certificate_issue(
    *, claim: ProvisioningClaim, csr_pem: str | None = None
) -> tuple[DeviceCertificate, str | None]:
    """The certificate of a claim just created (in its transaction): CN "_claim-cert/<claim id>", O its
    tenant, valid until the claim expires (at most DEVICE_CERTIFICATE_DAYS); from the CSR of the
    factory's key (CN empty or that name), else with a key made here, returned once."""
    cert, key = _sign(csr_pem, claim_certificate_login(claim.pk), claim.template.tenant_id, claim.expires_at)
    issued = _record(cert, claim=claim)
    logger.info("claim certificate issued for claim %d serial=%s", claim.pk, issued.serial)
    return issued, pki.key_pem(key).decode() if key is not None else None


def _sign(csr_pem: str | None, login: str, tenant_id: str, not_after: datetime | None = None):
    """(certificate for `login`, the key made for it or None): for the CSR's key (checked), else a new key."""
    key = None
    public_key = check_csr_for(csr_pem, login) if csr_pem is not None else None
    if public_key is None:
        key = pki.new_key()
        public_key = key.public_key()
    ca_cert, ca_key = platform_ca()
    cert = pki.client_certificate(ca_cert, ca_key, public_key, login, organization=tenant_id,
                                  days=settings.DEVICE_CERTIFICATE_DAYS, not_after=not_after)  # fmt: skip
    return cert, key


def _record(cert, **owner) -> DeviceCertificate:
    der = cert.public_bytes(serialization.Encoding.DER)
    return DeviceCertificate.objects.create(
        serial=format(cert.serial_number, "x"), fingerprint=hashlib.sha256(der).hexdigest(),
        certificate_pem=pki.certificate_pem(cert).decode(), not_after=cert.not_valid_after_utc, **owner,
    )  # fmt: skip


def claim_certificates_revoke(claims, reason: str = "claim revoked") -> int:
    """Revoke the certificates of these claims (a queryset): the broker refuses them once it reloads the list."""
    return _revoke(DeviceCertificate.objects.filter(claim__in=claims), reason)


def certificates_revoke(*, device: Device, reason: str = "revoked") -> int:
    """Revoke the device's certificates (the broker refuses them once it reloads the list)."""
    with transaction.atomic():
        count = _revoke(DeviceCertificate.objects.filter(device=device), reason)
        if count:
            audit_record(tenant_id=device.tenant_id, device_id=device.pk, action="device.certificate_revoke",
                         after={"reason": reason, "revoked": count})  # fmt: skip
    if count:
        logger.info("certificates revoked %s: %d (%s)", device, count, reason)
    return count


def _revoke(certificates, reason: str) -> int:
    return certificates.filter(revoked_at__isnull=True).update(revoked_at=timezone.now(), revoke_reason=reason[:64])


def revocation_list_pem(*, now: datetime | None = None) -> str:
    """The CA's CRL: every revoked certificate that has not expired yet (an expired one is refused anyway)."""
    now = now or datetime.now(UTC)
    ca_cert, ca_key = platform_ca()
    revoked = DeviceCertificate.objects.filter(revoked_at__isnull=False, not_after__gt=now)
    entries = [(int(serial, 16), at) for serial, at in revoked.values_list("serial", "revoked_at")]
    return pki.crl_pem(pki.revocation_list(ca_cert, ca_key, entries, now=now)).decode()


def _fingerprint(pem) -> str | None:
    """The SHA-256 of a PEM certificate's DER, or None for anything that is not one (garbage included)."""
    if not isinstance(pem, str) or not pem or len(pem) > MAX_CSR_BYTES * 2:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def device_for_certificate(pem: str, *, now: datetime | None = None) -> Device | None:
    """The active device this certificate (PEM, as a TLS proxy forwards it) was issued to, if it is
    one of ours, not revoked and not expired; None for anything else (garbage included)."""
    fingerprint = _fingerprint(pem)
    if fingerprint is None:
        return None
    issued = (DeviceCertificate.objects.select_related("device", "device__tenant")
              .filter(fingerprint=fingerprint, revoked_at__isnull=True, not_after__gt=now or timezone.now(),
                      device__status=DeviceStatus.ACTIVE).first())  # fmt: skip
    return issued.device if issued is not None else None


def claim_for_certificate(pem: str, *, now: datetime | None = None) -> ProvisioningClaim | None:
    """The claim this claim certificate was issued to (whatever the claim's state: the claim's own
    refusals say revoked or expired), or None when it is not an unexpired claim certificate of ours."""
    fingerprint = _fingerprint(pem)
    if fingerprint is None:
        return None
    issued = (DeviceCertificate.objects.select_related("claim", "claim__template", "claim__template__tenant")
              .filter(fingerprint=fingerprint, claim__isnull=False, not_after__gt=now or timezone.now())
              .first())  # fmt: skip
    return issued.claim if issued is not None else None
