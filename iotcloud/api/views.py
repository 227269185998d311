"""Shared machinery of the API views: the operator viewsets (tenant scope, strict cursors), the device base view."""

import binascii
import datetime
import re
from base64 import b64decode
from collections.abc import Callable
from urllib.parse import unquote_plus

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models, transaction
from rest_framework import mixins, viewsets
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from devices.authentication import (
    LOCK_DEVICE,
    TOKEN_READ,
    ClientCertificateAuthentication,
    ProvisionTokenAuthentication,
)
from devices.permissions import IsDevice
from devices.selectors import TokenRead, device_read_rows
from devices.services import device_touch
from devices.throttling import RateLimitedViewMixin
from iotcloud.errors import InvalidInput
from iotcloud.rules import fits_int64

# What DRF's encode_cursor writes: standard base64 (with `=` padding) of `o=N&r=1&p=<urlencoded position>`.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TOKEN = re.compile(r"([opr])=([A-Za-z0-9._~%+-]*)")
MAX_CURSOR_CHARS = 2048


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"

    def __init__(self):
        super().__init__("Invalid cursor")


class StrictCursorPagination(CursorPagination):
    """DRF's CursorPagination that takes back only what it could have issued.

    DRF decodes a cursor leniently and filters with its position as a string:
    a position that is not a date (for `created_at`) or a number (for `id`)
    made Django or the database raise (a 500). Here every part is checked, and
    the position is parsed as the ordering field's type (an aware datetime, a
    64-bit integer, a string passing the field's validators), so anything but
    a cursor of ours is a 400 `invalid_cursor`.
    """

    invalid_cursor_message = "Invalid cursor"

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        if len(encoded) > MAX_CURSOR_CHARS or not _BASE64.fullmatch(encoded):
            raise InvalidCursor
        try:
            querystring = b64decode(encoded, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidCursor from None
        tokens = {}
        for part in querystring.split("&") if querystring else []:
            match = _TOKEN.fullmatch(part)
            if not match or match[1] in tokens:
                raise InvalidCursor
            try:
                tokens[match[1]] = unquote_plus(match[2], errors="strict")
            except UnicodeDecodeError:
                raise InvalidCursor from None
        offset = tokens.get("o", "0")
        if not offset.isascii() or not offset.isdigit() or len(offset) > 6 or int(offset) > self.offset_cutoff:
            raise InvalidCursor
        if tokens.get("r", "0") not in ("0", "1"):
            raise InvalidCursor
        position = tokens.get("p")
        if position is not None:
            position = self._parse_position(position)
        return Cursor(offset=int(offset), reverse=tokens.get("r") == "1", position=position)

    def _parse_position(self, raw: str):
        """The position as a value of the ordering field (what a row of ours could have), or InvalidCursor."""
        if not raw.isascii() or not raw.isprintable():
            raise InvalidCursor
        try:
            field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
        except FieldDoesNotExist:  # pragma: no cover (a programming error, caught by the tests of each list)
            raise InvalidCursor from None
        try:
            value = field.to_python(raw)
            if isinstance(field, models.DateTimeField):
                if not isinstance(value, datetime.datetime) or value.tzinfo is None:
                    raise InvalidCursor
                value = value.astimezone(datetime.UTC)  # OverflowError near year 1 and 9999
            elif isinstance(field, models.IntegerField) and not fits_int64(value):
                raise InvalidCursor
            field.run_validators(value)
        except (ValidationError, ValueError, TypeError, OverflowError):
            raise InvalidCursor from None
        if value in field.empty_values:  # run_validators skips empty values
            raise InvalidCursor
        return value


def cursor_pagination(ordering: str, *, page_size: int = 100, max_page_size: int = 1000) -> type[CursorPagination]:
    """Keyset pagination: page N of a million rows costs the same as page 1 (no COUNT, no OFFSET).

    A cursor we did not issue (malformed, or a position that is not of the ordering field's type)
    is a 400 `{"detail": "Invalid cursor", "code": "invalid_cursor"}`.
    """
    return type(
        "CursorPagination",
        (StrictCursorPagination,),
        {"ordering": ordering, "page_size": page_size, "page_size_query_param": "page_size",
         "max_page_size": max_page_size},
    )  # fmt: skip


class TenantScopedViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """List and retrieve objects of the caller's tenant; superusers see all (or ?tenant=<id>).

    Subclasses name the model and two selectors: `scoped(user, tenant_id)` for
    the list and `lookup(user, key, tenant_id)` for one object (NotFound for
    another tenant's object).
    """

    lookup_value_regex = "[^/]+"
    model = None

    def scoped(self, user, tenant_id):
        raise NotImplementedError

    def lookup(self, user, key, tenant_id):
        raise NotImplementedError

    @property
    def tenant_param(self) -> str | None:
        return self.request.query_params.get("tenant")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return self.model.objects.none()
        return self.scoped(self.request.user, self.tenant_param)

    def get_object(self):
        return self.lookup(self.request.user, self.kwargs[self.lookup_field], self.tenant_param)


class DeviceAPIView(RateLimitedViewMixin, APIView):
    """Device endpoints: provision-token auth, per-device rate limit (DEVICE_RATE_LIMIT), JSON only."""

    # A TLS proxy's forwarded certificate (from DEVICE_CERT_PROXIES only), else the provision token.
    authentication_classes = [ClientCertificateAuthentication, ProvisionTokenAuthentication]
    permission_classes = [IsDevice]
    renderer_classes = [JSONRenderer]  # devices speak JSON; no browsable-API negotiation on the hot path
    # Methods whose handler writes the device's twin: the request is one transaction, and the token
    # lookup locks the device's row, so the write reuses that read (`device_locked`) instead of
    # reading it again: one round trip fewer, one transaction instead of two.
    locking_methods: frozenset[str] = frozenset()
    # Per method, rows its handler needs (a devices.selectors.TokenRead made per request): read in the
    # token lookup's statement, so the request is one SQL statement; the handler takes `token_read_rows`.
    token_reads: dict[str, Callable[[], TokenRead]] = {}

    def dispatch(self, request, *args, **kwargs):
        if (read := self.token_reads.get(request.method)) is not None:
            setattr(request, TOKEN_READ, read())
        if request.method not in self.locking_methods:
            return super().dispatch(request, *args, **kwargs)
        setattr(request, LOCK_DEVICE, True)
        with transaction.atomic():
            response = super().dispatch(request, *args, **kwargs)
            principal = getattr(self.request, "user", None)
            if response.status_code >= 400 and getattr(principal, "locked", False):
                # Refused, so nothing moved last_seen (an accepted write does, in its own statement:
                # twin.engine), but the device was heard from.
                device_touch(device=principal.device)
            return response

    @property
    def device(self):
        return self.request.user.device

    @property
    def device_locked(self) -> tuple:
        """The request's device, if its row is locked in this request's transaction as read (for twin.engine)."""
        return (self.device,) if getattr(self.request.user, "locked", False) else ()

    @property
    def token_read_rows(self) -> list[tuple]:
        """This method's TokenRead rows for the request's device: read with the token lookup, or on their
        own when the credential was not a token (a certificate's lookup is another statement)."""
        rows = self.request.user.read_rows
        return device_read_rows(getattr(self.request, TOKEN_READ), self.device.pk) if rows is None else rows
