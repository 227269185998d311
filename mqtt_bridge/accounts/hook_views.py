"""HTTP authentication and authorization hooks for EMQX-style brokers.

    POST /mqtt/auth  {"username", "password", "clientid"}            -> {"result": "allow"|"deny", "is_superuser"}
    POST /mqtt/acl   {"username", "clientid"?, "topic", "action"}     -> {"result": "allow"|"deny"}

A device's clientid must be its username (acl.device_client_id); /mqtt/auth requires it.

`action` is "publish" or "subscribe". Bodies may be JSON or form-encoded. The broker must send
`Authorization: Bearer <MQTT_AUTH_HOOK_TOKEN>`; without that setting the hooks are off (403).
Answers are always 200 with a result (EMQX reads the body), except for a caller that is not
the broker (401/403) or a malformed request (400).
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from iotcloud.api.parsers import JSONBodyError, parse_json_bytes
from iotcloud.errors import error_body
from mqtt_bridge.accounts.hooks import login_decision, topic_decision

logger = logging.getLogger(__name__)

MAX_FIELD = 1024


def _refuse(status: int, detail: str, code: str) -> JsonResponse:
    return JsonResponse(error_body(detail, code), status=status)


def _caller_problem(request) -> JsonResponse | None:
    expected = settings.MQTT_AUTH_HOOK_TOKEN
    if not expected:
        return _refuse(403, "The broker hooks are off: set MQTT_AUTH_HOOK_TOKEN", "hooks_disabled")
    header = request.headers.get("Authorization", "")
    if not hmac.compare_digest(header.encode(), f"Bearer {expected}".encode()):
        return _refuse(401, "Send Authorization: Bearer <MQTT_AUTH_HOOK_TOKEN>", "bad_hook_token")
    return None


def _fields(request, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str | None]:
    if request.content_type == "application/json":
        try:
            body = parse_json_bytes(request.body)
        except JSONBodyError as exc:
            raise ValueError(f"the body is not valid JSON: {exc.message}") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
    else:
        body = request.POST
    values = {}
    for name in (*names, *optional):
        value = body.get(name)
        if value is None and name in optional:
            values[name] = None
            continue
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
            raise ValueError(f"{name} must be a non-empty string of at most {MAX_FIELD} characters")
        values[name] = value
    return values


def _answer(decision) -> JsonResponse:
    return JsonResponse({"result": "allow" if decision.allow else "deny", "is_superuser": decision.superuser})


@csrf_exempt
@require_POST
def auth(request):
    problem = _caller_problem(request)
    if problem:
        return problem
    try:
        fields = _fields(request, ("username", "password", "clientid"))
    except ValueError as exc:
        return _refuse(400, str(exc), "invalid")
    decision = login_decision(fields["username"], fields["password"], fields["clientid"])
    if not decision.allow:
        logger.info("broker login denied username=%r clientid=%r: %s", fields["username"][:200],
                    fields["clientid"][:200], decision.reason)  # fmt: skip
    return _answer(decision)


@csrf_exempt
@require_POST
def acl(request):
    problem = _caller_problem(request)
    if problem:
        return problem
    try:
        fields = _fields(request, ("username", "topic", "action"), optional=("clientid",))
    except ValueError as exc:
        return _refuse(400, str(exc), "invalid")
    decision = topic_decision(fields["username"], fields["action"], fields["topic"], fields["clientid"])
    if not decision.allow:
        logger.info("broker %s denied username=%r topic=%r: %s", fields["action"][:20], fields["username"][:200],
                    fields["topic"][:300], decision.reason)  # fmt: skip
    return _answer(decision)
