"""Desired-state delivery: reconcile what devices should have retained with the database.

The database is the source of truth. A device needs a (re)publish when
desired_published_version < desired_version; decommissioning resets
desired_published_version to 0 so the retained message gets cleared the
same way. Rows are claimed with FOR UPDATE SKIP LOCKED: several bridges
split the work, a device is never published by two at once, and because a
claim reads the latest desired state under the row lock, an older version
is never published after a newer one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud import outbox
from mqtt_bridge import topics
from twin.engine import LeasedEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publication:
    topic: str
    payload: bytes  # b"" clears the retained message
    device_pk: int
    version: int
    retain: bool = True
    row_pk: int = 0  # its row when that is not the device's: a ShadowEvent's, a NamedShadow's


# publish(publications) -> the subset the broker acknowledged
Publisher = Callable[[Sequence[Publication]], Sequence[Publication]]


def desired_payload(desired: dict, version: int, updated_at) -> bytes:
    timestamp = updated_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if updated_at else None
    return json.dumps({"desired": desired, "version": version, "timestamp": timestamp}, separators=(",", ":")).encode()


# The device_state columns a retained desired message is built from (desired_publications).
DESIRED_FIELDS = ("id", "tenant_id", "device_id", "status", "desired_state", "desired_version", "shadow_updated_at")


def desired_publications(rows: Sequence[tuple]) -> list[Publication]:
    """The retained desired message of each row (DESIRED_FIELDS): the latest state, or the clearing
    empty message for a decommissioned device."""
    return [
        Publication(
            topic=topics.desired(tenant_id, device_id),
            payload=b"" if status != DeviceStatus.ACTIVE else desired_payload(desired, version, updated_at),
            device_pk=pk,
            version=version,
        )
        for pk, tenant_id, device_id, status, desired, version, updated_at in rows
    ]


# The twin_named_shadows columns a named shadow's retained desired message is built from.
NAMED_DESIRED_FIELDS = ("id", "device_id", "device__tenant_id", "device__device_id", "device__status", "name",
                        "deleted", "desired_state", "desired_version", "shadow_updated_at")  # fmt: skip


def named_desired_publications(rows: Sequence[tuple]) -> list[Publication]:
    """The retained `.../shadow/name/<name>/desired` of each named shadow (NAMED_DESIRED_FIELDS), the
    seed's payload; the clearing empty message for a deleted shadow or a decommissioned device."""
    return [
        Publication(
            topic=topics.named_desired(tenant_id, device_id, name),
            payload=b"" if deleted or status != DeviceStatus.ACTIVE else desired_payload(desired, version, updated_at),
            device_pk=device_pk,
            version=version,
            row_pk=pk,
        )
        for pk, device_pk, tenant_id, device_id, status, name, deleted, desired, version, updated_at in rows
    ]


def named_desired_deliver_pending(*, publish: Publisher, limit: int | None = None) -> int:
    """desired_deliver_pending for named shadows: the same reconciliation on twin_named_shadows."""
    from twin.models import NamedShadow

    with transaction.atomic():
        rows = list(
            NamedShadow.objects.filter(desired_version__gt=F("desired_published_version"))
            .order_by("id")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list(*NAMED_DESIRED_FIELDS)[: limit or settings.MQTT_DELIVERY_BATCH]
        )
        if not rows:
            return 0
        acknowledged = publish(named_desired_publications(rows))
        for publication in acknowledged:
            NamedShadow.objects.filter(pk=publication.row_pk, desired_published_version__lt=publication.version).update(
                desired_published_version=publication.version
            )
    logger.info("named shadows' desired published: %d of %d", len(acknowledged), len(rows))
    return len(acknowledged)


