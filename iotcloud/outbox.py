"""What the domain asks to happen once its transaction commits, without knowing who does it.

Services record state and say "something changed"; the adapters (the MQTT bridge, the live
screens) act on it. So the domain never imports an adapter:

- `wake_delivery()`: the broker is behind the database (desired state, jobs notify lists,
  device accounts). PostgreSQL NOTIFY on `DELIVERY_CHANNEL` is transactional (delivered on
  commit, dropped on rollback) and wakes the bridges at once; on SQLite they poll.
- `twins_changed()` / `jobs_changed()`: the `changed` signal, sent after commit to whoever
  listens (iotcloud.live connects its sender in IotcloudConfig.ready). A listener failing is
  logged and never fails the write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import connection, transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

DELIVERY_CHANNEL = "iotcloud_desired"
TWINS = "twins"
JOBS = "jobs"

# send(sender=TWINS | JOBS, tenant_id=str, ids=list[str]) after the change committed.
changed = Signal()


def wake_delivery() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(*wake_delivery_statement())


def wake_delivery_statement() -> tuple[str, list]:
    """wake_delivery as a statement, for a caller that sends its writes in one round trip (PostgreSQL)."""
    return "SELECT pg_notify(%s, '')", [DELIVERY_CHANNEL]


def twins_changed(tenant_id: str, device_ids: Iterable[str]) -> None:
    _after_commit(TWINS, tenant_id, device_ids)


def jobs_changed(tenant_id: str, job_ids: Iterable[str]) -> None:
    _after_commit(JOBS, tenant_id, job_ids)


def _after_commit(kind: str, tenant_id: str, ids: Iterable[str]) -> None:
    ids = sorted(set(ids))
    if ids and changed.has_listeners(kind):
        transaction.on_commit(lambda: _send(kind, tenant_id, ids))


def _send(kind: str, tenant_id: str, ids: list[str]) -> None:
    for receiver, result in changed.send_robust(sender=kind, tenant_id=tenant_id, ids=ids):
        if isinstance(result, Exception):
            logger.warning("change listener %r failed for %s %s", receiver, kind, tenant_id, exc_info=result)
