"""Every shadow write, classic and named, from operators and devices, over HTTP, the admin and MQTT.

One code path (`shadow_apply`), so the rules exist once:
- the rows are locked (devices in id order, then named shadows in id order) and every change is
  decided in memory against the locked state, then written in a few set-based statements;
- `shadow_version` (AWS IoT's single document version) advances by one with every accepted change
  of desired or reported; a request's `version`, when given, must equal it (else 409);
- desired_version (the seed's) advances with every desired change; reported_version never goes
  back and never passes desired_version: a seed report names the desired version it reflects,
  any other report catches reported_version up to desired_version when it leaves no delta;
- metadata keeps a timestamp per leaf (twin.shadow.merge_metadata);
- every accepted change leaves a ShadowEvent (update/documents and, when desired and reported
  differ, update/delta) in the same transaction, for the bridge to publish.
The classic shadow is the device row's seed columns; a named shadow has the same columns in
twin_named_shadows, so `Shadow` below reads and writes either.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from devices.audit import audit_rows, who
from devices.choices import DesiredWrites, DeviceStatus
from devices.models import Device, Tenant
from iotcloud import (
    lookups,  # noqa: F401  (registers __any_of)
    outbox,
)
from iotcloud.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, VersionConflict
from iotcloud.limits import check_document
from iotcloud.rules import INT32_MAX, SHADOW_NAME, fits_int32, is_integer
from twin.models import NamedShadow, ShadowEvent
from twin.shadow import compute_delta, delta_metadata, leaf_metadata, merge_metadata, merge_patch

logger = logging.getLogger(__name__)

CLASSIC = ""  # the shadow name of the classic (unnamed) shadow


class Mode(StrEnum):
    MERGE = "merge"  # RFC 7386 merge patch: null deletes a key
    REPLACE = "replace"


class _Absent:
    def __repr__(self):
        return "ABSENT"


ABSENT: Any = _Absent()  # "this change does not touch that part" (None means "clear it")


def check_version(version, *, name: str = "version") -> int:
    if not is_integer(version):
        raise InvalidInput(f"{name} must be an integer", code="invalid_version")
    if not fits_int32(version):  # would overflow the column and fail in the database
        raise InvalidInput(f"{name} is out of range (at most {INT32_MAX})", code="invalid_version")
    return version


def check_shadow_name(name) -> str:
    if name != CLASSIC and not SHADOW_NAME.matches(name):
        shown = name[:80] if isinstance(name, str) else name
        raise InvalidInput(f"Invalid shadow name {shown!r}: use {SHADOW_NAME.text}", code="invalid_shadow_name")
    return name


@dataclass(frozen=True)
class ShadowChange:
    """One requested change. `desired`/`reported`: ABSENT (untouched), None (clear) or a document."""

    tenant_id: str
    device_id: str
    shadow_name: str = CLASSIC
    desired: Any = ABSENT
    reported: Any = ABSENT
    desired_mode: Mode = Mode.MERGE
    reported_mode: Mode = Mode.MERGE
    version: Any = None  # AWS: the document version the writer read; must be current
    expected_desired_version: Any = None  # the operator API's expected_version
    report_version: Any = None  # the seed's report: the desired version the state reflects
    delete: bool = False
    by_device: bool = False
    client_token: str | None = None
    read: bool = False  # not a change: the shadow as it stands at this point of the sequence (a get)
    events: bool = True  # leave update/documents (and update/delta) for the bridge
    create: bool = False  # refused (409) if the shadow exists: decided under the row lock


@dataclass
class Shadow:
    """A shadow's row in memory (locked when written)."""

    device_pk: int
    tenant_id: str
    device_id: str
    device_status: str
    name: str = CLASSIC
    pk: int | None = None  # named shadow row (None: not created yet)
    exists: bool = True  # classic: always; named: a row that is not deleted
    desired: dict = field(default_factory=dict)
    reported: dict = field(default_factory=dict)
    desired_metadata: dict = field(default_factory=dict)
    reported_metadata: dict = field(default_factory=dict)
    desired_version: int = 0
    reported_version: int = 0
    version: int = 0
    shadow_updated_at: datetime | None = None
    reported_updated_at: datetime | None = None
    dirty: bool = False
    seen: bool = False  # the device spoke: last_seen moves (classic row only)
    desired_moved: bool = False  # desired_version advanced: its retained message is due

    def document(self) -> dict:
        """State, metadata and version (the documents message's previous/current)."""
        return {
            "state": {"desired": self.desired, "reported": self.reported},
            "metadata": {"desired": self.desired_metadata, "reported": self.reported_metadata},
            "version": self.version,
        }

    def full_document(self, *, versions: bool = False) -> dict:
        """As AWS's get/accepted: state with delta (when there is one), metadata, version; with
        `versions`, the seed's desired_version and reported_version beside it (native answers)."""
        delta = compute_delta(self.desired, self.reported)
        document = self.document()
        if delta:
            document["state"]["delta"] = delta
            document["metadata"]["delta"] = delta_metadata(delta, self.desired, self.desired_metadata)
        if versions:
            document["desired_version"] = self.desired_version
            document["reported_version"] = self.reported_version
        return document

    def delta_message(self) -> dict | None:
        delta = compute_delta(self.desired, self.reported)
        if not delta:
            return None
        return {
            "state": delta,
            "metadata": delta_metadata(delta, self.desired, self.desired_metadata),
            "version": self.version,
        }


