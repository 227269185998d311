"""Reads that scope everything an operator sees to their tenant."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from django.db import connection
from django.db.models.fields.json import KeyTransform

from devices.choices import DeviceStatus
from devices.models import AuditEvent, Device, Membership, Tenant
from devices.tokens import hash_token
from iotcloud.errors import InvalidInput, NotFound
from iotcloud.rules import DEVICE_ID, TENANT_ID


def operator_membership(user) -> Membership | None:
    # Cached on the user object for the request: permissions and querysets both ask.
    if not hasattr(user, "_iotcloud_membership"):
        user._iotcloud_membership = Membership.objects.select_related("tenant").filter(user=user).first()
    return user._iotcloud_membership


def operator_tenant(user) -> Tenant | None:
    """The tenant an operator acts in; None for a superuser without one (sees all)."""
    membership = operator_membership(user)
    return membership.tenant if membership else None


def devices_for_operator(user, *, tenant_id: str | None = None):
    """Devices the operator may see. Superusers see all, optionally one tenant's."""
    qs = Device.objects.select_related("tenant")
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    if tenant is None:
        return qs.none()
    return qs.filter(tenant=tenant)


def device_for_operator(user, device_id: str, *, tenant_id: str | None = None, for_update: bool = False) -> Device:
    """One device by id, or NotFound: another tenant's device does not exist for you."""
    if not DEVICE_ID.matches(device_id):  # cannot exist; also keeps NUL bytes away from PostgreSQL
        raise NotFound(f"Device {device_id[:200]!r} not found", code="device_not_found")
    qs = devices_for_operator(user, tenant_id=tenant_id).filter(device_id=device_id)
    if for_update:
        qs = qs.select_for_update(of=("self",))
    matches = list(qs[:2])
    if not matches:
        raise NotFound(f"Device {device_id!r} not found", code="device_not_found")
    if len(matches) > 1:
        raise InvalidInput(
            f"Device id {device_id!r} exists in several tenants; add ?tenant=<tenant id>",
            code="ambiguous_device",
        )
    return matches[0]


def tenant_for_write(user, requested: str | None) -> Tenant:
    """The tenant a new object goes into: the operator's own, or the one a superuser names."""
    own = operator_tenant(user)
    if requested is None:
        if own is None:
            raise InvalidInput('Say which tenant: add "tenant": "<tenant id>"', code="tenant_required")
        return own
    if own is not None and requested != own.id and not user.is_superuser:
        raise InvalidInput(f"You can only act in your own tenant ({own.id!r})", code="foreign_tenant")
    tenant = Tenant.objects.filter(id=requested).first() if TENANT_ID.matches(requested) else None  # no NUL to SQL
    if tenant is None:
        raise InvalidInput(f"Tenant {requested[:80]!r} does not exist", code="unknown_tenant")
    return tenant


def filter_by_tag(queryset, key: str, value: str | None):
    """Devices having tag `key` (any value, when value is None) or `key` == `value`.

    Tag keys are user data, so they are never spliced into ORM lookup strings
    (a key such as "contains" or "a__b" would change the query's meaning).
    """
    if value is None:
        return queryset.filter(tags__has_key=key)
    if connection.vendor == "postgresql":
        return queryset.filter(tags__contains={key: value})  # uses the GIN index
    column = Device._meta.get_field("tags").get_col(Device._meta.db_table)
    transform = KeyTransform(key, column)
    return queryset.filter(transform.get_lookup("exact")(transform, value))


MAX_TOKEN_LENGTH = 256
_DEVICE_FIELDS = tuple(Device._meta.concrete_fields)
# What every device request needs of its row (authentication, last_seen, the rate limit): a request
# that reads more in the token lookup's statement (TokenRead) takes only these; the rest is deferred.
_AUTH_FIELDS = tuple(
    Device._meta.get_field(name)
    for name in ("id", "tenant", "device_id", "provision_token_hash", "status", "last_seen")
)


def _columns(fields, table: str = "") -> str:
    return ", ".join(f"{table}{f.column}" for f in fields)  # model column names, no input


_LOOKUP_SQL = "SELECT {} FROM device_state WHERE provision_token_hash = %s LIMIT 1"
_TOKEN_LOOKUP_SQL = _LOOKUP_SQL.format(_columns(_DEVICE_FIELDS))
# The token lookup, then a TokenRead's columns: a row per row read (one when it has none). Model column
# names only; a TokenRead's SQL is the application's, its values are parameters.
_WITH_READ_SQL = (
    f"WITH token_device AS ({_LOOKUP_SQL.format(_columns(_AUTH_FIELDS))})"  # noqa: S608
    f" SELECT {_columns(_AUTH_FIELDS, 'token_device.')}, r.* FROM token_device LEFT JOIN ({{sql}}) r ON 1 = 1"
    " ORDER BY r.{order}"
)
# In a TokenRead's SQL: the id of the device the token belongs to (a one-row CTE of the same statement).
TOKEN_DEVICE_ID = "(SELECT id FROM token_device)"


