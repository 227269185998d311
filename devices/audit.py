"""The audit trail: who changed what, when and through which channel (devices.models.AuditEvent).

The writers record; the adapters say who is acting:
- `acting(actor, channel)` around a block (the bridge: channel "mqtt"; a desired-state job: its
  "job:<id>"); the web request's operator or device is read from the request itself
  (devices.audit.AuditMiddleware binds it: DRF's authentication sets request.user on it too);
- `who(by_device=...)` is the actor of a change now: a device's own change is always the device.
Recording is set-based and in the change's transaction (twin.engine adds its rows to the write it
sends anyway); `audit_prune()` drops what is older than AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from devices.models import AuditEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    actor: str
    channel: str


SYSTEM = Actor("system", "system")
_acting: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor", default=None)
_request: contextvars.ContextVar[object | None] = contextvars.ContextVar("audit_request", default=None)


@contextlib.contextmanager
def acting(actor: str, channel: str) -> Iterator[None]:
    token = _acting.set(Actor(actor[:160], channel))
    try:
        yield
    finally:
        _acting.reset(token)


def who(*, device_key: tuple[str, str] | None = None) -> Actor:
    """The actor of a change made now; `device_key` (tenant, device) when the device made it itself."""
    explicit, request = _acting.get(), _request.get()
    channel = explicit.channel if explicit else _channel(request) if request is not None else SYSTEM.channel
    if device_key is not None:
        return Actor(f"device:{device_key[0]}/{device_key[1]}", channel)
    if explicit is not None:
        return explicit
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and getattr(user, "is_authenticated", False) and hasattr(user, "get_username"):
        return Actor(f"operator:{user.get_username()}"[:160], channel)
    return SYSTEM


def _channel(request) -> str:
    path = getattr(request, "path", "")
    return "admin" if path.startswith("/admin") else "http" if path.startswith("/device/") else "api"


class AuditMiddleware:
    """Binds the request, so that a change made while serving it knows its operator (or device)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def audit_record(*, tenant_id: str, action: str, device_id: int | None = None, job_id: str = "", before=None,
                 after=None, version: int | None = None, actor: Actor | None = None) -> None:  # fmt: skip
    """One event (device lifecycle, job actions); desired writes are twin.engine's, set-based."""
    actor = actor or who()
    AuditEvent.objects.create(tenant_id=tenant_id, device_id=device_id, at=timezone.now(), actor=actor.actor,
                              channel=actor.channel, action=action, job_id=job_id[:64], before=before,
                              after=after, version=version)  # fmt: skip


def audit_rows(rows: Sequence[dict]) -> None:
    """Many events at once (dicts of AuditEvent fields)."""
    AuditEvent.objects.bulk_create([AuditEvent(**row) for row in rows], batch_size=2000)


def audit_prune(*, now=None) -> int:
    """Delete events older than AUDIT_RETENTION_DAYS (0: keep everything)."""
    days = settings.AUDIT_RETENTION_DAYS
    if days <= 0:
        return 0
    deleted, _ = AuditEvent.objects.filter(at__lt=(now or timezone.now()) - timedelta(days=days)).delete()
    if deleted:
        logger.info("audit: %d event(s) older than %d days pruned", deleted, days)
    return deleted