@dataclass(frozen=True)
class ChangeResult:
    error: DomainError | None = None
    accepted: dict | None = None  # update/accepted (state and metadata as requested, version) or delete's
    version: int = 0
    desired_version: int = 0
    reported_version: int = 0
    desired_before: dict | None = None  # a desired write's: the desired state it went over (as it was stored)
    shadow: Shadow | None = None  # the shadow as the call left it (what was written; shared by its changes)


# --- reading --------------------------------------------------------------------------------------

_DEVICE_FIELDS = (
    "id", "tenant_id", "device_id", "status", "desired_state", "reported_state", "desired_metadata",
    "reported_metadata", "desired_version", "reported_version", "shadow_version", "shadow_updated_at",
    "reported_updated_at",
)  # fmt: skip
_NAMED_FIELDS = (
    "id", "device_id", "name", "deleted", "desired_state", "reported_state", "desired_metadata",
    "reported_metadata", "desired_version", "reported_version", "shadow_version", "shadow_updated_at",
    "reported_updated_at",
)  # fmt: skip

Key = tuple[str, str, str]  # (tenant_id, device_id, shadow name)


def load_shadows(keys, *, lock: bool = False, locked: Sequence[Device] = ()) -> dict[Key, Shadow]:
    """The shadows of the given keys whose device exists (named ones not created yet: exists=False).

    With lock, rows are locked FOR UPDATE: devices by tenant then id, then named shadows in id
    order, so concurrent writers cannot deadlock. Every device of a key is loaded with its classic shadow.
    `locked`: devices whose rows the caller already locked FOR UPDATE in this transaction and read
    then (a device request's token lookup): used as read, not read again.
    """
    given = {(d.tenant_id, d.device_id): d for d in locked} if lock else {}
    by_tenant: dict[str, set[str]] = {}
    for tenant_id, device_id, _ in keys:
        if (tenant_id, device_id) not in given:
            by_tenant.setdefault(tenant_id, set()).add(device_id)
    shadows: dict[Key, Shadow] = {}
    pks: dict[tuple[str, str], int] = {}
    rows = [_device_row(d) for key, d in given.items() if any(k[:2] == key for k in keys)]
    for tenant_id in sorted(by_tenant):  # every writer locks in the same order: tenant, then id
        rows.extend(_device_rows(tenant_id, sorted(by_tenant[tenant_id]), lock=lock))
    for pk, tenant_id, device_id, status, d, r, dm, rm, dv, rv, v, d_at, r_at in sorted(rows):
        pks[(tenant_id, device_id)] = pk
        shadows[(tenant_id, device_id, CLASSIC)] = Shadow(
            pk, tenant_id, device_id, status, CLASSIC, None, True, d, r, dm, rm, dv, rv, v, d_at, r_at
        )
    named = {(t, d, n) for t, d, n in keys if n != CLASSIC and (t, d) in pks}
    if named:
        ids = {pks[(t, d)]: (t, d) for t, d, _ in named}
        query = NamedShadow.objects.filter(device_id__in=sorted(ids), name__in=sorted({n for _, _, n in named}))
        if lock:
            query = query.order_by("id").select_for_update()
        found = {}
        for pk, device_pk, name, deleted, d, r, dm, rm, dv, rv, v, d_at, r_at in query.values_list(*_NAMED_FIELDS):
            found[(device_pk, name)] = (pk, deleted, d, r, dm, rm, dv, rv, v, d_at, r_at)
        for tenant_id, device_id, name in named:
            device = shadows[(tenant_id, device_id, CLASSIC)]
            row = found.get((device.device_pk, name))
            shadow = Shadow(device.device_pk, tenant_id, device_id, device.device_status, name, exists=False)
            if row is not None:
                pk, deleted, *state = row
                shadow = Shadow(device.device_pk, tenant_id, device_id, device.device_status, name, pk,
                                not deleted, *state)  # fmt: skip
            shadows[(tenant_id, device_id, name)] = shadow
    return shadows


