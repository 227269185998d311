"""Domain errors raised by services, mapped to HTTP once (iotcloud.api.errors), and the error body.

Services raise these; the REST layer, the admin and the MQTT bridge each
turn them into their own kind of answer (a status code, a form error, a
rejected message) without re-deciding what went wrong. Every JSON error the
project answers is built by error_body: the DRF exception handler, the admin's
JSON endpoints, the broker hooks, the health and metrics views.
"""

from __future__ import annotations


def error_body(detail: str, code: str, **extra) -> dict:
    """`{"detail": <a sentence naming the problem>, "code": <stable, for clients>, **extra}`."""
    return {"detail": detail, "code": code, **extra}


class DomainError(Exception):
    """A rule was broken. `code` is stable for clients; `extra` goes in the body."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, **extra):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra

    def body(self) -> dict:
        return error_body(self.message, self.code, **self.extra)


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class PayloadTooLarge(DomainError):
    status = 413
    code = "too_large"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class VersionConflict(Conflict):
    code = "version_conflict"


class TooManyRequests(DomainError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(DomainError):
    """A service the answer depends on (e.g. a tenant's pre-provisioning hook) did not answer: retry later."""

    status = 503
    code = "unavailable"