@dataclass(frozen=True)
class TokenRead:
    """Rows a device request needs, read in its token lookup's one statement (active_device_with_read).

    `sql` (with `params`) selects them for the device TOKEN_DEVICE_ID; its column `order` orders them
    and is never NULL.
    """

    sql: str
    params: tuple
    order: str


def _device_by_token_hash(digest: str, *, lock: bool = False) -> Device | None:
    """Every device request runs this: plain SQL and a hand-built instance, because the
    ORM's query building and row mapping cost more than the indexed lookup itself."""
    with connection.cursor() as cursor:
        # (SQLite has no FOR UPDATE: its IMMEDIATE transactions hold the write lock from BEGIN.)
        for_update = lock and connection.features.has_select_for_update
        cursor.execute(_TOKEN_LOOKUP_SQL + (" FOR UPDATE" if for_update else ""), [digest])
        row = cursor.fetchone()
    return None if row is None else _device_from_row(row, _DEVICE_FIELDS)


def _device_and_rows(digest: str, read: TokenRead) -> tuple[Device | None, list[tuple]]:
    with connection.cursor() as cursor:
        cursor.execute(_WITH_READ_SQL.format(sql=read.sql, order=read.order), [digest, *read.params])
        fetched = cursor.fetchall()
    if not fetched:
        return None, []
    width = len(_AUTH_FIELDS)
    rows = [row[width:] for row in fetched]
    if len(rows) == 1 and all(value is None for value in rows[0]):  # the LEFT JOIN's row when read has none
        rows = []
    return _device_from_row(fetched[0][:width], _AUTH_FIELDS), rows


def _device_from_row(row, fields) -> Device:
    """A Device of `fields`' values as the ORM makes one (its converters applied; other fields deferred)."""
    values = list(row)
    table = Device._meta.db_table
    for index, converters in _converters(fields):
        for converter in converters:
            values[index] = converter(values[index], fields[index].get_col(table), connection)
    return Device.from_db(connection.alias, [f.attname for f in fields], values)


def _converters(fields) -> list[tuple[int, list]]:
    """The backend's and the fields' value converters (as the ORM applies them), once per backend."""
    key = (connection.vendor, fields)
    if key not in _CONVERTERS:
        table = Device._meta.db_table
        _CONVERTERS[key] = [
            (index, found)
            for index, field in enumerate(fields)
            if (found := connection.ops.get_db_converters(field.get_col(table)) + field.get_db_converters(connection))
        ]
    return _CONVERTERS[key]


_CONVERTERS: dict[tuple, list] = {}


def _token_digest(token: str) -> str | None:
    return hash_token(token) if token and len(token) <= MAX_TOKEN_LENGTH else None


def _is_active_owner(device: Device | None, digest: str) -> bool:
    """The row found is the token's (compared again in constant time) and the device is active."""
    return (
        device is not None
        and hmac.compare_digest(device.provision_token_hash, digest)
        and device.status == DeviceStatus.ACTIVE
    )


def active_device_for_token(token: str, *, lock: bool = False) -> Device | None:
    """The active device a provision token belongs to, or None.

    Looked up by sha256 digest (the token is never stored), then compared
    again in constant time. Used by HTTP device auth and MQTT broker auth.
    lock (inside a transaction): its row is locked FOR UPDATE, so the request's own write can use
    this read (twin.engine's `locked`) instead of reading the row again.
    """
    digest = _token_digest(token)
    device = _device_by_token_hash(digest, lock=lock) if digest else None
    return device if _is_active_owner(device, digest) else None


def active_device_with_read(token: str, read: TokenRead) -> tuple[Device | None, list[tuple]]:
    """active_device_for_token (its authentication fields only) and `read`'s rows for that device, in one
    statement; (None, []) when the token is refused."""
    digest = _token_digest(token)
    device, rows = _device_and_rows(digest, read) if digest else (None, [])
    return (device, rows) if _is_active_owner(device, digest) else (None, [])


def device_read_rows(read: TokenRead, device_pk: int) -> list[tuple]:
    """`read`'s rows for a device known already (a certificate's, a service's), in its order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH token_device AS (SELECT %s AS id) SELECT r.* FROM ({read.sql}) r ORDER BY r.{read.order}",  # noqa: S608
            [device_pk, *read.params],
        )
        return cursor.fetchall()


def audit_for_operator(user, *, tenant_id: str | None = None):
    """Audit events the operator may read: their tenant's (superusers: all, or one tenant's)."""
    qs = AuditEvent.objects.select_related("device")
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    return qs.filter(tenant=tenant) if tenant else qs.none()