def _device_row(device: Device) -> tuple:
    """A Device instance as _device_rows gives its row."""
    return tuple(getattr(device, field) for field in _DEVICE_FIELDS)


def device_written(device: Device, shadow: Shadow) -> Device:
    """`device` brought up to its classic shadow as a change left it (the inverse of _device_row), instead
    of reading the row back. Other fields (last_seen, tags) stay as the caller read them."""
    row = (shadow.device_pk, shadow.tenant_id, shadow.device_id, shadow.device_status, shadow.desired,
           shadow.reported, shadow.desired_metadata, shadow.reported_metadata, shadow.desired_version,
           shadow.reported_version, shadow.version, shadow.shadow_updated_at, shadow.reported_updated_at)  # fmt: skip
    for name, value in zip(_DEVICE_FIELDS, row, strict=True):
        setattr(device, name, value)
    return device


def _device_rows(tenant_id: str, device_ids: list[str], *, lock: bool) -> list[tuple]:
    """_DEVICE_FIELDS of the tenant's devices among device_ids, in id order (locked FOR UPDATE with lock).

    PostgreSQL (every bridge batch and device request comes here): plain SQL with the ids as one
    JSON parameter, no ORM compile and no per-element array quoting."""
    if connection.vendor != "postgresql":
        query = Device.objects.filter(tenant_id=tenant_id, device_id__any_of=device_ids).order_by("id")
        return list((query.select_for_update() if lock else query).values_list(*_DEVICE_FIELDS))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(_DEVICE_FIELDS)} FROM device_state WHERE tenant_id = %s"  # noqa: S608 (constants)
            " AND device_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb))) ORDER BY id"
            + (" FOR UPDATE" if lock else ""),
            [tenant_id, json.dumps(device_ids)],
        )
        rows = cursor.fetchall()
    loads = json.loads  # jsonb arrives as text (Django's loader; the ORM would decode it the same way)
    return [(pk, t, d, status, loads(ds), loads(rs), loads(dm), loads(rm), *rest)
            for pk, t, d, status, ds, rs, dm, rm, *rest in rows]  # fmt: skip


def shadow_get(*, device: Device, shadow_name: str = CLASSIC) -> Shadow:
    """One shadow of a device; NotFound for a named shadow that does not exist (or was deleted)."""
    check_shadow_name(shadow_name)
    shadow = load_shadows([(device.tenant_id, device.device_id, shadow_name)]).get(
        (device.tenant_id, device.device_id, shadow_name)
    )
    if shadow is None:
        raise NotFound(f"Device {device.device_id!r} not found", code="device_not_found")
    if not shadow.exists:
        raise no_such_shadow(shadow_name)
    return shadow


def shadow_names(device: Device) -> list[str]:
    """The device's named shadows (not deleted), by name."""
    return list(
        NamedShadow.objects.filter(device=device, deleted=False).order_by("name").values_list("name", flat=True)
    )


def no_such_shadow(name: str) -> NotFound:
    return NotFound(f"No shadow exists with name {name!r}", code="shadow_not_found")


# --- events the caller publishes itself -----------------------------------------------------------


@dataclass(frozen=True)
class LeasedEvent:
    """A ShadowEvent row its writer publishes itself once the transaction committed (the bridge, for
    the changes its own batch made), then deletes (shadow_events_delete); until `leased_until` the
    delivery loop leaves it alone, after it (the writer died, the broker never acknowledged) the
    delivery loop publishes it as any other."""

    pk: int
    tenant_id: str
    device_id: str
    device_pk: int
    shadow_name: str
    documents: dict
    delta: dict | None
    client_token: str
    created_at: datetime
    # documents and delta as the JSON the insert already encoded (PostgreSQL): the writer publishes them
    # without encoding them again (mqtt_bridge.delivery.shadow_event_publications)
    encoded: tuple[str, str | None] | None = None


