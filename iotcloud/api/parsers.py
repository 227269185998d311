"""JSON parsing that cannot be used to exhaust memory or the stack."""

import json

from django.conf import settings
from rest_framework import exceptions, parsers


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"


class JSONBodyError(ValueError):
    """Why a body is not acceptable JSON; status 413 for size, else 400."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def parse_json_bytes(raw: bytes, *, limit: int | None = None):
    """Strict JSON from bytes: size-limited, no NaN/Infinity, no stack exhaustion, no lone surrogates.

    Every JSON body the project reads goes through here (the API's parser, the admin's twin
    editor, the broker hooks), so none of them can be made to raise a 500.
    """
    limit = settings.API_MAX_BODY_BYTES if limit is None else limit
    if len(raw) > limit:
        raise JSONBodyError(f"Request body is larger than {limit} bytes (API_MAX_BODY_BYTES)", status=413)
    if not raw.strip():
        raise JSONBodyError("Request body is empty; expected a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise JSONBodyError(f"Request body is not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise JSONBodyError("JSON parse error - document is nested too deeply") from None
    except ValueError as exc:
        raise JSONBodyError(f"JSON parse error - {exc}") from None
    # A \uD800-style escape decodes to text that can be neither stored nor
    # echoed back in an error; refuse it here, once, for every endpoint.
    if b"\\u" in raw and _has_lone_surrogate(data):
        raise JSONBodyError("JSON parse error - unpaired surrogate escape (\\uD800-\\uDFFF)")
    return data


class LimitedJSONParser(parsers.JSONParser):
    """Refuses bodies over API_MAX_BODY_BYTES (413) and pathological nesting (400).

    DRF reads the raw stream, bypassing Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
    so the size limit is enforced here, on the bytes actually read.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        try:
            return parse_json_bytes(raw, limit=limit)
        except JSONBodyError as exc:
            raise (RequestTooLarge if exc.status == 413 else exceptions.ParseError)(exc.message) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
