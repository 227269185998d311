"""Request bodies that cannot be used to exhaust memory or the stack: JSON, and raw CSV for uploads."""

from rest_framework import exceptions, parsers

from iotcloud.limits import setting_limit
from iotcloud.rules import Limit
from iotcloud.strict_json import JSONError, loads

JSONBodyError = JSONError  # what callers catch: kind, message, reason, status (413 for size)


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"


def parse_json_bytes(raw: bytes, *, limit: Limit | None = None):
    """A JSON body: at most `limit` bytes (API_MAX_BODY_BYTES), not blank, then iotcloud.strict_json.

    The API's parser, the admin's twin editor and JSON fields and the broker hooks read
    their bodies through here, so none of them can be made to raise a 500.
    """
    limit = setting_limit("API_MAX_BODY_BYTES") if limit is None else limit
    if len(raw) > limit:
        raise JSONError(f"Request body is larger than {limit} bytes ({limit.name})", kind="too_large")
    if not raw.strip():
        raise JSONError("Request body is empty; expected a JSON object", kind="empty")
    return loads(raw, what="Request body")


class LimitedJSONParser(parsers.JSONParser):
    """Refuses bodies over API_MAX_BODY_BYTES (413) and pathological nesting (400).

    DRF reads the raw stream, bypassing Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
    so the size limit is enforced here, on the bytes actually read. A subclass
    may name another limit (`limit_setting`) for an endpoint taking more.
    """

    limit_setting = "API_MAX_BODY_BYTES"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = setting_limit(self.limit_setting)
        raw = stream.read(limit + 1) if stream is not None else b""
        try:
            return parse_json_bytes(raw, limit=limit)
        except JSONError as exc:
            raise (RequestTooLarge if exc.status == 413 else exceptions.ParseError)(exc.message) from None


class LimitedCSVParser(parsers.BaseParser):
    """`text/csv` bodies as bytes (the view reads them), at most `limit_setting` bytes (413)."""

    media_type = "text/csv"
    limit_setting = "API_MAX_BODY_BYTES"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        limit = setting_limit(self.limit_setting)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes ({limit.name})")
        return raw