_leases: contextvars.ContextVar[tuple[float, list[LeasedEvent]] | None] = contextvars.ContextVar(
    "shadow_event_leases", default=None
)


@contextlib.contextmanager
def leased_events(seconds: float) -> Iterator[list[LeasedEvent]]:
    """Within the block, the events shadow_apply records are leased to the caller for `seconds` and
    listed in the yielded list (valid once the caller's transaction committed)."""
    leased: list[LeasedEvent] = []
    token = _leases.set((seconds, leased))
    try:
        yield leased
    finally:
        _leases.reset(token)


def shadow_events_delete(pks: Sequence[int]) -> None:
    """Forget events that were published (their broker acknowledged every message)."""
    if pks:
        ShadowEvent.objects.filter(pk__in=list(pks)).delete()


# --- writing --------------------------------------------------------------------------------------


# No savepoint: a DomainError is a result, never raised out of here; a database error fails the
# caller's transaction as a whole (the bridge retries its batch), so a savepoint would only cost two
# round trips per call.
@transaction.atomic(savepoint=False)
def shadow_apply(changes: Sequence[ShadowChange], *, locked: Sequence[Device] = ()) -> list[ChangeResult]:
    """Apply changes in order; one result per change (its error, or what was accepted; for a read,
    the full document at that point, with the seed's versions). `locked`: see load_shadows."""
    results: list[ChangeResult | None] = [None] * len(changes)
    valid: list[tuple[int, ShadowChange]] = []
    for index, change in enumerate(changes):
        try:
            _check(change)
        except DomainError as exc:
            results[index] = ChangeResult(error=exc)
        else:
            valid.append((index, change))
    if not valid:
        return results  # type: ignore[return-value]

    writes = any(not c.read for _, c in valid)  # a batch of gets only reads, without locks
    shadows = load_shadows({(c.tenant_id, c.device_id, c.shadow_name) for _, c in valid}, lock=writes, locked=locked)
    policies = _desired_policies({c.tenant_id for _, c in valid if c.by_device and c.desired is not ABSENT})
    now = timezone.now()
    events: list[dict] = []  # ShadowEvent rows (as dicts: a model instance each costs more than the row)
    audits: list[dict] = []  # AuditEvent rows of the desired writes (devices.audit)
    for index, change in valid:
        shadow = shadows.get((change.tenant_id, change.device_id, change.shadow_name))
        try:
            before = (shadow.desired, shadow.desired_version) if shadow is not None else None
            result = _apply(shadow, change, now, policies, events, shadows)
            if before is not None and shadow.desired_version != before[1]:
                audits.append(_audit_row(shadow, change, before[0], now))
                result = replace(result, desired_before=before[0])
            results[index] = result
        except DomainError as exc:
            results[index] = ChangeResult(error=exc)

    deferred: list[tuple[str, list]] = []  # PostgreSQL: the writes, sent in one round trip with the events
    _write(shadows.values(), now, deferred)
    if audits:
        _insert_audits(audits, deferred)
    changed = [s for s in shadows.values() if s.dirty]
    leasing = bool(events) and bool(settings.MQTT_DIALECTS) and _leases.get() is not None
    wake = any(s.desired_moved for s in changed) or (events and not leasing)
    if wake and connection.vendor == "postgresql":
        # A retained desired message, or events nobody publishes yet: wake the bridges (NOTIFY is
        # delivered at commit), in the same round trip as the writes. (SQLite: the bridges poll.)
        deferred.append(outbox.wake_delivery_statement())
    if events and settings.MQTT_DIALECTS:
        _insert_events(events, now, shadows, deferred)
    if deferred:
        _execute_together(deferred)
    by_tenant: dict[str, set[str]] = {}
    for shadow in changed:
        by_tenant.setdefault(shadow.tenant_id, set()).add(shadow.device_id)
    for tenant_id, device_ids in by_tenant.items():
        outbox.twins_changed(tenant_id, sorted(device_ids))
    return results  # type: ignore[return-value]


def _check(change: ShadowChange) -> None:
    check_shadow_name(change.shadow_name)
    if change.read:
        return
    for name in ("version", "expected_desired_version", "report_version"):
        value = getattr(change, name)
        if value is not None:
            check_version(value, name="expected_version" if name == "expected_desired_version" else "version")
    if change.delete:
        return
    if change.desired is ABSENT and change.reported is ABSENT:
        raise InvalidInput('state must contain "desired" and/or "reported"', code="invalid_state")
    for part in ("desired", "reported"):
        value = getattr(change, part)
        if value is not ABSENT and value is not None:
            check_document(value, name=part)


