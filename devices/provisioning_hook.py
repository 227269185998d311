"""The pre-provisioning check of a template: the tenant's own service says whether a serial may register.

Like AWS IoT's pre-provisioning hook, but an HTTPS call rather than a Lambda: before a registration
by claim creates anything, iotcloud POSTs the registration to the template's `hook_url`

    {"tenant", "template", "claim", "serial", "device_id", "channel", "credential", "timestamp"}

signed with the template's hook secret (header `X-Iotcloud-Signature: sha256=<hex HMAC-SHA256 of the
body>`, so the service knows the call is iotcloud's), and the service answers 2xx with

    {"allow": true, "tags"?: {...}}     or     {"allow": false, "reason"?: "..."}

`tags` (optional) are set over the template's tags for this device. Anything else (a refused
connection, a timeout of PROVISIONING_HOOK_TIMEOUT_SECONDS, a non-2xx status, a redirect, a body that
is not such an object) refuses the registration with 503 hook_unavailable: the check fails closed,
and the device retries later. Only the decision leaves the service: its body is never shown to the
device beyond `reason` (cut to 200 printable characters).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from devices.services import validate_tags
from iotcloud.errors import DomainError, Forbidden, InvalidInput, ServiceUnavailable
from iotcloud.sealing import unseal

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
MAX_ANSWER_BYTES = 64 * 1024
MAX_REASON_LENGTH = 200
SIGNATURE_HEADER = "X-Iotcloud-Signature"


@dataclass(frozen=True)
class HookVerdict:
    tags: dict | None  # the hook's tags for this device (over the template's), or None


def check_hook_url(url) -> str:
    """ "" (no hook) or an absolute http(s) URL with a host."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput(
            f"hook_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters", code="invalid_hook"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidInput(
            f"hook_url {url[:80]!r} is not an absolute http:// or https:// URL with a host", code="invalid_hook"
        )
    return url


def check_hook_secret(secret) -> str:
    if not isinstance(secret, str) or not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH or "\x00" in secret:
        raise InvalidInput(
            f"hook_secret must be text of {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters (the key the "
            "calls are signed with)",
            code="invalid_hook",
        )
    return secret


def signature(secret: str, body: bytes) -> str:
    """The header value a hook checks: `sha256=` + hex HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # a redirect is an answer we do not follow
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _unavailable(template, why: str) -> ServiceUnavailable:
    logger.warning("pre-provisioning hook of template %s unavailable: %s", template, why)
    return ServiceUnavailable(
        f"The pre-provisioning check of template {template.name!r} did not answer usably ({why}); retry later",
        code="hook_unavailable",
    )


def hook_check(*, template, claim_id: int, serial: str, device_id: str, channel: str) -> HookVerdict | None:
    """Ask the template's hook (None when it has none); refuses with Forbidden or ServiceUnavailable."""
    if not template.hook_url:
        return None
    secret = unseal(template.hook_secret) if template.hook_secret else None
    if secret is None:
        raise _unavailable(template, "its secret cannot be read: set hook_secret again")
    body = json.dumps({
        "tenant": template.tenant_id, "template": template.name, "claim": claim_id, "serial": serial,
        "device_id": device_id, "channel": channel, "credential": template.credential,
        "timestamp": int(timezone.now().timestamp()),
    }).encode()  # fmt: skip
    # (check_hook_url let only http and https through)
    request = urllib.request.Request(template.hook_url, data=body, method="POST", headers={  # noqa: S310
        "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "iotcloud-provisioning",
        SIGNATURE_HEADER: signature(secret, body),
    })  # fmt: skip
    try:
        with _OPENER.open(request, timeout=settings.PROVISIONING_HOOK_TIMEOUT_SECONDS) as response:
            status, raw = response.status, response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise _unavailable(template, f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, TLS, bad address
        reason = getattr(exc, "reason", exc)
        raise _unavailable(template, "timed out" if "timed out" in str(reason) else f"{type(exc).__name__}") from None
    if not 200 <= status < 300:
        raise _unavailable(template, f"HTTP {status}")
    return _verdict(template, serial, raw)


def _verdict(template, serial: str, raw: bytes) -> HookVerdict:
    if len(raw) > MAX_ANSWER_BYTES:
        raise _unavailable(template, f"an answer over {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _unavailable(template, "an answer that is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
        raise _unavailable(template, 'an answer without "allow": true or false')
    if not answer["allow"]:
        reason = answer.get("reason")
        shown = "".join(c for c in reason if c.isprintable())[:MAX_REASON_LENGTH] if isinstance(reason, str) else ""
        logger.info("pre-provisioning hook of template %s denied serial %r: %s", template, serial, shown or "-")
        raise Forbidden(
            f"The pre-provisioning check of template {template.name!r} denied serial {serial!r}"
            + (f": {shown}" if shown else ""),
            code="registration_denied",
        )
    tags = answer.get("tags")
    if tags is None:
        return HookVerdict(None)
    try:
        return HookVerdict(validate_tags(tags))
    except DomainError as exc:
        raise _unavailable(template, f"its tags are refused: {exc.message}") from None
