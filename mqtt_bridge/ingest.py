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
from devices.throttling import MQTT_REPORT_BUCKETS, mqtt_report_rate
from iotcloud.errors import DomainError, InvalidInput, TooManyRequests
from mqtt_bridge import topics
from twin.services import Report, parse_report_payload, twin_record_reports

logger = logging.getLogger(__name__)

RETAINED = "retained_report"
EMPTY = "empty_message"
# Errors that mean "no such active device" or "not a report at all": nobody to tell.
SILENT_CODES = frozenset({"device_not_found", "device_decommissioned", "not_a_report_topic", EMPTY})


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    retained: bool = False  # the broker delivered it as a retained message


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
    admitted = _admitted(messages)
    for index, message in enumerate(messages):
        key = topics.parse_reported(message.topic)
        if key is None:
            verdicts[index] = Verdict(
                message, InvalidInput(f"Not a reported topic: {message.topic!r}", code="not_a_report_topic")
            )
            continue
        refusal = _refusal(message, admitted[index])
        if refusal is not None:
            verdicts[index] = Verdict(message, refusal, key)
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


def _admitted(messages: Sequence[Incoming]) -> list[bool]:
    """Per message: within its device's MQTT report rate (counted in this bridge process)."""
    rate = mqtt_report_rate()
    keyed = [(i, topics.parse_reported(m.topic)) for i, m in enumerate(messages) if m.payload and not m.retained]
    keyed = [(i, key) for i, key in keyed if key is not None]
    admitted = [True] * len(messages)
    if rate is None or not keyed:
        return admitted
    verdicts = MQTT_REPORT_BUCKETS.take_many([f"{t}/{d}" for _, (t, d) in keyed], rate)
    for (index, _), ok in zip(keyed, verdicts, strict=True):
        admitted[index] = ok
    return admitted


def _refusal(message: Incoming, admitted: bool) -> DomainError | None:
    if not message.payload:
        # An empty message is how a retained one is cleared (by us, below): not a report.
        return InvalidInput("Empty message: not a report", code=EMPTY)
    if message.retained:
        # The broker kept this report and replays it on every (re)subscription: applying it would
        # roll newer state back. Never applied; the bridge clears the retained copy (retained_topics).
        return InvalidInput(
            "Reports must be published without the retain flag; this retained report was not applied "
            "and the broker's copy was cleared",
            code=RETAINED,
        )
    if not admitted:
        rate = mqtt_report_rate()
        return TooManyRequests(
            f"Rate limit exceeded: {rate.describe('report')} (MQTT_REPORT_RATE_LIMIT); this report was dropped",
            limit=rate.text, burst=rate.burst,
        )  # fmt: skip
    return None


def retained_topics(verdicts: Sequence[Verdict]) -> list[str]:
    """Report topics whose retained copy the bridge must clear (an empty retained message)."""
    return sorted({v.message.topic for v in verdicts if v.error is not None and v.error.code == RETAINED})


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
        replies.append((topics.reported_rejected(*verdict.device), json.dumps(verdict.error.body()).encode()))
    return replies


def log_verdicts(verdicts: Sequence[Verdict]) -> None:
    accepted = sum(v.accepted for v in verdicts)
    limited = [v for v in verdicts if v.error is not None and v.error.code == TooManyRequests.code]
    if limited:  # one line per batch, not one per dropped report of a flooding device
        devices = sorted({v.message.topic for v in limited})
        logger.warning("reports over the rate limit dropped: %d from %d device(s), e.g. topic=%r",
                       len(limited), len(devices), devices[0])  # fmt: skip
    for verdict in verdicts:
        if verdict.error is not None and verdict.error.code not in (TooManyRequests.code, EMPTY):
            logger.warning(
                "report rejected topic=%r code=%s detail=%s bytes=%d",
                verdict.message.topic, verdict.error.code, verdict.error.message, len(verdict.message.payload),
            )  # fmt: skip
    logger.debug("batch size=%d accepted=%d", len(verdicts), accepted)