def _desired_policies(tenant_ids: set[str]) -> dict[str, str]:
    if not tenant_ids:
        return {}
    return dict(Tenant.objects.filter(id__in=tenant_ids).values_list("id", "device_desired_writes"))


def _apply(shadow: Shadow | None, change: ShadowChange, now, policies, events, shadows) -> ChangeResult:
    if shadow is None:
        raise NotFound(f"Device {change.device_id!r} not found in tenant {change.tenant_id!r}", code="device_not_found")
    if shadow.device_status != DeviceStatus.ACTIVE:
        raise Conflict(f"Device {shadow.device_id!r} is decommissioned", code="device_decommissioned")
    if change.read:  # in sequence: it sees the changes before it, not those after
        if not shadow.exists:
            raise no_such_shadow(shadow.name)
        return _result(shadow, accepted=shadow.full_document(versions=True))
    result = _decide(shadow, change, now, policies, events)
    if change.by_device:  # an accepted change from the device: it was seen
        shadows[(shadow.tenant_id, shadow.device_id, CLASSIC)].seen = True
    return result


def _decide(shadow: Shadow, change: ShadowChange, now, policies, events) -> ChangeResult:
    if change.delete:
        return _delete(shadow, change, now)
    if change.create and shadow.exists:
        raise Conflict(f"A shadow named {shadow.name!r} already exists", code="shadow_exists")
    if not shadow.exists and change.reported is ABSENT and change.desired is None:
        raise no_such_shadow(shadow.name)  # clearing the desired of a shadow that is not there
    if change.version is not None and change.version != shadow.version:
        raise VersionConflict(
            f"Version conflict: version {change.version} is not the shadow's current version {shadow.version}",
            version=shadow.version,
        )
    if change.expected_desired_version is not None and change.expected_desired_version != shadow.desired_version:
        raise VersionConflict(
            f"expected_version {change.expected_desired_version} does not match desired_version "
            f"{shadow.desired_version}",
            desired_version=shadow.desired_version,
        )
    timestamp = int(now.timestamp())
    previous = shadow.document()
    previous_delta = compute_delta(shadow.desired, shadow.reported)
    desired, desired_md, desired_version = shadow.desired, shadow.desired_metadata, shadow.desired_version
    reported, reported_md, reported_version = shadow.reported, shadow.reported_metadata, shadow.reported_version
    desired_changed = reported_changed = False

    if change.desired is not ABSENT:
        if change.by_device:
            _device_may_write_desired(policies.get(shadow.tenant_id, DesiredWrites.DENY), change)
        desired, desired_md = _patched(desired, desired_md, change.desired, change.desired_mode, timestamp, "desired")
        desired_version += 1
        desired_changed = True

    if change.reported is not ABSENT:
        if change.report_version is not None:  # the seed's report: a whole state for a desired version
            version = change.report_version
            if not 0 <= version <= desired_version:
                raise VersionConflict(
                    f"version {version} is outside 0..{desired_version} (the current desired_version)",
                    desired_version=desired_version,
                )
            if version >= reported_version:  # an older report never restores an older state
                if change.reported_mode == Mode.REPLACE:  # the seed's: stored exactly as sent
                    reported, reported_md = change.reported, leaf_metadata(change.reported, timestamp)
                else:
                    reported, reported_md = _patched(
                        reported, reported_md, change.reported, Mode.MERGE, timestamp, "reported"
                    )
                reported_changed = True
            reported_version = max(reported_version, version)
        else:
            reported, reported_md = _patched(
                reported, reported_md, change.reported, change.reported_mode, timestamp, "reported"
            )
            reported_changed = True
            if not compute_delta(desired, reported):
                reported_version = desired_version  # caught up: nothing desired is missing

    accepted_state, accepted_md = {}, {}
    for part, value in (("desired", change.desired), ("reported", change.reported)):
        if value is not ABSENT:
            accepted_state[part] = value
            accepted_md[part] = leaf_metadata(value, timestamp) if value is not None else {}
    if not (desired_changed or reported_changed):  # an older seed report: accepted, nothing to store
        return _result(shadow, accepted={"state": accepted_state, "metadata": {}, "version": shadow.version})

    shadow.desired_moved |= desired_changed
    shadow.desired, shadow.desired_metadata, shadow.desired_version = desired, desired_md, desired_version
    shadow.reported, shadow.reported_metadata, shadow.reported_version = reported, reported_md, reported_version
    shadow.version += 1
    if desired_changed:
        shadow.shadow_updated_at = now
    if reported_changed:
        shadow.reported_updated_at = now
    shadow.exists = shadow.dirty = True
    delta = shadow.delta_message()
    # As AWS IoT: a delta when desired changed, or when a report touched a field that still differs
    # (the device is told again); a report of fields nobody desires sends none.
    touched = set(change.reported) if isinstance(change.reported, dict) else set()
    if change.reported_mode == Mode.REPLACE or change.reported is None:
        touched |= set(previous["state"]["reported"])  # a whole report also removes fields
    publish_delta = delta is not None and (
        desired_changed or delta["state"] != previous_delta or bool(touched & delta["state"].keys())
    )
    if not change.events:
        return _result(shadow, accepted={"state": accepted_state, "metadata": accepted_md, "version": shadow.version})
    events.append(
        {"device_id": shadow.device_pk, "shadow_name": shadow.name, "documents": {"previous": previous,
         "current": shadow.document()}, "delta": delta if publish_delta else None,
         "client_token": change.client_token or ""}
    )  # fmt: skip
    return _result(shadow, accepted={"state": accepted_state, "metadata": accepted_md, "version": shadow.version})


