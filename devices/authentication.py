"""Credentials: devices (`X-Provision-Token`) and operators (HTTP Basic for a token, then bearer tokens).

A device token is looked up by its sha256 digest (the token itself is never
stored) and the stored digest is compared again in constant time. Failures
are 401 with a WWW-Authenticate header, never 403.

Whatever a client puts in a credential header (NUL or control characters,
invalid base64 or UTF-8, a megabyte of it) the answer is that 401, never a
500: nothing malformed reaches the database (PostgreSQL refuses NUL in text,
axes' columns have a length) or a decoder that could raise.
"""

import ipaddress
import re
from urllib.parse import unquote

from django.conf import settings
from django.contrib.auth import authenticate
from django.db import connection
from django.utils import timezone
from knox.auth import TokenAuthentication
from knox.signals import token_expired
from rest_framework import authentication, exceptions

from devices.certificates import device_for_certificate
from devices.models import Device
from devices.selectors import active_device_for_token, active_device_with_read
from devices.services import device_touch

HEADER = "HTTP_X_PROVISION_TOKEN"
LOCK_DEVICE = "iotcloud_lock_device"  # set on the request by a view whose handler writes the device's twin
TOKEN_READ = "iotcloud_token_read"  # a view's read to do in the token lookup's statement (a TokenRead)
# A bearer token: printable ASCII without spaces, at most 256 bytes (knox's are a prefix and 64 hex digits).
BEARER_TOKEN_RE = re.compile(rb"[!-~]{1,256}")
# Any name an account can have (Django's UnicodeUsernameValidator, 150 characters): anything else is
# refused before it reaches the database, so it cannot exist; this also keeps NUL away from PostgreSQL.
LOGIN_USERNAME_RE = re.compile(r"[\w.@+-]{1,150}")
MAX_PASSWORD_LENGTH = 4096
MAX_FORWARDED_CERT = 32 * 1024  # a URL-escaped PEM certificate is a few KiB


class ProvisionTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = request.META.get(HEADER, "").strip()
        if not token:
            raise exceptions.AuthenticationFailed("Missing provision token", code="missing_token")
        # A view that writes the device's twin asks for its row locked (iotcloud.api.views.DeviceAPIView).
        lock = bool(getattr(request, LOCK_DEVICE, False)) and connection.in_atomic_block
        # A view that needs more than the device's row has it read in the same statement.
        read = getattr(request, TOKEN_READ, None)
        if read is None:
            device, rows = active_device_for_token(token, lock=lock), None
        else:
            device, rows = active_device_with_read(token, read)
        if device is None:
            raise exceptions.AuthenticationFailed("Invalid provision token", code="invalid_token")
        if not lock:  # a locked row is written by the request itself, last_seen with it (DeviceAPIView)
            device_touch(device=device)
        return DevicePrincipal(device, locked=lock, read_rows=rows), token

    def authenticate_header(self, request):
        return 'ProvisionToken header="X-Provision-Token"'


class ClientCertificateAuthentication(authentication.BaseAuthentication):
    """A device's X.509 certificate, as a TLS proxy that verified it forwards it (DEVICE_CERT_HEADER,
    URL-escaped PEM: nginx's $ssl_client_escaped_cert). Taken only from DEVICE_CERT_PROXIES' addresses;
    from anyone else the header is ignored (the provision token is then needed as usual)."""

    def authenticate(self, request):
        pem = forwarded_certificate(request)
        if pem is None:
            return None
        device = device_for_certificate(pem)
        if device is None:
            raise exceptions.AuthenticationFailed("Invalid client certificate", code="invalid_certificate")
        device_touch(device=device)
        return DevicePrincipal(device), None

    def authenticate_header(self, request):
        return 'ProvisionToken header="X-Provision-Token"'


def forwarded_certificate(request) -> str | None:
    """The client certificate (PEM) a trusted TLS proxy forwarded (DEVICE_CERT_HEADER from one of
    DEVICE_CERT_PROXIES' addresses), "" when it forwarded something too big to be one, or None."""
    raw = request.META.get(settings.DEVICE_CERT_META)
    if raw is None or not _from_certificate_proxy(request.META.get("REMOTE_ADDR", "")):
        return None
    return unquote(raw).strip() if len(raw) <= MAX_FORWARDED_CERT else ""


def _from_certificate_proxy(address: str) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in settings.DEVICE_CERT_PROXY_NETWORKS)


class DevicePrincipal:
    """request.user for device requests: the device the token belongs to."""

    is_authenticated = True
    is_anonymous = False
    is_superuser = False
    is_staff = False

    def __init__(self, device: Device, *, locked: bool = False, read_rows: list[tuple] | None = None):
        self.device = device
        self.locked = locked  # its row is locked FOR UPDATE in the request's transaction, as read
        self.read_rows = read_rows  # the view's TokenRead, read with the token lookup (None: not read)

    def __str__(self):
        return f"device:{self.device}"


class OperatorBasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic (POST /customer/auth/token): a malformed header is a 401; failed sign-ins count.

    The password check goes through django.contrib.auth.authenticate with the Django request, so
    django-axes counts failures per username and per address (devices.lockout) and refuses a
    locked-out one even with the right password: 429 with Retry-After.
    """

    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except UnicodeError:  # a header that is not latin-1 (only in-process clients can send one)
            raise exceptions.AuthenticationFailed("Invalid basic header: not ASCII", code="invalid_header") from None

    def authenticate_credentials(self, userid, password, request=None):
        if (
            not LOGIN_USERNAME_RE.fullmatch(userid)
            or len(password) > MAX_PASSWORD_LENGTH
            or "\x00" in password  # no password can contain one (forms refuse it)
        ):
            raise exceptions.AuthenticationFailed("Invalid username/password.", code="authentication_failed")
        django_request = getattr(request, "_request", request)  # axes marks a lockout on the Django request
        user = authenticate(request=django_request, username=userid, password=password)
        if getattr(django_request, "axes_locked_out", False):
            from devices.lockout import LoginLockedOut

            raise LoginLockedOut()
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid username/password.", code="authentication_failed")
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.", code="authentication_failed")
        return user, None


class OperatorTokenAuthentication(TokenAuthentication):
    """knox bearer tokens (`Authorization: Bearer <token>`); a malformed token is a 401, not a 500."""

    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except UnicodeError:  # not latin-1, or a token that is not UTF-8
            raise exceptions.AuthenticationFailed("Invalid token.", code="authentication_failed") from None

    def authenticate_credentials(self, token: bytes):
        if not BEARER_TOKEN_RE.fullmatch(token):  # NUL, control characters, non-ASCII, oversize
            raise exceptions.AuthenticationFailed("Invalid token.", code="authentication_failed")
        return super().authenticate_credentials(token)

    def _cleanup_token(self, auth_token) -> bool:
        """Only this token's own expiry. knox also reads and deletes the user's other expired tokens
        here, a query on every authenticated request; they are pruned hourly instead
        (devices.services.operator_tokens_prune, the bridge's sweep) and never authenticate meanwhile."""
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            username = auth_token.user.get_username()
            auth_token.delete()
            token_expired.send(sender=self.__class__, username=username, source="auth_token")
            return True
        return False
