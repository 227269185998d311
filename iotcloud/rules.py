"""Rules shared by the domain and its adapters: ids, rates, integers, limits. Standard library only, no Django.

Services check input with these; forms, serializers and the MQTT bridge import the same
definitions (for help texts and their own parsing), so no rule is written twice. Like
twin.shadow, this is the kernel: every layer may import it, it imports nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- ids -----------------------------------------------------------------------------------------
# Ids go into MQTT topics, so MQTT's separators and wildcards (/ + #) can never appear in them.


@dataclass(frozen=True)
class IdRule:
    """What an id may be: `pattern` (for re.fullmatch and validators), `text` (how messages and help
    texts say it, e.g. "1-128 of A-Z a-z 0-9 _ . : -"), `max_length` (the column)."""

    max_length: int
    pattern: str
    text: str

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None


def plain_id(max_length: int) -> IdRule:
    """1 to max_length of A-Z a-z 0-9 _ . : - (device ids, job ids, document types, tag keys)."""
    return IdRule(max_length, rf"^[A-Za-z0-9_.:-]{{1,{max_length}}}$", f"1-{max_length} of A-Z a-z 0-9 _ . : -")


TENANT_ID = IdRule(63, r"^[a-z0-9](?:[a-z0-9_-]{0,62})$", "1-63 of a-z 0-9 _ - starting with a letter or digit")
DEVICE_ID = plain_id(128)


def device_login(tenant_id: str, device_id: str) -> str:
    """A device's name on the broker: its username, its client id and its certificate's CN."""
    return f"{tenant_id}/{device_id}"


CLAIM_CERTIFICATE_PREFIX = "_claim-cert/"  # "_" starts no tenant id: no device's login


def claim_certificate_login(claim_id: int) -> str:
    """A claim certificate's name on the broker: its CN, so its username (and its account's)."""
    return f"{CLAIM_CERTIFICATE_PREFIX}{claim_id}"


JOB_ID = plain_id(64)
DOCUMENT_TYPE = plain_id(64)
TAG_KEY = plain_id(64)
# Fleet provisioning by claim (devices.claims): a template's name, a device's serial (the template's
# device_id_prefix + the serial is the new device's id, so both keep DEVICE_ID's characters).
PROVISIONING_TEMPLATE_NAME = plain_id(64)
SERIAL = plain_id(64)
DEVICE_ID_PREFIX = IdRule(64, r"^[A-Za-z0-9_.:-]{0,64}$", "0-64 of A-Z a-z 0-9 _ . : -")
# Named shadows, as AWS IoT allows them: no "$" (AWS reserves it), no "." (kept out of topics' way).
SHADOW_NAME = IdRule(64, r"^[A-Za-z0-9:_-]{1,64}$", "1-64 of A-Z a-z 0-9 _ : -")
# A client's request id (AWS clientToken): echoed in the answer; AWS refuses more than 64 bytes.
CLIENT_TOKEN_MAX_BYTES = 64

# --- rates -----------------------------------------------------------------------------------------
# A rate limit setting (DEVICE_RATE_LIMIT, MQTT_REPORT_RATE_LIMIT): "20/s", "600/m", "100/10s";
# groups: count, multiplier (may be empty), unit. Empty or "0" means no limit.
RATE_RE = re.compile(r"^(\d+)/(\d*)(s|sec|second|m|min|minute|h|hour|d|day)s?$", re.IGNORECASE)

# --- integers --------------------------------------------------------------------------------------

INT32_MAX = 2**31 - 1  # versions and execution numbers are 32-bit integer columns
INT64_MAX = 2**63 - 1  # row ids (bigint)


def is_integer(value: object) -> bool:
    """An integer in the JSON sense: 3 is one; True, 3.0 and "3" are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def fits_int32(value: int) -> bool:
    """Whether a 32-bit column holds it, either sign (beyond, the database would refuse it)."""
    return abs(value) <= INT32_MAX


def fits_int64(value: int) -> bool:
    return -INT64_MAX - 1 <= value <= INT64_MAX


def valid_pk(pk: int) -> bool:
    """Whether a number (from a URL, a query string) can be a row id at all: 1..2**63-1.

    Beyond 64 bits SQLite raises OverflowError, so such numbers never reach a query.
    """
    return 0 < pk <= INT64_MAX


# --- limits ----------------------------------------------------------------------------------------


class Limit(int):
    """A limit's value that knows the setting it comes from, so a refusal can name what to change.

    It is the number itself (compares, formats and computes as an int):
    `f"the limit is {limit} bytes ({limit.name})"` reads "the limit is 8192 bytes (TWIN_MAX_DOCUMENT_BYTES)".
    """

    name: str

    def __new__(cls, value: int, name: str) -> Limit:
        limit = super().__new__(cls, value)
        limit.name = name
        return limit

    def __repr__(self) -> str:
        return f"Limit({int(self)}, name={self.name!r})"

    __str__ = int.__repr__  # the number, not the repr above
