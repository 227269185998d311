"""Provision tokens: random, shown once, stored as a sha256 digest."""

import hashlib
import secrets

PREFIX = "iotd_"


def new_provision_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


CLAIM_PREFIX = "iotc_"  # claim tokens (devices.claims): baked into firmware, shared by a fleet


def new_claim_token() -> str:
    return CLAIM_PREFIX + secrets.token_urlsafe(32)
