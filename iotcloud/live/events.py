"""Live-update events for operator screens, sent once the change commits.

Services announce changes through iotcloud.outbox; this module listens and sends
the message to the tenant's group on the channel layer when (and only if) the
transaction commits, from whichever process made the change (web, bridge, sweeper). Events are small
notifications ("these devices / jobs changed"); screens fetch what they show
through the admin's JSON endpoints, so sync status and progress are computed
in one place. Delivery is best effort: a lost event costs a stale badge
until the next one, never data.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from iotcloud import outbox

logger = logging.getLogger(__name__)

TWIN_CHANGED = "twin.changed"
JOBS_CHANGED = "jobs.changed"


def tenant_group(tenant_id: str) -> str:
    return f"tenant.{tenant_id}"  # tenant ids are [a-z0-9_-]: valid group names


def on_change(sender, *, tenant_id: str, ids: list[str], **kwargs) -> None:
    """iotcloud.outbox's `changed` receiver (connected in IotcloudConfig.ready), after commit."""
    if not settings.LIVE_UPDATES:
        return
    key = "devices" if sender == outbox.TWINS else "jobs"
    kind = TWIN_CHANGED if sender == outbox.TWINS else JOBS_CHANGED
    _send(tenant_group(tenant_id), {"type": kind, "tenant": tenant_id, key: ids})


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None or not getattr(layer, "has_listeners", lambda group: True)(group):
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a screen missing an update must never fail the write that caused it
        logger.warning("live update to %s not sent", group, exc_info=True)
