"""Twin writes: desired state (operators) and reported state (devices).

Every path that changes a shadow (REST, admin, MQTT bridge, commands) calls
these functions, so the versioning rules exist once:
- each desired write advances desired_version by exactly one, under a row
  lock, so concurrent writers never lose an update;
- a report never moves reported_version backwards and never above
  desired_version, in one conditional UPDATE (no read-then-write race).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud import (
    lookups,  # noqa: F401  (registers __any_of)
    outbox,
)
from iotcloud.errors import Conflict, DomainError, InvalidInput, NotFound, PayloadTooLarge, VersionConflict
from iotcloud.limits import check_document
from iotcloud.rules import INT32_MAX, fits_int32, is_integer
from iotcloud.strict_json import JSONError, loads
from twin.shadow import merge_patch

logger = logging.getLogger(__name__)


class DesiredMode(StrEnum):
    MERGE = "merge"  # RFC 7386 merge patch: null deletes a key
    REPLACE = "replace"


def check_version(version, *, name: str = "version") -> int:
    if not is_integer(version):
        raise InvalidInput(f"{name} must be an integer", code="invalid_version")
    if not fits_int32(version):  # would overflow the column and fail in the database
        raise InvalidInput(f"{name} is out of range (at most {INT32_MAX})", code="invalid_version")
    return version


def _decommissioned(device_id: str) -> Conflict:
    return Conflict(f"Device {device_id!r} is decommissioned", code="device_decommissioned")


def _version_outside(version: int, desired_version: int) -> VersionConflict:
    """A report's version must be in 0..desired_version; the body carries the current desired_version."""
    return VersionConflict(
        f"version {version} is outside 0..{desired_version} (the current desired_version)",
        desired_version=desired_version,
    )


@transaction.atomic
def twin_update_desired(
    *, device: Device, document: dict, mode: DesiredMode = DesiredMode.MERGE, expected_version: int | None = None
) -> Device:
    """Merge or replace the desired state; returns the device with the new version."""
    # The patch is checked before it is applied (depth bounds the merge's
    # recursion), the result after (size).
    check_document(document, name="desired")
    if expected_version is not None:
        check_version(expected_version, name="expected_version")
    locked = Device.objects.select_for_update().filter(pk=device.pk).first()
    if locked is None:
        raise NotFound(f"Device {device.device_id!r} not found", code="device_not_found")
    if locked.status != DeviceStatus.ACTIVE:
        raise _decommissioned(locked.device_id)
    if expected_version is not None and expected_version != locked.desired_version:
        raise VersionConflict(
            f"expected_version {expected_version} does not match desired_version {locked.desired_version}",
            desired_version=locked.desired_version,
        )
    base = locked.desired_state if mode == DesiredMode.MERGE else {}
    # A replace is a merge onto {}: null members mean "absent" either way.
    desired = merge_patch(base, document)
    check_document(desired, name="desired")
    now = timezone.now()
    Device.objects.filter(pk=locked.pk).update(
        desired_state=desired, desired_version=F("desired_version") + 1, shadow_updated_at=now
    )
    outbox.wake_delivery()  # the bridge publishes it once this commits
    outbox.twins_changed(locked.tenant_id, [locked.device_id])
    locked.desired_state = desired
    locked.desired_version += 1
    locked.shadow_updated_at = now
    logger.info("desired %s %s v%d", mode.value, locked, locked.desired_version)
    return locked


@dataclass(frozen=True)
class Report:
    """One device report, as received (not yet validated)."""

    tenant_id: str
    device_id: str
    reported: object
    version: object


@dataclass(frozen=True)
class ReportOutcome:
    version: int


def twin_record_reported(*, device: Device, reported, version) -> ReportOutcome:
    """Store one report (the HTTP path); raises the DomainError that refuses it.

    The same checks and the same guarded UPDATE as a batch, minus the batch's
    row locks: one statement is atomic on its own, and the guard (active,
    version <= desired_version) decides; only a refusal costs a second read.
    """
    version = check_version(version)
    check_document(reported, name="reported")
    if version < 0 or not _apply_reports([(device.pk, version, reported)]):
        current = Device.objects.filter(pk=device.pk).only("status", "desired_version").first()
        if current is None or current.status != DeviceStatus.ACTIVE:
            raise _decommissioned(device.device_id)
        raise _version_outside(version, current.desired_version)
    outbox.twins_changed(device.tenant_id, [device.device_id])
    logger.debug("reported %s v%s", device, version)
    return ReportOutcome(version=version)


