"""The configured limits, and the one check of a stored JSON document against them.

Each limit is an iotcloud.rules.Limit named after its setting, so a refusal names the
setting to change. Every service that stores a JSON document (twin desired and reported
state, job document_params and status_details) calls check_document: the rule is
twin.shadow.validate_document, the depth and key limits are TWIN_MAX_DEPTH and
TWIN_MAX_KEY_LENGTH, and only the size limit differs from one document to another.
"""

from __future__ import annotations

from django.conf import settings

from iotcloud.errors import InvalidInput, PayloadTooLarge
from iotcloud.rules import Limit
from twin.shadow import DocumentError, Limits, validate_document


def setting_limit(name: str) -> Limit:
    """The value of setting `name`, carrying its name (`Limit(8192, "TWIN_MAX_DOCUMENT_BYTES")`)."""
    return Limit(getattr(settings, name), name)


def document_limits(max_bytes: str = "TWIN_MAX_DOCUMENT_BYTES") -> Limits:
    """The document limits as configured, with the size limit from setting `max_bytes`."""
    return Limits(
        max_bytes=setting_limit(max_bytes),
        max_depth=setting_limit("TWIN_MAX_DEPTH"),
        max_key_length=setting_limit("TWIN_MAX_KEY_LENGTH"),
    )


def check_document(document, *, name: str, max_bytes: str = "TWIN_MAX_DOCUMENT_BYTES"):
    """`document` if it keeps the rules and limits; else PayloadTooLarge (size, 413) or InvalidInput (400).

    `name` starts the messages ("desired.a is nested 7 levels deep ..."); the code is the
    DocumentError's (not_an_object, too_large, too_deep, key_too_long, invalid_value).
    """
    try:
        validate_document(document, document_limits(max_bytes), name=name)
    except DocumentError as exc:
        error = PayloadTooLarge if exc.code == "too_large" else InvalidInput
        raise error(exc.message, code=exc.code) from None
    return document