def _patched(document, metadata, patch, mode: Mode, timestamp: int, name: str) -> tuple[dict, dict]:
    if patch is None:
        return {}, {}
    base, base_md = (document, metadata) if mode == Mode.MERGE else ({}, {})
    # A replace is a merge onto {}: null members mean "absent" either way.
    result = merge_patch(base, patch)
    check_document(result, name=name)
    return result, merge_metadata(base_md, base, patch, timestamp)


def _device_may_write_desired(policy: str, change: ShadowChange) -> None:
    if policy == DesiredWrites.DENY:
        raise Forbidden(
            "Devices of this tenant may not write desired state (tenant setting device_desired_writes)",
            code="desired_write_forbidden",
        )
    if policy == DesiredWrites.VERSIONED and change.version is None:
        raise InvalidInput(
            "A device's desired update must carry the shadow's version (tenant setting "
            "device_desired_writes=versioned), so that it never overwrites an operator's newer desired state",
            code="version_required",
        )


def _delete(shadow: Shadow, change: ShadowChange, now) -> ChangeResult:
    if not shadow.exists:
        raise no_such_shadow(shadow.name)
    if change.version is not None and change.version != shadow.version:
        raise VersionConflict(
            f"Version conflict: version {change.version} is not the shadow's current version {shadow.version}",
            version=shadow.version,
        )
    # The version goes on (AWS IoT: deleting a shadow does not reset it); desired_version moves so the
    # retained desired state is republished empty, and an empty report is in step with it.
    shadow.desired, shadow.reported, shadow.desired_metadata, shadow.reported_metadata = {}, {}, {}, {}
    shadow.desired_version += 1
    shadow.desired_moved = True
    shadow.reported_version = shadow.desired_version
    shadow.version += 1
    shadow.shadow_updated_at = shadow.reported_updated_at = now
    shadow.exists = shadow.name == CLASSIC
    shadow.dirty = True
    logger.info("shadow deleted %s/%s name=%r v%d", shadow.tenant_id, shadow.device_id, shadow.name, shadow.version)
    return _result(shadow, accepted={"version": shadow.version})


def _result(shadow: Shadow, *, accepted: dict) -> ChangeResult:
    return ChangeResult(
        accepted=accepted, version=shadow.version, desired_version=shadow.desired_version,
        reported_version=shadow.reported_version, shadow=shadow,
    )  # fmt: skip


def _write(shadows, now, deferred: list[tuple[str, list]]) -> None:
    classic = [s for s in shadows if s.name == CLASSIC and (s.dirty or s.seen)]
    named = [s for s in shadows if s.name != CLASSIC and s.dirty]
    if classic:
        _write_classic(classic, now, deferred)
    created = [s for s in named if s.pk is None]
    existing = [s for s in named if s.pk is not None]
    if created:
        rows = NamedShadow.objects.bulk_create([_named_row(s) for s in created])
        for shadow, row in zip(created, rows, strict=True):
            shadow.pk = row.pk
    if existing:
        NamedShadow.objects.bulk_update(
            [_named_row(s) for s in existing],
            ["desired_state", "reported_state", "desired_metadata", "reported_metadata", "desired_version",
             "reported_version", "shadow_version", "shadow_updated_at", "reported_updated_at", "deleted"],
        )  # fmt: skip


