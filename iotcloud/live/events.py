"""Live-update events for operator screens, sent once the change commits.

Services call these after a write; the message goes to the tenant's group on
the channel layer when (and only if) the transaction commits, from whichever
process made the change (web, bridge, sweeper). Events are small
notifications ("these devices / jobs changed"); screens fetch what they show
through the admin's JSON endpoints, so sync status and progress are computed
in one place. Delivery is best effort: a lost event costs a stale badge
until the next one, never data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

TWIN_CHANGED = "twin.changed"
JOBS_CHANGED = "jobs.changed"


def tenant_group(tenant_id: str) -> str:
    return f"tenant.{tenant_id}"  # tenant ids are [a-z0-9_-]: valid group names


def twins_changed(tenant_id: str, device_ids: Iterable[str]) -> None:
    _after_commit(tenant_id, {"type": TWIN_CHANGED, "tenant": tenant_id, "devices": sorted(set(device_ids))})


def jobs_changed(tenant_id: str, job_ids: Iterable[str]) -> None:
    _after_commit(tenant_id, {"type": JOBS_CHANGED, "tenant": tenant_id, "jobs": sorted(set(job_ids))})


def _after_commit(tenant_id: str, message: dict) -> None:
    if settings.LIVE_UPDATES and (message.get("devices") or message.get("jobs")):
        transaction.on_commit(lambda: _send(tenant_group(tenant_id), message))


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None or not getattr(layer, "has_listeners", lambda group: True)(group):
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a screen missing an update must never fail the write that caused it
        logger.warning("live update to %s not sent", group, exc_info=True)
