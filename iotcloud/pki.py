"""X.509 with `cryptography` (no shelling out to openssl): keys, a certificate authority, and the
certificates it issues. Pure functions over objects and PEM bytes; callers decide where files go.

Keys are ECDSA P-256 (what Mosquitto, paho, the AWS IoT Device SDK and browsers all accept).
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def ca_certificate(key: PrivateKey, common_name: str, *, days: int = 3650, now: datetime | None = None):
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    now = now or datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def server_certificate(ca_cert, ca_key: PrivateKey, key: PrivateKey, hostnames: list[str], *, days: int = 825,
                       now: datetime | None = None):  # fmt: skip
    """A TLS server certificate for `hostnames` (DNS names and IP addresses, as subject alternative
    names; the first is also the common name), signed by the CA. `now` in the past makes an expired one."""
    if not hostnames:
        raise ValueError("a server certificate needs at least one host name")
    now = now or datetime.now(UTC)
    names = [_alt_name(host) for host in hostnames]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


def client_certificate(ca_cert, ca_key: PrivateKey, public_key, common_name: str, *, organization: str = "",
                       days: int = 365, now: datetime | None = None, not_after: datetime | None = None):  # fmt: skip
    """A TLS client certificate (a device's identity) for `public_key`, subject CN=`common_name`
    (and O=`organization`), signed by the CA; its serial is random (what a CRL names). Valid for
    `days`, or until `not_after` if that comes first."""
    now = now or datetime.now(UTC)
    end = min(now + timedelta(days=days), not_after) if not_after is not None else now + timedelta(days=days)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


def revocation_list(ca_cert, ca_key: PrivateKey, revoked: list[tuple[int, datetime]], *, days: int = 7,
                    now: datetime | None = None):  # fmt: skip
    """The CA's certificate revocation list: (serial, revoked at) of every revoked certificate."""
    now = now or datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=days))
    )
    for serial, at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def crl_pem(crl) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def certificate_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def load_certificate(path: Path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return key


def covers(cert, hostnames: list[str], *, valid_for: timedelta, now: datetime | None = None) -> bool:
    """Does `cert` name every host and stay valid for at least `valid_for` more?"""
    now = now or datetime.now(UTC)
    if cert.not_valid_after_utc - now < valid_for:
        return False
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(_alt_name(host) in alt for host in hostnames)


def write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def write_private(path: Path, data: bytes) -> None:
    """Written readable by its owner only, from the first byte (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
        decipher_only=False,
    )  # fmt: skip
