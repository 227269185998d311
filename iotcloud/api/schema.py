"""OpenAPI post-processing: answers every operation of a kind can give, declared once."""

from django.conf import settings

RATE_LIMITED = {
    "description": "Too many requests from this device (DEVICE_RATE_LIMIT); retry after Retry-After seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds to wait"}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "detail": {"type": "string"},
                    "code": {"type": "string", "enum": ["rate_limited"]},
                    "limit": {"type": "string"},
                    "burst": {"type": "integer"},
                    "retry_after": {"type": "integer"},
                },
                "required": ["detail", "code"],
            }
        }
    },
}


def add_device_rate_limit(result, generator, request, public):
    """Every device-API operation may answer 429 when per-device rate limiting is on."""
    if settings.DEVICE_RATE_LIMIT in ("", "0"):
        return result
    for path, operations in result.get("paths", {}).items():
        if path.startswith("/device/"):
            for method, operation in operations.items():
                if method != "parameters":  # path-level parameters, not an operation
                    operation.setdefault("responses", {}).setdefault("429", RATE_LIMITED)
    return result
