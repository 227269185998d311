"""A device's new token on its way to the broker: encrypted at rest, erased once applied.

Shared by the domain (devices.services seals it) and the bridge (mqtt_bridge's accounts unseal it).

Mosquitto's dynamic security takes passwords in clear over its control topic, and only the
moment of provisioning or rotation knows the token (the database keeps its sha256 digest).
The token waits, encrypted with Fernet (AES-128-CBC + HMAC), until the bridge has applied it,
so a broker outage at provisioning time delays the account instead of losing it.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    secret = settings.BROKER_CREDENTIALS_KEY or settings.SECRET_KEY
    key = hashlib.sha256(b"iotcloud-broker-credentials:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def seal(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode()


def unseal(sealed: str) -> str | None:
    """The token, or None when it cannot be read (key changed): the account then needs a rotation."""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError):
        return None