def _named_row(shadow: Shadow) -> NamedShadow:
    return NamedShadow(
        pk=shadow.pk, device_id=shadow.device_pk, name=shadow.name, desired_state=shadow.desired,
        reported_state=shadow.reported, desired_metadata=shadow.desired_metadata,
        reported_metadata=shadow.reported_metadata, desired_version=shadow.desired_version,
        reported_version=shadow.reported_version, shadow_version=shadow.version,
        shadow_updated_at=shadow.shadow_updated_at, reported_updated_at=shadow.reported_updated_at,
        deleted=not shadow.exists,
    )  # fmt: skip


def _insert_events(events: list[dict], now, shadows: dict[Key, Shadow], deferred: list[tuple[str, list]]) -> None:
    """Record the events (PostgreSQL: in one round trip with the deferred writes, which it empties),
    leased to the caller when it asked (leased_events)."""
    lease = _leases.get()
    leased_until = now + timedelta(seconds=lease[0]) if lease is not None else None
    if connection.vendor != "postgresql":
        rows = ShadowEvent.objects.bulk_create(
            [ShadowEvent(**event, created_at=now, leased_until=leased_until) for event in events]
        )
        pks = [row.pk for row in rows]
        encoded = [None] * len(events)
    else:
        encoded = [_encoded(event) for event in events]
        insert = (  # as _write_classic: the batch as one JSON document
            """
                INSERT INTO twin_shadow_events
                    (device_id, shadow_name, documents, delta, client_token, created_at, leased_until)
                SELECT device_id, shadow_name, documents, delta, client_token, %s, %s
                FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (device_id bigint, shadow_name text,
                     documents jsonb, delta jsonb, client_token text)) WITH ORDINALITY
                     AS v(device_id, shadow_name, documents, delta, client_token, n)
                ORDER BY n
                RETURNING id
                """,
            [now, leased_until, _recordset(events, encoded)],
        )
        pks = sorted(pk for (pk,) in _execute_together([*deferred, insert]))  # ids follow the insertion order
        deferred.clear()
    if lease is None:
        return
    names = {s.device_pk: (s.tenant_id, s.device_id) for s in shadows.values()}
    lease[1].extend(
        LeasedEvent(pk, *names[e["device_id"]], e["device_id"], e["shadow_name"], e["documents"], e["delta"],
                    e["client_token"], now, code)
        for pk, e, code in zip(pks, events, encoded, strict=True)
    )  # fmt: skip


def _encoded(event: dict) -> tuple[str, str | None]:
    """An event's documents and delta as JSON, once: for the insert and for its messages."""
    delta = event["delta"]
    return _json(event["documents"]), None if delta is None else _json(delta)


def _recordset(events: list[dict], encoded: list[tuple[str, str | None]]) -> str:
    """The events as one JSON array for jsonb_to_recordset, spliced from their encoded documents."""
    return "[" + ",".join(
        f'{{"device_id":{e["device_id"]},"shadow_name":{_json(e["shadow_name"])},"documents":{documents},'
        f'"delta":{"null" if delta is None else delta},"client_token":{_json(e["client_token"])}}}'
        for e, (documents, delta) in zip(events, encoded, strict=True)
    ) + "]"  # fmt: skip


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _audit_row(shadow: Shadow, change: ShadowChange, before: dict, now) -> dict:
    """The audit event of an accepted desired write (or delete): who, before and after."""
    actor = who(device_key=(shadow.tenant_id, shadow.device_id) if change.by_device else None)
    return {
        "tenant_id": shadow.tenant_id, "device_id": shadow.device_pk, "at": now, "actor": actor.actor,
        "channel": actor.channel, "action": "shadow.delete" if change.delete else "desired.write",
        "shadow": shadow.name, "before": before, "after": shadow.desired, "version": shadow.desired_version,
    }  # fmt: skip


def _insert_audits(rows: list[dict], deferred: list[tuple[str, list]]) -> None:
    """PostgreSQL: one more statement in the write's round trip (the batch as one JSON document)."""
    if connection.vendor != "postgresql":
        audit_rows(rows)
        return
    now_iso = rows[0]["at"].isoformat()
    batch = [{**row, "at": now_iso} for row in rows]
    deferred.append((
        """
        INSERT INTO audit_events (tenant_id, device_id, at, actor, channel, action, shadow, job_id, before, after,
                                  version)
        SELECT tenant_id, device_id, at, actor, channel, action, shadow, '', before, after, version
        FROM jsonb_to_recordset(%s::jsonb) AS v(tenant_id text, device_id bigint, at timestamptz, actor text,
             channel text, action text, shadow text, before jsonb, after jsonb, version integer)
        """,
        [json.dumps(batch, separators=(",", ":"))],
    ))  # fmt: skip