def desired_deliver_pending(*, publish: Publisher, limit: int | None = None) -> int:
    """Publish one batch of pending desired states; returns how many were acknowledged.

    Only acknowledged publications are recorded; the rest stay pending and are
    retried on the next pass, so a broker outage loses nothing.
    """
    with transaction.atomic():
        rows = _claim("desired_version", "desired_published_version", limit, DESIRED_FIELDS)
        if not rows:
            return 0
        publications = desired_publications(rows)
        acknowledged = publish(publications)
        _record_published(acknowledged)
        # Operator screens show the published version ("delivered to the broker").
        names = {pk: (tenant_id, device_id) for pk, tenant_id, device_id, *_ in rows}
        by_tenant: dict[str, list[str]] = {}
        for publication in acknowledged:
            tenant_id, device_id = names[publication.device_pk]
            by_tenant.setdefault(tenant_id, []).append(device_id)
        for tenant_id, device_ids in by_tenant.items():
            outbox.twins_changed(tenant_id, device_ids)
    cleared = sum(1 for publication in acknowledged if not publication.payload)
    logger.info("desired published: %d, cleared: %d (of %d pending)", len(acknowledged) - cleared, cleared, len(rows))
    for publication in acknowledged:  # a line per device only when asked: a rollout publishes 100,000
        logger.debug(
            "desired %s topic=%s version=%d",
            "cleared" if not publication.payload else "published", publication.topic, publication.version,
        )  # fmt: skip
    return len(acknowledged)


def jobs_deliver_pending(*, publish: Publisher, limit: int | None = None) -> int:
    """Publish the jobs notifications of every device with a flagged execution (same reconciliation as desired).

    Per device: the seed's jobs/notify, and the AWS jobs/notify and jobs/notify-next in the enabled
    dialects (MQTT_DIALECTS), all retained (mqtt_bridge.jobs_api.notify_replies); cleared for a
    decommissioned device. notify-next only when the device's next execution is not the one it last
    announced (JobExecution.notified_next, moved once the broker acknowledged it), as AWS.
    The pending executions and the marks of the whole batch are one query each.
    Flagged executions are claimed with FOR UPDATE SKIP LOCKED; a device whose execution changes
    meanwhile waits for our commit and flags it again, so the newest lists are always published
    last. A device's flags are cleared only when the broker acknowledged every one of its messages.
    """
    from collections import Counter

    from jobs.models import JobExecution
    from jobs.selectors import pending_executions_for_devices
    from mqtt_bridge.jobs_api import notify_replies

    with transaction.atomic():
        flagged = list(
            JobExecution.objects.filter(notify_pending=True)
            .order_by("device_id", "id")
            .select_for_update(skip_locked=True)
            .values_list("id", "device_id")[: limit or settings.MQTT_DELIVERY_BATCH]
        )
        if not flagged:
            return 0
        device_pks = sorted({device_pk for _, device_pk in flagged})
        devices = Device.objects.filter(pk__in=device_pks).values_list("id", "tenant_id", "device_id", "status")
        lists = pending_executions_for_devices(device_pks)
        announced = dict(
            JobExecution.objects.filter(device_id__in=device_pks, notified_next=True).values_list("device_id", "id")
        )
        publications, next_of = [], {}
        for pk, tenant_id, device_id, status in devices:
            active = status == DeviceStatus.ACTIVE
            next_pk = lists[pk][0].pk if active and lists[pk] else None
            if next_pk != announced.get(pk) or not active:
                next_of[pk] = next_pk
            replies = notify_replies(
                tenant_id, device_id, lists[pk], active=active, dialects=settings.MQTT_DIALECTS,
                next_changed=pk in next_of,
            )  # fmt: skip
            publications += [Publication(r.topic, r.payload, device_pk=pk, version=0) for r in replies]
        expected = Counter(p.device_pk for p in publications)
        got = Counter(p.device_pk for p in publish(publications))
        acknowledged = {pk for pk, count in expected.items() if got[pk] == count}
        done = [execution_pk for execution_pk, device_pk in flagged if device_pk in acknowledged]
        JobExecution.objects.filter(pk__in=done).update(notify_pending=False)
        moved = [pk for pk in next_of if pk in acknowledged]
        if moved:
            JobExecution.objects.filter(device_id__in=moved, notified_next=True).update(notified_next=False)
            JobExecution.objects.filter(pk__in=[next_of[pk] for pk in moved if next_of[pk]]).update(notified_next=True)
    logger.info("jobs notify published for %d device(s)", len(acknowledged))
    return len(acknowledged)


def _claim(version: str, published: str, limit: int | None, fields: tuple[str, ...]) -> list[tuple]:
    """Lock a batch of devices whose `published` lags `version`; rows other bridges hold are skipped."""
    return list(
        Device.objects.filter(**{f"{version}__gt": F(published)})
        .order_by("id")
        .select_for_update(skip_locked=True)
        .values_list(*fields)[: limit or settings.MQTT_DELIVERY_BATCH]
    )


