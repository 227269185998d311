"""The device protocol's shadow requests, as documents: what an update or delete request may say.

AWS IoT's request state document (`{"state": {"desired": ..., "reported": ...}, "version": n,
"clientToken": "..."}`) is what devices send over MQTT (both dialects) and over HTTP
(POST /device/v1/shadow/update); this module turns one into a twin.engine.ShadowChange or
raises the InvalidInput that names the problem. The MQTT bridge and the HTTP views both call it.
"""

from __future__ import annotations

from iotcloud.errors import InvalidInput
from iotcloud.rules import CLIENT_TOKEN_MAX_BYTES
from twin.engine import ABSENT, CLASSIC, ShadowChange

CLIENT_TOKEN = "clientToken"
UPDATE_FIELDS = frozenset({"state", "version", CLIENT_TOKEN})
DELETE_FIELDS = frozenset({"version", CLIENT_TOKEN})
STATE_FIELDS = frozenset({"desired", "reported"})


def client_token(body: dict) -> str | None:
    """The request's clientToken, checked (AWS: a string of at most 64 bytes)."""
    token = body.get(CLIENT_TOKEN)
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode("utf-8", "surrogatepass")) > CLIENT_TOKEN_MAX_BYTES:
        raise InvalidInput(
            f"Invalid clientToken: a string of at most {CLIENT_TOKEN_MAX_BYTES} bytes", code="invalid_client_token"
        )
    return token


def _unknown(body: dict, allowed: frozenset[str], what: str) -> None:
    unknown = sorted(body.keys() - allowed)
    if unknown:
        raise InvalidInput(
            f"Unknown field(s) in {what}: {', '.join(map(repr, unknown))}; expected {', '.join(sorted(allowed))}"
        )


def delete_change(device, shadow_name: str, body: dict) -> ShadowChange:
    _unknown(body, DELETE_FIELDS, "a delete request")
    return ShadowChange(device.tenant_id, device.device_id, shadow_name, delete=True, by_device=True,
                        version=body.get("version"), client_token=client_token(body))  # fmt: skip


def update_change(device, shadow_name: str, body: dict) -> ShadowChange:
    """A device's update request: merges of desired and/or reported (null deletes a key, or all of it)."""
    _unknown(body, UPDATE_FIELDS, "an update request")
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
        if isinstance(value, dict):
            _no_null_in_arrays(value, part)
        parts[part] = value
    return ShadowChange(device.tenant_id, device.device_id, shadow_name or CLASSIC, by_device=True,
                        version=body.get("version"), client_token=client_token(body), **parts)  # fmt: skip


def _no_null_in_arrays(document: dict, name: str) -> None:
    """AWS IoT: arrays can't have null values (null means "delete" in a merge, and arrays are values)."""
    stack = [document]
    while stack:  # iterative: the depth limit is checked later (twin.engine), after this walk
        value = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if item is None and isinstance(value, list):
                raise InvalidInput(f"{name} holds an array with a null value; arrays can't have null values",
                                   code="invalid_value")  # fmt: skip
            if isinstance(item, (dict, list)):
                stack.append(item)
