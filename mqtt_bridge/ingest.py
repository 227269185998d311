"""Reported-state ingestion: a batch of MQTT messages in, one verdict per message out.

Everything here runs on committed-or-nothing batches: the caller acknowledges
the messages only after ingest_batch returns (its transaction committed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud.errors import DomainError, InvalidInput
from mqtt_bridge import topics
from twin.services import Report, parse_report_payload, twin_record_reports

logger = logging.getLogger(__name__)

# Errors that mean "no such active device": nobody to tell.
SILENT_CODES = frozenset({"device_not_found", "device_decommissioned", "not_a_report_topic"})


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0


@dataclass(frozen=True)
class Verdict:
    message: Incoming
    error: DomainError | None = None
    device: tuple[str, str] | None = None  # (tenant_id, device_id) from the topic

    @property
    def accepted(self) -> bool:
        return self.error is None


@transaction.atomic
def ingest_batch(messages: Sequence[Incoming]) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * len(messages)
    reports: list[Report] = []
    positions: list[int] = []
    keys: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        key = topics.parse_reported(message.topic)
        if key is None:
            verdicts[index] = Verdict(
                message, InvalidInput(f"Not a reported topic: {message.topic!r}", code="not_a_report_topic")
            )
            continue
        try:
            reported, version = parse_report_payload(message.payload, max_bytes=settings.MQTT_MAX_PAYLOAD_BYTES)
        except DomainError as exc:
            verdicts[index] = Verdict(message, exc, key)
            continue
        reports.append(Report(key[0], key[1], reported, version))
        positions.append(index)
        keys.append(key)
    for index, key, error in zip(positions, keys, twin_record_reports(reports), strict=True):
        verdicts[index] = Verdict(messages[index], error, key)
    return verdicts  # type: ignore[return-value]


def rejection_replies(verdicts: Sequence[Verdict]) -> list[tuple[str, bytes]]:
    """(topic, payload) answers for rejected reports of devices that exist and are active."""
    candidates = [v for v in verdicts if v.error is not None and v.device and v.error.code not in SILENT_CODES]
    if not candidates:
        return []
    # Malformed payloads were refused before the device was looked up: check it exists now.
    keys = {v.device for v in candidates}
    active = set()
    for tenant_id in {t for t, _ in keys}:
        active.update(
            Device.objects.filter(
                tenant_id=tenant_id, device_id__in=[d for t, d in keys if t == tenant_id], status=DeviceStatus.ACTIVE
            ).values_list("tenant_id", "device_id")
        )
    replies = []
    for verdict in candidates:
        if verdict.device not in active:
            continue
        body = {"code": verdict.error.code, "detail": verdict.error.message, **verdict.error.extra}
        replies.append((topics.reported_rejected(*verdict.device), json.dumps(body).encode()))
    return replies


def log_verdicts(verdicts: Sequence[Verdict]) -> None:
    accepted = sum(v.accepted for v in verdicts)
    for verdict in verdicts:
        if verdict.error is not None:
            logger.warning(
                "report rejected topic=%r code=%s detail=%s bytes=%d",
                verdict.message.topic, verdict.error.code, verdict.error.message, len(verdict.message.payload),
            )  # fmt: skip
    logger.debug("batch size=%d accepted=%d", len(verdicts), accepted)
