"""Ingestion: a batch of MQTT messages in (reports and device protocol requests), one verdict each out.

Everything here runs on committed-or-nothing batches: the caller acknowledges
the messages only after ingest_batch returns (its transaction committed), then
publishes the verdicts' answers. Within a batch the seed's reports are stored
first, then shadow requests (mqtt_bridge.shadow_api), then jobs requests
(mqtt_bridge.jobs_api), each group in arrival order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction

from devices.choices import DeviceStatus
from devices.models import Device
from devices.throttling import MQTT_REPORT_BUCKETS, mqtt_report_rate
from iotcloud.errors import DomainError, InvalidInput, TooManyRequests
from mqtt_bridge import topics
from mqtt_bridge.jobs_api import aws_code as jobs_aws_code
from mqtt_bridge.jobs_api import handle_jobs_requests
from mqtt_bridge.provisioning_api import handle_registrations
from mqtt_bridge.requests import Reply, rejection, token_of
from mqtt_bridge.shadow_api import handle_shadow_requests
from twin.services import Report, parse_report_payload, twin_record_reports

logger = logging.getLogger(__name__)

RETAINED = "retained_report"
EMPTY = "empty_message"
# Errors that mean "no such active device" or "not a report at all": nobody to tell.
SILENT_CODES = frozenset({"device_not_found", "device_decommissioned", "not_a_report_topic", "tenant_not_found", EMPTY})
HANDLERS = {topics.SHADOW: handle_shadow_requests, topics.JOBS: handle_jobs_requests}


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
    device: tuple[str, str] | None = None  # (tenant_id, device_id) of a report's topic
    replies: tuple[Reply, ...] = field(default=())  # a request's answers

    @property
    def accepted(self) -> bool:
        return self.error is None and not any(r.topic.endswith("/" + topics.REJECTED) for r in self.replies)


@transaction.atomic
def ingest_batch(messages: Sequence[Incoming]) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * len(messages)
    reports: list[Report] = []
    positions: list[int] = []
    keys: list[tuple[str, str]] = []
    admitted = _admitted(messages)
    requests: list[tuple[int, topics.Request]] = []
    registrations: list[tuple[int, topics.Registration]] = []
    for index, message in enumerate(messages):
        key = topics.parse_reported(message.topic)
        registration = topics.parse_registration(message.topic) if key is None else None
        if registration is not None:
            if message.retained or not message.payload:  # replayed to every subscriber: never applied, cleared
                refusal = _retained_or_over_rate(message, True) or InvalidInput("Empty message", code=EMPTY)
                verdicts[index] = Verdict(message, refusal)
            else:
                registrations.append((index, registration))
            continue
        if key is None:
            request = topics.parse_request(message.topic)
            if request is not None and request.dialect in settings.MQTT_DIALECTS:
                requests.append((index, request))
            else:
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
    if requests:
        _answer_requests(messages, requests, admitted, verdicts)
    if registrations:
        answers = handle_registrations([(request, messages[index].payload) for index, request in registrations])
        for (index, request), reply in zip(registrations, answers, strict=True):
            verdicts[index] = (
                Verdict(messages[index], replies=(reply,)) if reply else
                Verdict(messages[index], InvalidInput(f"No tenant {request.tenant_id!r}", code="tenant_not_found"))
            )  # fmt: skip
    return verdicts  # type: ignore[return-value]


def _answer_requests(messages, requests, admitted, verdicts) -> None:
    """Refuse what must be refused (retained, over the rate, unknown devices), hand the rest to the handlers.

    Shadow requests go to their handler without a lookup: the engine finds their devices under its
    row locks anyway and the handler leaves those that name no active device unanswered. Jobs
    requests and refusals need the device first (one query, only when there are any)."""
    refusals = {index: _retained_or_over_rate(messages[index], admitted[index]) for index, _ in requests}
    looked_up = {(r.tenant_id, r.device_id) for i, r in requests
                 if r.tenant_id is not None and (r.service == topics.JOBS or refusals[i] is not None)}  # fmt: skip
    active = _active_devices(looked_up) if looked_up else {}
    routed: dict[str, list[tuple[int, topics.Request, object]]] = {topics.SHADOW: [], topics.JOBS: []}
    for index, request in requests:
        message = messages[index]
        if not message.payload and message.retained:
            verdicts[index] = Verdict(message, InvalidInput("Empty message: not a request", code=EMPTY))
            continue
        device = request if request.service == topics.SHADOW and refusals[index] is None else None
        device = device or active.get((request.tenant_id, request.device_id))
        if device is None or request.tenant_id is None:
            verdicts[index] = _no_device(message, request)
            continue
        refusal = refusals[index]
        if refusal is not None:
            code = jobs_aws_code(refusal) if request.service == topics.JOBS else None  # AWS Jobs codes are names
            reply = rejection(request, refusal, token_of(message.payload), aws_code=code)
            verdicts[index] = Verdict(message, refusal, replies=(reply,))
            continue
        routed[request.service].append((index, request, device))
    for service, items in routed.items():
        if items:
            answers = HANDLERS[service]([(request, device, messages[i].payload) for i, request, device in items])
            for (index, request, _), reply in zip(items, answers, strict=True):
                verdicts[index] = (
                    Verdict(messages[index], replies=(reply,)) if reply else _no_device(messages[index], request)
                )


def _no_device(message: Incoming, request: topics.Request) -> Verdict:
    """Nobody to tell: no such active device (or a thing name that names none)."""
    return Verdict(message, InvalidInput(f"No active device for thing {request.thing_name!r}", code="device_not_found"))


_ACTIVE_FIELDS = ("id", "tenant_id", "device_id", "status")


def _active_devices(keys: set[tuple[str, str]]) -> dict[tuple[str, str], Device]:
    """The active devices among the keys, in one query (on every batch: plain SQL, no ORM compile)."""
    if not keys:
        return {}
    tenants, devices = zip(*sorted(keys), strict=True)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT d.id, d.tenant_id, d.device_id, d.status FROM device_state d"
                " JOIN unnest(%s::text[], %s::text[]) AS k(tenant_id, device_id)"
                " ON d.tenant_id = k.tenant_id AND d.device_id = k.device_id WHERE d.status = %s",
                [list(tenants), list(devices), DeviceStatus.ACTIVE],
            )
            rows = cursor.fetchall()
        else:
            rows = list(
                Device.objects.filter(device_id__in=set(devices), status=DeviceStatus.ACTIVE).values_list(
                    *_ACTIVE_FIELDS
                )
            )
    found = {}
    for row in rows:
        if (row[1], row[2]) in keys:
            found[(row[1], row[2])] = Device.from_db(connection.alias, _ACTIVE_FIELDS, row)
    return found


def _device_of(topic: str) -> tuple[str, str] | None:
    key = topics.parse_reported(topic)
    if key is None:
        request = topics.parse_request(topic)
        if request is not None and request.tenant_id is not None:
            key = (request.tenant_id, request.device_id)
    return key


def _admitted(messages: Sequence[Incoming]) -> list[bool]:
    """Per message: within its device's MQTT rate (reports and requests, counted in this bridge process)."""
    rate = mqtt_report_rate()
    # An empty report is not one (see _refusal); an empty request is a get or a delete.
    keyed = [(i, _device_of(m.topic)) for i, m in enumerate(messages)
             if not m.retained and (m.payload or topics.parse_reported(m.topic) is None)]  # fmt: skip
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
    return _retained_or_over_rate(message, admitted)


def _retained_or_over_rate(message: Incoming, admitted: bool) -> DomainError | None:
    if message.retained:
        # The broker kept this report and replays it on every (re)subscription: applying it would
        # roll newer state back. Never applied; the bridge clears the retained copy (retained_topics).
        return InvalidInput(
            "Reports and requests must be published without the retain flag; this retained message was "
            "not applied and the broker's copy was cleared",
            code=RETAINED,
        )
    if not admitted:
        rate = mqtt_report_rate()
        return TooManyRequests(
            f"Rate limit exceeded: {rate.describe('report')} (MQTT_REPORT_RATE_LIMIT); this report was dropped",
            limit=rate.text, burst=rate.burst,
        )  # fmt: skip
    return None


def request_replies(verdicts: Sequence[Verdict]) -> list[tuple[str, bytes]]:
    """(topic, payload) answers to the batch's device protocol requests."""
    return [(reply.topic, reply.payload) for verdict in verdicts for reply in verdict.replies]


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
