"""Rules shared by the domain and its adapters: ids, integers, limits. Standard library only, no Django.

Services check input with these; forms, serializers and the MQTT bridge import the same
definitions (for help texts and their own parsing), so no rule is written twice. Like
twin.shadow, this is the kernel: every layer may import it, it imports nothing of ours.
"""

from __future__ import annotations

# --- ids -----------------------------------------------------------------------------------------
# Ids go into MQTT topics, so MQTT's separators and wildcards (/ + #) can never appear in them.

ID_CHARS = "A-Za-z0-9_.:-"  # a regex character class
ID_CHARS_TEXT = "A-Z a-z 0-9 _ . : -"  # the same, as messages spell it


def id_pattern(max_length: int) -> str:
    return rf"^[{ID_CHARS}]{{1,{max_length}}}$"


def id_rule(max_length: int) -> str:
    """How messages and help texts state the rule, e.g. `1-128 of A-Z a-z 0-9 _ . : -`."""
    return f"1-{max_length} of {ID_CHARS_TEXT}"


TENANT_ID_MAX_LENGTH = 63
TENANT_ID_RE = r"^[a-z0-9](?:[a-z0-9_-]{0,62})$"
TENANT_ID_RULE = "1-63 of a-z 0-9 _ - starting with a letter or digit"

DEVICE_ID_MAX_LENGTH = 128
DEVICE_ID_RE = id_pattern(DEVICE_ID_MAX_LENGTH)
DEVICE_ID_RULE = id_rule(DEVICE_ID_MAX_LENGTH)

JOB_ID_MAX_LENGTH = 64
JOB_ID_RE = id_pattern(JOB_ID_MAX_LENGTH)
JOB_ID_RULE = id_rule(JOB_ID_MAX_LENGTH)

DOCUMENT_TYPE_MAX_LENGTH = 64
DOCUMENT_TYPE_RE = id_pattern(DOCUMENT_TYPE_MAX_LENGTH)
DOCUMENT_TYPE_RULE = id_rule(DOCUMENT_TYPE_MAX_LENGTH)

TAG_KEY_MAX_LENGTH = 64
TAG_KEY_RE = id_pattern(TAG_KEY_MAX_LENGTH)
TAG_KEY_RULE = id_rule(TAG_KEY_MAX_LENGTH)

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
