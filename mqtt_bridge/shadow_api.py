"""The shadow service over MQTT, both dialects: get, update and delete of classic and named shadows.

The bridge's ingest hands over the shadow requests of one batch (messages that were neither
retained nor over the rate limit). Gets, updates and deletes go through twin.engine.shadow_apply
in one call, in arrival order: a get answers the shadow as it stands after the requests before it.
update/delta and update/documents are not answers: the engine leaves them in the events outbox,
leased to the bridge that made them, which publishes them behind the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from iotcloud.errors import DomainError, InvalidInput
from mqtt_bridge import topics
from mqtt_bridge.requests import Reply, accepted, client_token, parse_body, rejection, token_of
from twin.engine import ShadowChange, shadow_apply
from twin.protocol import delete_change, update_change


class DeviceKey(Protocol):
    """Names a device (a Device, or the Request whose topic names it)."""

    tenant_id: str
    device_id: str


# The engine's answers for a device that does not exist or is not active: nobody to answer.
NO_DEVICE = frozenset({"device_not_found", "device_decommissioned"})


def handle_shadow_requests(items: Sequence[tuple[topics.Request, DeviceKey, bytes]]) -> list[Reply | None]:
    """One answer per request, in order; None for a request whose device is not an active device
    (the engine decides that under its row locks: the caller does not look devices up first)."""
    replies: list[Reply | None] = [None] * len(items)
    operations: list[tuple[int, str | None, ShadowChange]] = []
    for index, (request, device, payload) in enumerate(items):
        try:
            body = parse_body(payload)
            token = client_token(body)
            operations.append((index, token, _change(request, device, body)))
        except DomainError as exc:
            replies[index] = rejection(request, exc, token_of(payload))

    # One call, in arrival order: a get sees the updates before it and none after it.
    results = shadow_apply([change for _, _, change in operations]) if operations else []
    for (index, token, _), result in zip(operations, results, strict=True):
        request = items[index][0]
        if result.error is not None:
            if result.error.code not in NO_DEVICE:
                replies[index] = rejection(request, result.error, token)
            continue
        document = dict(result.accepted)
        if request.operation == topics.GET and request.dialect == topics.AWS:
            document.pop("desired_version", None)  # native answers carry the seed's versions, AWS's do not
            document.pop("reported_version", None)
        replies[index] = accepted(request, document, token)
    return replies


def _change(request: topics.Request, device: DeviceKey, body: dict) -> ShadowChange:
    if request.operation == topics.GET:
        unknown = sorted(body.keys() - {"clientToken"})
        if unknown:
            raise InvalidInput(f"Unknown field(s) in a get request: {', '.join(map(repr, unknown))}")
        return ShadowChange(device.tenant_id, device.device_id, request.shadow_name, read=True)
    if request.operation == topics.DELETE:
        return delete_change(device, request.shadow_name, body)
    return update_change(device, request.shadow_name, body)