def _execute_together(statements: list[tuple[str, list]]) -> list[tuple]:
    """Several statements in one round trip (Django's psycopg cursor binds parameters client-side and
    sends them as one simple query); the rows of the last one."""
    with connection.cursor() as cursor:
        cursor.execute(";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
        while cursor.nextset():
            pass
        return cursor.fetchall() if cursor.description is not None else []


def _write_classic(shadows: list[Shadow], now, deferred: list[tuple[str, list]]) -> None:
    """One UPDATE for the batch (PostgreSQL: added to `deferred`), or one per device (SQLite, the dev default).

    PostgreSQL gets the whole batch as one JSON document (jsonb_to_recordset): one json.dumps in C,
    where arrays of text parameters cost psycopg a regex quoting pass per element (5x slower).

    last_seen moves only past DEVICE_LAST_SEEN_RESOLUTION (as devices.services.device_touch): a device
    reporting the same state again then changes no indexed column, and PostgreSQL updates its row in
    place (a HOT update, room left by the table's fillfactor) without touching its eleven indexes.
    """
    if connection.vendor == "postgresql":
        now_iso = now.isoformat()  # most timestamps of a batch are its `now`: formatted once

        def _iso(moment: datetime | None) -> str | None:
            return now_iso if moment is now else (moment.isoformat() if moment is not None else None)

        batch = [
            {"id": s.device_pk, "desired": s.desired, "reported": s.reported, "desired_md": s.desired_metadata,
             "reported_md": s.reported_metadata, "desired_version": s.desired_version,
             "reported_version": s.reported_version, "version": s.version, "desired_at": _iso(s.shadow_updated_at),
             "reported_at": _iso(s.reported_updated_at), "seen": s.seen}
            for s in shadows
        ]  # fmt: skip
        deferred.append((
            """
            UPDATE device_state AS d SET
                desired_state = v.desired, reported_state = v.reported,
                desired_metadata = v.desired_md, reported_metadata = v.reported_md,
                desired_version = v.desired_version, reported_version = v.reported_version,
                shadow_version = v.version, shadow_updated_at = v.desired_at, reported_updated_at = v.reported_at,
                last_seen = CASE WHEN v.seen AND (d.last_seen IS NULL OR d.last_seen < %s) THEN %s
                                 ELSE d.last_seen END
            FROM jsonb_to_recordset(%s::jsonb)
                 AS v(id bigint, desired jsonb, reported jsonb, desired_md jsonb, reported_md jsonb,
                      desired_version integer, reported_version integer, version integer,
                      desired_at timestamptz, reported_at timestamptz, seen boolean)
            WHERE d.id = v.id
            """,
            [now - settings.DEVICE_LAST_SEEN_RESOLUTION, now, json.dumps(batch, separators=(",", ":"))],
        ))  # fmt: skip
        return
    with connection.cursor() as cursor:
        stamp = connection.ops.adapt_datetimefield_value
        since = stamp(now - settings.DEVICE_LAST_SEEN_RESOLUTION)
        rows = [
            (s.device_pk, json.dumps(s.desired), json.dumps(s.reported), json.dumps(s.desired_metadata),
             json.dumps(s.reported_metadata), s.desired_version, s.reported_version, s.version,
             stamp(s.shadow_updated_at), stamp(s.reported_updated_at), s.seen)
            for s in shadows
        ]  # fmt: skip
        for pk, d, r, dm, rm, dv, rv, v, d_at, r_at, seen in rows:
            cursor.execute(
                """
                UPDATE device_state SET desired_state = %s, reported_state = %s, desired_metadata = %s,
                    reported_metadata = %s, desired_version = %s, reported_version = %s, shadow_version = %s,
                    shadow_updated_at = %s, reported_updated_at = %s,
                    last_seen = CASE WHEN %s AND (last_seen IS NULL OR last_seen < %s) THEN %s ELSE last_seen END
                WHERE id = %s
                """,
                [d, r, dm, rm, dv, rv, v, d_at, r_at, seen, since, stamp(now), pk],
            )
