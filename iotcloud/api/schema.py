"""OpenAPI pieces every API shares, declared once: error responses, the tenant parameter, the 429."""

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter

from iotcloud.api.serializers import ErrorSerializer

TENANT_PARAM = OpenApiParameter("tenant", str, description="Superusers: the device's tenant when ids collide.")


def error_responses(*statuses: int) -> dict:
    """`responses` entries for these error statuses, each an ErrorSerializer body."""
    return dict.fromkeys(statuses, ErrorSerializer)


OPERATOR_ERRORS = error_responses(400, 401, 403, 404, 409, 413)  # what an operator endpoint may answer

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
