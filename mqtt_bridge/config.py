"""Where the broker is and how to reach it, from MQTT_URL (or the embedded broker)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PROTOCOLS = ("auto", "5", "3.1.1")
TLS_FILES = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # the CA bundle the broker's certificate must chain to (None: the system's)
    cert_file: str | None = None  # the bridge's own client certificate and key, for a broker that wants one
    key_file: str | None = None
    protocol: str = "auto"
    embedded: bool = False

    def __str__(self):  # never print the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerSettings:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ImproperlyConfigured(f"MQTT_URL must start with mqtt:// or mqtts://, got {parts.scheme!r}")
    if not parts.hostname:
        raise ImproperlyConfigured("MQTT_URL has no host")
    tls = parts.scheme in ("mqtts", "ssl")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    protocol = query.get("protocol", "auto")
    if protocol not in PROTOCOLS:
        raise ImproperlyConfigured(f"MQTT_URL protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    unknown = sorted(query.keys() - {"protocol", *TLS_FILES})
    if unknown:
        raise ImproperlyConfigured(f"MQTT_URL: unknown parameter(s) {', '.join(unknown)} (protocol, "
                                   f"{', '.join(TLS_FILES)})")  # fmt: skip
    files = {name: query.get(name) for name in TLS_FILES}
    if any(files.values()) and not tls:
        raise ImproperlyConfigured("MQTT_URL: ca_file, cert_file and key_file need mqtts://")
    if bool(files["cert_file"]) != bool(files["key_file"]):
        raise ImproperlyConfigured("MQTT_URL: give cert_file and key_file together (the bridge's client certificate)")
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ImproperlyConfigured(f"MQTT_URL {name}: no such file {path!r}")
    return BrokerSettings(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        **files,
        protocol=protocol,
    )


def broker_settings() -> BrokerSettings:
    if settings.MQTT_URL:
        return parse_mqtt_url(settings.MQTT_URL)
    from mqtt_bridge.embedded import embedded_credentials

    username, password, port = embedded_credentials()
    return BrokerSettings(
        host=settings.EMBEDDED_MQTT_HOST, port=port, username=username, password=password,
        protocol="3.1.1", embedded=True,
    )  # fmt: skip
