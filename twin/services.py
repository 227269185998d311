"""The seed's twin writes, on twin.engine: desired state (operators) and whole reports (devices).

The operator API, the admin, the bridge's shadow/reported ingestion and the device HTTP API call
these; they are thin: every rule is twin.engine.shadow_apply's, which the device protocol's
shadow update, get and delete (MQTT and HTTP) call too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

from devices.models import Device
from iotcloud.errors import DomainError, InvalidInput, PayloadTooLarge
from iotcloud.strict_json import JSONError, loads
from twin.engine import CLASSIC, ChangeResult, Mode, ShadowChange, check_version, device_written, shadow_apply

__all__ = ["DesiredMode", "Report", "check_version", "shadow_apply_one", "shadow_create", "shadow_delete",
           "shadow_write_desired", "twin_record_reported", "twin_record_reports", "twin_update_desired"]  # fmt: skip

logger = logging.getLogger(__name__)


DesiredMode = Mode  # the operator API's name for it


def twin_update_desired(
    *,
    device: Device,
    document: dict,
    mode: DesiredMode = DesiredMode.MERGE,
    expected_version: int | None = None,
    locked: bool = False,
) -> Device:
    """Merge or replace the desired state; returns the device with the new version (as written, not
    read back). locked: the caller locked `device`'s row FOR UPDATE in its transaction as read, and the
    engine uses that read (see twin.engine.load_shadows)."""
    (result,) = shadow_apply(
        [ShadowChange(device.tenant_id, device.device_id, desired=document, desired_mode=mode,
                      expected_desired_version=expected_version)],
        locked=[device] if locked else (),
    )  # fmt: skip
    if result.error is not None:
        raise result.error
    device_written(device, result.shadow)
    logger.info("desired %s %s v%d", mode.value, device, device.desired_version)
    return device


def shadow_apply_one(change: ShadowChange, *, locked: Sequence[Device] = ()) -> ChangeResult:
    """One change; raises the DomainError that refuses it. `locked`: see twin.engine.load_shadows."""
    (result,) = shadow_apply([change], locked=locked)
    if result.error is not None:
        raise result.error
    return result


def shadow_write_desired(
    *,
    device: Device,
    shadow_name: str,
    document: dict,
    mode: DesiredMode = DesiredMode.MERGE,
    expected_version: int | None = None,
) -> ChangeResult:
    """An operator's desired write to any shadow of a device (a named one is created by its first write)."""
    return shadow_apply_one(ShadowChange(device.tenant_id, device.device_id, shadow_name, desired=document,
                                         desired_mode=mode, expected_desired_version=expected_version))  # fmt: skip


def shadow_create(*, device: Device, shadow_name: str) -> ChangeResult:
    """Create an empty named shadow; 409 shadow_exists if it is there (checked and written under one lock)."""
    return shadow_apply_one(ShadowChange(device.tenant_id, device.device_id, shadow_name, desired={}, create=True))


def shadow_delete(*, device: Device, shadow_name: str = CLASSIC, by_device: bool = False) -> ChangeResult:
    """Delete a shadow: a named one disappears (its version goes on when it comes back), the classic one empties."""
    return shadow_apply_one(ShadowChange(device.tenant_id, device.device_id, shadow_name, delete=True,
                                         by_device=by_device))  # fmt: skip


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


def twin_record_reported(*, device: Device, reported, version, locked: Sequence[Device] = ()) -> ReportOutcome:
    """Store one report (the seed's HTTP path); raises the DomainError that refuses it.
    locked: `device`, when its row is locked in the caller's transaction as read (twin.engine.shadow_apply)."""
    (error,) = twin_record_reports([Report(device.tenant_id, device.device_id, reported, version)], locked=locked)
    if error is not None:
        raise error
    logger.debug("reported %s v%s", device, version)
    return ReportOutcome(version=version)


def twin_record_reports(reports: Sequence[Report], *, locked: Sequence[Device] = ()) -> list[DomainError | None]:
    """Validate and store many seed reports (a whole reported state for a desired version) at once.

    Returns one entry per report, in order: None when it was accepted, else the DomainError
    saying why not (bad document, unknown or decommissioned device, version outside
    0..desired_version). The rules are twin.engine's, the same for HTTP and MQTT:
    reported_version = max(reported_version, version) (never rolls back); the state is replaced
    only by a report at least as new as the last one applied; last_seen moves on every accepted one.
    """
    errors: list[DomainError | None] = [None] * len(reports)
    changes, positions = [], []
    events = settings.TWIN_EVENTS_FOR_SEED_REPORTS
    for index, report in enumerate(reports):
        if report.reported is None:  # null would mean "clear" to the engine; the seed wants an object
            errors[index] = InvalidInput("reported must be a JSON object, got null", code="not_an_object")
            continue
        changes.append(
            ShadowChange(report.tenant_id, report.device_id, reported=report.reported, reported_mode=Mode.REPLACE,
                         report_version=report.version, by_device=True, events=events)
        )  # fmt: skip
        positions.append(index)
    for index, result in zip(positions, shadow_apply(changes, locked=locked) if changes else [], strict=True):
        errors[index] = result.error
    return errors


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