@transaction.atomic
def twin_record_reports(reports: Sequence[Report]) -> list[DomainError | None]:
    """Validate and store many reports in a few set-based statements.

    Returns one entry per report, in order: None when it was accepted, else
    the DomainError saying why not (bad document, unknown or decommissioned
    device, version outside 0..desired_version).

    Rules, the same for HTTP and MQTT:
    - reported_version = max(reported_version, version): never rolls back;
    - the state is replaced only by a report at least as new as the last one
      applied, so out-of-order delivery cannot restore an old state;
    - last_seen moves on every accepted report.
    Rows are locked in id order first, so concurrent batches cannot deadlock
    and the version check sees the committed desired_version.
    """
    results: list[DomainError | None] = [None] * len(reports)
    checked: list[tuple[int, Report, int]] = []
    for index, report in enumerate(reports):
        try:
            version = check_version(report.version)
            check_document(report.reported, name="reported")
        except DomainError as exc:
            results[index] = exc
        else:
            checked.append((index, report, version))
    if not checked:
        return results

    rows = _lock_devices({(r.tenant_id, r.device_id) for _, r, _ in checked})
    winners: dict[int, tuple[int, Report]] = {}  # device pk -> (version, report)
    for index, report, version in checked:
        row = rows.get((report.tenant_id, report.device_id))
        if row is None:
            results[index] = NotFound(
                f"Device {report.device_id!r} not found in tenant {report.tenant_id!r}", code="device_not_found"
            )
        elif row.status != DeviceStatus.ACTIVE:
            results[index] = _decommissioned(report.device_id)
        elif not 0 <= version <= row.desired_version:
            results[index] = _version_outside(version, row.desired_version)
        elif row.pk not in winners or version >= winners[row.pk][0]:
            # Within one batch only the newest report per device can win.
            winners[row.pk] = (version, report)
    if winners:
        _apply_reports([(pk, version, report.reported) for pk, (version, report) in sorted(winners.items())])
        by_tenant: dict[str, list[str]] = {}
        for _, report in winners.values():
            by_tenant.setdefault(report.tenant_id, []).append(report.device_id)
        for tenant_id, device_ids in by_tenant.items():
            outbox.twins_changed(tenant_id, device_ids)
    return results


class _Locked(NamedTuple):
    pk: int
    status: str
    desired_version: int


def _lock_devices(keys: set[tuple[str, str]]) -> dict[tuple[str, str], _Locked]:
    by_tenant: dict[str, list[str]] = {}
    for tenant_id, device_id in keys:
        by_tenant.setdefault(tenant_id, []).append(device_id)
    rows = {}
    for tenant_id, device_ids in by_tenant.items():
        locked = (
            Device.objects.filter(tenant_id=tenant_id, device_id__any_of=device_ids)
            .order_by("id")
            .select_for_update()
            .values_list("id", "device_id", "status", "desired_version")
        )
        rows.update({(tenant_id, device_id): _Locked(pk, status, v) for pk, device_id, status, v in locked})
    return rows


def _apply_reports(items: list[tuple[int, int, object]]) -> int:
    """One guarded UPDATE for the whole batch (PostgreSQL), or a loop of them (SQLite, the dev default).

    Returns how many devices were updated; the guard skips inactive devices and
    versions above desired_version.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                """
                UPDATE device_state AS d SET
                    reported_state = CASE WHEN d.reported_version <= v.version
                                          THEN v.reported::jsonb ELSE d.reported_state END,
                    reported_updated_at = CASE WHEN d.reported_version <= v.version
                                               THEN %s ELSE d.reported_updated_at END,
                    reported_version = GREATEST(d.reported_version, v.version),
                    last_seen = %s
                FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS v(id, version, reported)
                WHERE d.id = v.id AND d.status = 'active' AND d.desired_version >= v.version
                """,
                [now, now, [i[0] for i in items], [i[1] for i in items], [json.dumps(i[2]) for i in items]],
            )
            return cursor.rowcount
        updated = 0
        for pk, version, reported in items:
            cursor.execute(
                """
                UPDATE device_state SET
                    reported_state = CASE WHEN reported_version <= %s THEN %s ELSE reported_state END,
                    reported_updated_at = CASE WHEN reported_version <= %s THEN %s ELSE reported_updated_at END,
                    reported_version = MAX(reported_version, %s),
                    last_seen = %s
                WHERE id = %s AND status = 'active' AND desired_version >= %s
                """,
                [version, json.dumps(reported), version, now, version, now, pk, version],
            )
            updated += cursor.rowcount
        return updated


REPORT_FIELDS = frozenset({"reported", "version"})


def parse_report_payload(payload: bytes, *, max_bytes: int) -> tuple[object, object]:
    """The (reported, version) of a raw report (MQTT), with the HTTP API's envelope rules.

    The document and version themselves are checked by twin_record_reports.
    """
    if len(payload) > max_bytes:
        raise PayloadTooLarge(
            f"Payload is {len(payload)} bytes; the limit is {max_bytes} bytes (MQTT_MAX_PAYLOAD_BYTES)",
            code="too_large",
        )
    try:
        # A lone surrogate is left to the document rules, which name where it is (invalid_value).
        data = loads(payload, what="Payload", refuse_lone_surrogates=False)
    except JSONError as exc:
        message = "Payload is not valid UTF-8" if exc.kind == "encoding" else exc.message
        raise InvalidInput(message, code="parse_error") from None
    if not isinstance(data, dict):
        raise InvalidInput('Payload must be a JSON object {"reported": {...}, "version": N}', code="invalid")
    missing = sorted(REPORT_FIELDS - data.keys())
    if missing:
        raise InvalidInput(f"Missing field(s): {', '.join(missing)}", code="invalid")
    unknown = sorted(data.keys() - REPORT_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown field(s): {', '.join(map(repr, unknown))}", code="invalid")
    return data["reported"], data["version"]
