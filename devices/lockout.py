"""Sign-in lockout (django-axes): too many failed password sign-ins for a username or from an address.

django-axes counts every failed password sign-in in the database (its AccessAttempt table, so
every worker and host sees the same counts, on SQLite and PostgreSQL): POST
/customer/auth/token (HTTP Basic, devices.authentication), /admin/login/ and /api-auth/login/.
The LOGIN_FAILURE_LIMIT-th failure within LOGIN_LOCKOUT_MINUTES for one username, or from one
address, locks that username and that address out for LOGIN_LOCKOUT_MINUTES, right password or
not. The API answers 429 with Retry-After and the usual error body; the sign-in pages show a page
saying so. Bearer tokens are not password sign-ins and keep working.

This module gives axes the client address (client_ip), the username as a database can store it
(client_username), a handler that keeps NUL out of PostgreSQL (AxesHandler) and the lockout
answer (lockout_response).
"""

from __future__ import annotations

import ipaddress
import math

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.http import HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from rest_framework import exceptions

from iotcloud.errors import error_body

# Sign-in pages: locked-out sign-ins there get an HTML page, elsewhere JSON.
HTML_SIGN_IN_PREFIXES = ("/admin/", "/api-auth/")


def lockout_seconds() -> int:
    """How long a lockout lasts from now (each attempt during it starts it again)."""
    cool_off = get_cool_off()
    return max(1, math.ceil(cool_off.total_seconds())) if cool_off else 0


def lockout_message() -> str:
    minutes = max(1, math.ceil(lockout_seconds() / 60))
    return (
        f"Too many failed sign-ins for this username or from this address: signing in is locked for "
        f"{minutes} minute{'' if minutes == 1 else 's'}."
    )


class LoginLockedOut(exceptions.Throttled):
    """429 from the API (TokenLoginView adds `retry_after` to the body; DRF sets Retry-After)."""

    default_code = "login_locked"
    extra_detail_singular = "Retry in {wait} second."
    extra_detail_plural = "Retry in {wait} seconds."

    def __init__(self):
        super().__init__(wait=lockout_seconds(), detail=lockout_message())
        self.extra = {"retry_after": self.wait}


def _ip(value) -> str | None:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """The address failures are counted against (AXES_CLIENT_IP_CALLABLE).

    REMOTE_ADDR, unless TRUSTED_PROXY_COUNT reverse proxies append to X-Forwarded-For: then the
    address the outermost of them saw, the TRUSTED_PROXY_COUNT-th entry from the right (entries
    further left are whatever the client sent). A request that did not come through all of them
    (too few entries) or an entry that is not an address falls back to REMOTE_ADDR.
    """
    remote = _ip(request.META.get("REMOTE_ADDR"))
    hops = settings.TRUSTED_PROXY_COUNT
    if hops > 0:
        forwarded = [entry for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()]
        if len(forwarded) >= hops:
            return _ip(forwarded[-hops]) or remote
    return remote


def _storable(value: str, limit: int) -> str:
    """A client-supplied string as axes' columns can hold it: bounded, without NUL (PostgreSQL refuses it)."""
    return value[:limit].replace("\x00", "\ufffd")


def client_username(request, credentials=None) -> str | None:
    """The username failures are counted against (AXES_USERNAME_CALLABLE), as sent, within 150 characters.

    No account has a longer name, so a longer one shares its counter with its first 150 characters.
    """
    field = get_user_model().USERNAME_FIELD
    username = credentials.get(field) if credentials else getattr(request, "data", request.POST).get(field)
    return _storable(username, 150) if isinstance(username, str) else None


class AxesHandler(AxesDatabaseHandler):
    """axes' database handler, with the request's user agent, Accept and path storable (no NUL)."""

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        if request is not None:
            for attribute, limit in (("axes_user_agent", 255), ("axes_http_accept", 1025), ("axes_path_info", 255)):
                value = getattr(request, attribute, None)
                if isinstance(value, str):
                    setattr(request, attribute, _storable(value, limit))
        return super().user_login_failed(sender, credentials, request, **kwargs)


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the answer to a sign-in axes refused (AxesMiddleware calls it).

    Under WSGI the middleware passes the view's response: the API's 429 (LoginLockedOut) is kept.
    Under ASGI (daphne) axes 8.3.1 passes the credentials in its place and drops the view's
    response, so the API's answer is made again here, the same.
    """
    if (
        isinstance(original_response, HttpResponseBase)
        and original_response.status_code == 429
        and original_response.has_header("Retry-After")
    ):
        return original_response  # the API answered already
    wait = lockout_seconds()
    if request.path.startswith(HTML_SIGN_IN_PREFIXES):
        context = {
            **admin.site.each_context(request),
            "title": "Signing in is locked",
            "message": lockout_message(),
            "retry_after": wait,
        }
        response = TemplateResponse(request, "admin/login_locked_out.html", context, status=429)
        response.render()
    else:
        response = JsonResponse(
            error_body(f"{lockout_message()} Retry in {wait} seconds.", "login_locked", retry_after=wait), status=429
        )
    response["Retry-After"] = str(wait)
    response["Cache-Control"] = "no-store"
    return response
