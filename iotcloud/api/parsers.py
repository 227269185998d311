"""JSON parsing that cannot be used to exhaust memory or the stack."""

import json

from django.conf import settings
from rest_framework import exceptions, parsers


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"


class LimitedJSONParser(parsers.JSONParser):
    """Refuses bodies over API_MAX_BODY_BYTES (413) and pathological nesting (400).

    DRF reads the raw stream, bypassing Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
    so the size limit is enforced here, on the bytes actually read.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes (API_MAX_BODY_BYTES)")
        if not raw.strip():
            raise exceptions.ParseError("Request body is empty; expected a JSON object")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except UnicodeDecodeError as exc:
            raise exceptions.ParseError(f"Request body is not valid UTF-8: {exc.reason}") from None
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - document is nested too deeply") from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        # A \uD800-style escape decodes to text that can be neither stored nor
        # echoed back in an error; refuse it here, once, for every endpoint.
        if b"\\u" in raw and _has_lone_surrogate(data):
            raise exceptions.ParseError("JSON parse error - unpaired surrogate escape (\\uD800-\\uDFFF)")
        return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
