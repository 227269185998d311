"""Twin writes: desired state (operators) and reported state (devices).

Every path that changes a shadow (REST, admin, MQTT bridge, commands) calls
these functions, so the versioning rules exist once:
- each desired write advances desired_version by exactly one, under a row
  lock, so concurrent writers never lose an update;
- a report never moves reported_version backwards and never above
  desired_version, in one conditional UPDATE (no read-then-write race).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, JSONField, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, VersionConflict
from twin.shadow import DocumentError, Limits, merge_patch, validate_document

logger = logging.getLogger(__name__)


class DesiredMode(StrEnum):
    MERGE = "merge"  # RFC 7386 merge patch: null deletes a key
    REPLACE = "replace"


def twin_limits() -> Limits:
    return Limits(
        max_bytes=settings.TWIN_MAX_DOCUMENT_BYTES,
        max_depth=settings.TWIN_MAX_DEPTH,
        max_key_length=settings.TWIN_MAX_KEY_LENGTH,
    )


def check_document(document, *, name: str) -> None:
    """Validate a shadow document against the configured limits, as a DomainError."""
    try:
        validate_document(document, twin_limits(), name=name)
    except DocumentError as exc:
        error = PayloadTooLarge if exc.code == "too_large" else InvalidInput
        raise error(exc.message, code=exc.code) from None


def check_version(version, *, name: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput(f"{name} must be an integer", code="invalid_version")
    return version


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
        raise Conflict(f"Device {locked.device_id!r} is decommissioned", code="device_decommissioned")
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
    locked.desired_state = desired
    locked.desired_version += 1
    locked.shadow_updated_at = now
    logger.info("desired %s %s v%d", mode.value, locked, locked.desired_version)
    return locked


@dataclass(frozen=True)
class ReportOutcome:
    version: int


def twin_record_reported(*, device: Device, reported: dict, version) -> ReportOutcome:
    """Store a device's report of its state for desired `version`.

    The state is replaced only when the report is not older than the last
    one applied (an out-of-order report cannot roll the twin back); the
    version only ever rises; last_seen always moves.
    """
    version = check_version(version)
    if not isinstance(reported, dict):
        check_document(reported, name="reported")  # raises not_an_object
    if version < 0:
        _raise_version_out_of_range(device, version)
    check_document(reported, name="reported")
    now = timezone.now()
    updated = Device.objects.filter(pk=device.pk, status=DeviceStatus.ACTIVE, desired_version__gte=version).update(
        reported_state=Case(
            When(reported_version__lte=version, then=Value(reported, output_field=JSONField())),
            default=F("reported_state"),
        ),
        reported_updated_at=Case(
            When(reported_version__lte=version, then=Value(now)), default=F("reported_updated_at")
        ),
        reported_version=Greatest(F("reported_version"), Value(version)),
        last_seen=now,
    )
    if not updated:
        current = Device.objects.filter(pk=device.pk).first()
        if current is None or current.status != DeviceStatus.ACTIVE:
            raise Conflict(f"Device {device.device_id!r} is not active", code="device_decommissioned")
        _raise_version_out_of_range(current, version)
    logger.debug("reported %s v%d", device, version)
    return ReportOutcome(version=version)


def _raise_version_out_of_range(device: Device, version: int):
    raise VersionConflict(
        f"version {version} is outside 0..{device.desired_version} (the current desired_version)",
        desired_version=device.desired_version,
    )
