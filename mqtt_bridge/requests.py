"""The envelope of a device protocol request (shadow and jobs topics, both dialects), and its answers.

A request payload is empty or a JSON object; `clientToken` (a string of at most 64 bytes, as AWS
allows) is echoed in every answer. A refusal is a DomainError; `rejection` turns it into the
dialect's rejected payload:
- native: the platform's error body (`detail`, `code`, extras) plus `status` (the HTTP status);
- aws: AWS's error document, `code` being the HTTP status (shadows) or the AWS Jobs error code.
Both carry `timestamp` (epoch seconds, as AWS) and `clientToken` when the request had one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from django.conf import settings

from iotcloud.errors import DomainError, InvalidInput, PayloadTooLarge
from iotcloud.strict_json import JSONError, loads
from mqtt_bridge import topics
from twin.protocol import CLIENT_TOKEN, client_token

__all__ = ["CLIENT_TOKEN", "Reply", "accepted", "client_token", "encode", "parse_body", "rejection", "token_of"]


@dataclass(frozen=True)
class Reply:
    """One message the bridge publishes once the batch that produced it has committed."""

    topic: str
    payload: bytes
    retain: bool = False


def now_seconds() -> int:
    return int(time.time())


def encode(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def parse_body(payload: bytes) -> dict:
    """The request's JSON object ({} for an empty payload); raises the DomainError that refuses it."""
    if len(payload) > settings.MQTT_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"Payload is {len(payload)} bytes; the limit is {settings.MQTT_MAX_PAYLOAD_BYTES} bytes "
            "(MQTT_MAX_PAYLOAD_BYTES)",
            code="too_large",
        )
    if not payload.strip():
        return {}
    try:
        data = loads(payload, what="Payload")
    except JSONError as exc:
        message = "Payload is not valid UTF-8" if exc.kind == "encoding" else exc.message
        raise InvalidInput(message, code="parse_error") from None
    if not isinstance(data, dict):
        raise InvalidInput("Payload must be a JSON object", code="invalid")
    return data


def token_of(payload: bytes) -> str | None:
    """The clientToken to echo in a rejection, if the payload has a usable one (never raises)."""
    try:
        return client_token(parse_body(payload))
    except DomainError:
        return None


def stamped(document: dict, token: str | None) -> dict:
    """An answer with AWS's `timestamp` and the request's clientToken (when it had one)."""
    document["timestamp"] = now_seconds()
    if token is not None:
        document[CLIENT_TOKEN] = token
    return document


def rejection(
    request: topics.Request, error: DomainError, token: str | None, *, aws_code=None, aws_extra: dict | None = None
) -> Reply:
    """The rejected answer to a request. In the AWS dialect `aws_code` replaces the HTTP status as
    `code` (AWS Jobs answers with names such as "VersionMismatch") and `aws_extra` is added (e.g.
    Jobs' executionState); the native body always has the error's own extras."""
    if request.dialect == topics.AWS:
        body = {"code": aws_code if aws_code is not None else error.status, "message": error.message}
        body.update(aws_extra or {})
    else:
        body = {**error.body(), "status": error.status}
    return Reply(request.reply_topic(topics.REJECTED), encode(stamped(body, token)))


def accepted(request: topics.Request, document: dict, token: str | None) -> Reply:
    return Reply(request.reply_topic(topics.ACCEPTED), encode(stamped(document, token)))