def _record_published(publications: Sequence[Publication]) -> None:
    if not publications:
        return
    column = "desired_published_version"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""
                UPDATE device_state AS d SET {column} = v.version
                FROM unnest(%s::bigint[], %s::integer[]) AS v(id, version)
                WHERE d.id = v.id AND d.{column} < v.version
                """,  # noqa: S608 (column is one of two constants)
                [[p.device_pk for p in publications], [p.version for p in publications]],
            )
        else:
            cursor.executemany(
                f"UPDATE device_state SET {column} = %s WHERE id = %s AND {column} < %s",  # noqa: S608
                [(p.version, p.device_pk, p.version) for p in publications],
            )


def shadow_events_deliver_pending(*, publish: Publisher, limit: int | None = None) -> int:
    """Publish one batch of shadow events (update/documents, update/delta) in both dialects; returns how many.

    Claimed oldest first with FOR UPDATE SKIP LOCKED and deleted once every message of the event was
    acknowledged (the rest stay for the next pass). Events a bridge leased to publish itself (those
    of its own batches, twin.engine.leased_events) are left to it until the lease ends. Not retained:
    they are news, not state. Events of devices decommissioned meanwhile are dropped. With several
    bridges two events of one shadow can be published out of order; their `version` tells which is
    newer (as AWS IoT says of its own).
    """
    from twin.models import ShadowEvent

    with transaction.atomic():
        rows = list(
            ShadowEvent.objects.filter(Q(leased_until__isnull=True) | Q(leased_until__lt=timezone.now()))
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "device_id", "shadow_name", "documents", "delta", "client_token", "created_at")[
                : limit or settings.MQTT_DELIVERY_BATCH
            ]
        )
        if not rows:
            return 0
        devices = {
            pk: (tenant_id, device_id)
            for pk, tenant_id, device_id in Device.objects.filter(
                pk__in={row[1] for row in rows}, status=DeviceStatus.ACTIVE
            ).values_list("id", "tenant_id", "device_id")
        }
        publications, expected = [], {}
        for pk, device_pk, name, documents, delta, token, created_at in rows:
            if device_pk in devices:
                event = LeasedEvent(pk, *devices[device_pk], device_pk, name, documents, delta, token, created_at)
                mine = shadow_event_publications(event)
                publications += mine
                expected[pk] = len(mine)
        acknowledged: dict[int, int] = {}
        for publication in publish(publications) if publications else []:
            acknowledged[publication.row_pk] = acknowledged.get(publication.row_pk, 0) + 1
        done = [pk for pk, *_ in rows if acknowledged.get(pk, 0) >= expected.get(pk, 0)]
        ShadowEvent.objects.filter(pk__in=done).delete()
    if done:
        logger.debug("shadow events published: %d", len(done))
    return len(done)


def shadow_event_publications(event: LeasedEvent) -> list[Publication]:
    """An event's messages: update/documents, and update/delta when due, in every enabled dialect."""
    extra = {"timestamp": int(event.created_at.timestamp()), **({"clientToken": event.client_token}
             if event.client_token else {})}  # fmt: skip
    if event.encoded is not None:  # the JSON its insert encoded: the same bytes, without encoding them again
        documents, delta = event.encoded
        tail = json.dumps(extra, separators=(",", ":"))[1:]  # the extra members and the closing brace
        bodies = [("update/documents", documents)] + ([("update/delta", delta)] if delta is not None else [])
        encoded = [(suffix, f"{body[:-1]},{tail}".encode()) for suffix, body in bodies]
    else:
        messages = [("update/documents", {**event.documents, **extra})]
        if event.delta is not None:
            messages.append(("update/delta", {**event.delta, **extra}))
        encoded = [(suffix, json.dumps(body, separators=(",", ":")).encode()) for suffix, body in messages]
    publications = []
    for dialect in topics.DIALECTS:
        if dialect in settings.MQTT_DIALECTS:
            for suffix, payload in encoded:
                topic = topics.shadow_topic(dialect, event.tenant_id, event.device_id, event.shadow_name, suffix)
                publications.append(Publication(topic, payload, event.device_pk, 0, retain=False, row_pk=event.pk))
    return publications
