"""A development certificate authority and broker certificate, so that the compose stack, `make run`'s
embedded broker and the tests speak MQTT over TLS out of the box (`manage.py tls_dev_ca`).

Files in one directory: ca.crt (what devices and the bridge trust: MQTT_URL's ca_file, mosquitto_sub
--cafile), ca.key, broker.crt and broker.key (the broker's). The CA is made once and kept; the broker
certificate is made again when it does not name every host asked for or expires within 30 days.
Keys are readable by their owner only. For production, use certificates from your own CA or a public
one: nothing here is more than a convenience.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from iotcloud import pki

logger = logging.getLogger(__name__)

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class DevTls:
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "broker.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "broker.key"


def ensure_dev_tls(directory: Path, hostnames: list[str] | tuple[str, ...] = DEFAULT_HOSTS, *,
                   force: bool = False) -> tuple[DevTls, list[str]]:  # fmt: skip
    """The directory's CA and broker certificate, made where missing (or all again with force);
    returns them and the names of the files written."""
    tls, written = DevTls(Path(directory)), []
    tls.directory.mkdir(parents=True, exist_ok=True)
    hosts = list(dict.fromkeys(hostnames))  # in order, once each
    if force or not (tls.ca_file.exists() and tls.ca_key.exists()):
        ca_key = pki.new_key()
        ca_cert = pki.ca_certificate(ca_key, "iotcloud development CA")
        pki.write_private(tls.ca_key, pki.key_pem(ca_key))
        pki.write_public(tls.ca_file, pki.certificate_pem(ca_cert))
        written += [tls.ca_file.name, tls.ca_key.name]
        force = True  # a new CA: the broker certificate must be its own
    else:
        ca_key, ca_cert = pki.load_key(tls.ca_key), pki.load_certificate(tls.ca_file)
    current = pki.load_certificate(tls.cert_file) if tls.cert_file.exists() and tls.key_file.exists() else None
    if force or current is None or not pki.covers(current, hosts, valid_for=RENEW_BEFORE):
        key = pki.new_key()
        cert = pki.server_certificate(ca_cert, ca_key, key, hosts)
        pki.write_private(tls.key_file, pki.key_pem(key))
        pki.write_public(tls.cert_file, pki.certificate_pem(cert))
        written += [tls.cert_file.name, tls.key_file.name]
    if written:
        logger.info("development TLS in %s: wrote %s (broker certificate for %s)", tls.directory,
                    ", ".join(written), ", ".join(hosts))  # fmt: skip
    return tls, written
