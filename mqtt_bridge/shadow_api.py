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
from iotcloud.errors import DomainError, InvalidInput
from mqtt_bridge import topics
from mqtt_bridge.requests import Reply, accepted, client_token, parse_body, rejection, token_of
from twin.engine import ABSENT, ShadowChange, check_shadow_name, load_shadows, no_such_shadow, shadow_apply

UPDATE_FIELDS = frozenset({"state", "version", "clientToken"})
STATE_FIELDS = frozenset({"desired", "reported"})


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
                writes.append((index, token, _change(request, device, body, token)))
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
            document = shadow.full_document()
            if request.dialect == topics.NATIVE:  # the seed's versions, beside AWS's single one
                document["desired_version"] = shadow.desired_version
                document["reported_version"] = shadow.reported_version
            replies[index] = accepted(request, document, token)
    return replies  # type: ignore[return-value]


def _change(request: topics.Request, device: Device, body: dict, token: str | None) -> ShadowChange:
    base = {"tenant_id": device.tenant_id, "device_id": device.device_id, "shadow_name": request.shadow_name,
            "by_device": True, "client_token": token, "version": body.get("version")}  # fmt: skip
    if request.operation == topics.DELETE:
        unknown = sorted(body.keys() - {"version", "clientToken"})
        if unknown:
            raise InvalidInput(f"Unknown field(s) in a delete request: {', '.join(map(repr, unknown))}")
        return ShadowChange(**base, delete=True)
    unknown = sorted(body.keys() - UPDATE_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown field(s): {', '.join(map(repr, unknown))}; expected state, version, clientToken")
    if "state" not in body:
        raise InvalidInput("Missing required node: state", code="invalid_state")
    state = body["state"]
    if not isinstance(state, dict):
        raise InvalidInput("State node must be an object", code="invalid_state")
    extra = sorted(state.keys() - STATE_FIELDS)
    if extra:
        raise InvalidInput(
            f"State contains an invalid node: {', '.join(map(repr, extra))}; expected desired and/or reported",
            code="invalid_state",
        )
    parts = {}
    for part in ("desired", "reported"):
        value = state.get(part, ABSENT)
        if value is not ABSENT and value is not None and not isinstance(value, dict):
            raise InvalidInput(f"{part.capitalize()} node must be an object", code="invalid_state")
        parts[part] = value
    return ShadowChange(**base, **parts)
