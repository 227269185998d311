"""The shadow service over MQTT, both dialects: get, update and delete of classic and named shadows.

The bridge's ingest hands over the shadow requests of one batch (devices that exist and are
active, messages that were neither retained nor over the rate limit). Updates and deletes go
through twin.engine.shadow_apply in one call, in arrival order; gets are read after them, in the
same transaction, so a get that follows an update sees it. update/delta and update/documents are
not answers: the engine leaves them in the events outbox and the delivery loop publishes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from devices.models import Device
from iotcloud.errors import DomainError
from mqtt_bridge import topics
from mqtt_bridge.requests import Reply, accepted, client_token, parse_body, rejection, token_of
from twin.engine import ShadowChange, check_shadow_name, load_shadows, no_such_shadow, shadow_apply
from twin.protocol import delete_change, update_change


def handle_shadow_requests(items: Sequence[tuple[topics.Request, Device, bytes]]) -> list[Reply]:
    replies: list[Reply | None] = [None] * len(items)
    writes: list[tuple[int, str | None, ShadowChange]] = []
    gets: list[tuple[int, str | None]] = []
    for index, (request, device, payload) in enumerate(items):
        try:
            body = parse_body(payload)
            token = client_token(body)
            if request.operation == topics.GET:
                check_shadow_name(request.shadow_name)
                gets.append((index, token))
            else:
                writes.append((index, token, _change(request, device, body)))
        except DomainError as exc:
            replies[index] = rejection(request, exc, token_of(payload))

    results = shadow_apply([change for _, _, change in writes]) if writes else []
    for (index, token, _), result in zip(writes, results, strict=True):
        request = items[index][0]
        if result.error is not None:
            replies[index] = rejection(request, result.error, token)
        else:
            replies[index] = accepted(request, dict(result.accepted), token)

    if gets:
        keys = {(items[i][1].tenant_id, items[i][1].device_id, items[i][0].shadow_name) for i, _ in gets}
        shadows = load_shadows(keys)
        for index, token in gets:
            request, device, _ = items[index]
            shadow = shadows.get((device.tenant_id, device.device_id, request.shadow_name))
            if shadow is None or not shadow.exists:
                replies[index] = rejection(request, no_such_shadow(request.shadow_name), token)
                continue
            # Native answers carry the seed's versions beside AWS's single one.
            document = shadow.full_document(versions=request.dialect == topics.NATIVE)
            replies[index] = accepted(request, document, token)
    return replies  # type: ignore[return-value]


def _change(request: topics.Request, device: Device, body: dict) -> ShadowChange:
    if request.operation == topics.DELETE:
        return delete_change(device, request.shadow_name, body)
    return update_change(device, request.shadow_name, body)
