"""Twin reads: sync status as SQL, and the twin document as operators see it."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Count, F, Q
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import Device
from twin.choices import SYNC_STATUSES, SyncStatus, shown_sync_status
from twin.engine import Shadow, shadow_names
from twin.models import NamedShadow
from twin.shadow import compute_delta, sync_status


def sync_status_q(status: str, *, now: datetime | None = None) -> Q:
    """The rule of twin.shadow.sync_status, as a filter (kept equal by tests)."""
    now = now or timezone.now()
    stale = Q(last_seen__isnull=True) | Q(last_seen__lt=now - settings.TWIN_STALE_AFTER)
    if status == SyncStatus.STALE:
        return stale
    if status == SyncStatus.SYNCED:
        return ~stale & Q(reported_version__gte=F("desired_version"))
    if status == SyncStatus.PENDING:
        return ~stale & Q(desired_version__gt=F("reported_version"))
    raise ValueError(f"unknown sync status {status!r}")


def device_sync_status(device: Device, *, now: datetime | None = None) -> SyncStatus:
    return SyncStatus(
        sync_status(
            device.desired_version,
            device.reported_version,
            device.last_seen,
            now=now,
            stale_after=settings.TWIN_STALE_AFTER,
        )
    )


def twin_document(device: Device, shadow: Shadow | None = None) -> dict:
    """The twin as the operator API returns it: the classic shadow (with the names of the named
    ones), or the named `shadow` of the device."""
    source = shadow if shadow is not None else device
    desired = source.desired if shadow is not None else device.desired_state
    reported = source.reported if shadow is not None else device.reported_state
    document = {
        "device_id": device.device_id,
        "tenant": device.tenant_id,
        "status": device.status,
        "desired": desired,
        "reported": reported,
        "delta": compute_delta(desired, reported),
        "desired_version": source.desired_version,
        "reported_version": source.reported_version,
        "version": shadow.version if shadow is not None else device.shadow_version,
        "metadata": {"desired": source.desired_metadata, "reported": source.reported_metadata},
        "sync_status": SyncStatus(sync_status(source.desired_version, source.reported_version, device.last_seen,
                                              stale_after=settings.TWIN_STALE_AFTER)),
        "shadow_updated_at": source.shadow_updated_at,
        "reported_updated_at": source.reported_updated_at,
        "last_seen": device.last_seen,
    }  # fmt: skip
    if shadow is None:
        document["shadows"] = shadow_names(device)
    else:
        document["name"] = shadow.name
    return document


def named_shadow_summaries(device: Device) -> list[dict]:
    """The device's named shadows, each with its versions and sync status (one query)."""
    rows = (
        NamedShadow.objects.filter(device=device, deleted=False)
        .order_by("name")
        .values("name", "desired_version", "reported_version", "shadow_version", "shadow_updated_at",
                "reported_updated_at")
    )  # fmt: skip
    summaries = []
    for row in rows:
        row["version"] = row.pop("shadow_version")
        row["sync_status"] = sync_status(row["desired_version"], row["reported_version"], device.last_seen,
                                         stale_after=settings.TWIN_STALE_AFTER)  # fmt: skip
        summaries.append(row)
    return summaries


def twin_delta(device: Device) -> dict:
    delta = compute_delta(device.desired_state, device.reported_state)
    return {
        "device_id": device.device_id,
        "delta": delta,
        "in_sync": not delta and device.reported_version >= device.desired_version,
        "desired_version": device.desired_version,
        "reported_version": device.reported_version,
    }


def fleet_device_counts(*, now: datetime | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(devices by status, active devices by sync status), in one aggregate query."""
    now = now or timezone.now()
    by_sync = {status: Count("id", filter=sync_status_q(status, now=now)) for status in SYNC_STATUSES}
    # order_by() drops Device's default ordering, which would otherwise join the GROUP BY.
    rows = Device.objects.order_by().values("status").annotate(total=Count("id"), **by_sync)
    by_status = dict.fromkeys(DeviceStatus.values, 0)
    by_sync_status = dict.fromkeys(SYNC_STATUSES, 0)
    for row in rows:
        by_status[row["status"]] = row["total"]
        if row["status"] == DeviceStatus.ACTIVE:
            by_sync_status = {status: row[status] for status in SYNC_STATUSES}
    return by_status, by_sync_status


def sync_counts(devices, *, now: datetime | None = None) -> dict[str, int]:
    """Active devices of the queryset per sync status, and decommissioned ones: one aggregate query."""
    now = now or timezone.now()
    active = Q(status=DeviceStatus.ACTIVE)
    counts = devices.aggregate(
        **{status: Count("pk", filter=active & sync_status_q(status, now=now)) for status in SYNC_STATUSES},
        **{SyncStatus.DECOMMISSIONED.value: Count("pk", filter=Q(status=DeviceStatus.DECOMMISSIONED))},
    )
    return {name: counts[name] or 0 for name in SyncStatus.values}


def latest_reports(devices, *, limit: int, now: datetime | None = None) -> list[dict]:
    """The devices of the queryset that reported last, newest first, each with its sync badge
    (SyncStatus.DECOMMISSIONED for a retired device)."""
    now = now or timezone.now()
    rows = (
        devices.filter(reported_updated_at__isnull=False)
        .order_by("-reported_updated_at")
        .values("pk", "device_id", "tenant_id", "status", "desired_version", "reported_version", "last_seen",
                "reported_updated_at")[:limit]
    )  # fmt: skip
    return [
        {
            **row,
            "sync_status": shown_sync_status(
                row["status"],
                sync_status(row["desired_version"], row["reported_version"], row["last_seen"], now=now,
                            stale_after=settings.TWIN_STALE_AFTER),
            ),
        }
        for row in rows
    ]  # fmt: skip
