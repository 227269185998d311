"""Reads that scope everything an operator sees to their tenant."""

from __future__ import annotations

import hmac

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
_DEVICE_FIELDS = Device._meta.concrete_fields
_COLUMNS = ", ".join(f.column for f in _DEVICE_FIELDS)  # model column names, no input
_TOKEN_LOOKUP_SQL = f"SELECT {_COLUMNS} FROM device_state WHERE provision_token_hash = %s LIMIT 1"  # noqa: S608


def _device_by_token_hash(digest: str, *, lock: bool = False) -> Device | None:
    """Every device request runs this: plain SQL and a hand-built instance, because the
    ORM's query building and row mapping cost more than the indexed lookup itself."""
    with connection.cursor() as cursor:
        # (SQLite has no FOR UPDATE: its IMMEDIATE transactions hold the write lock from BEGIN.)
        for_update = lock and connection.features.has_select_for_update
        cursor.execute(_TOKEN_LOOKUP_SQL + (" FOR UPDATE" if for_update else ""), [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, converters in _converters():
        for converter in converters:
            values[index] = converter(values[index], _DEVICE_FIELDS[index].get_col(Device._meta.db_table), connection)
    return Device.from_db(connection.alias, [f.attname for f in _DEVICE_FIELDS], values)


def _converters() -> list[tuple[int, list]]:
    """The backend's and the fields' value converters (as the ORM applies them), once per backend."""
    if connection.vendor not in _CONVERTERS:
        table = Device._meta.db_table
        _CONVERTERS[connection.vendor] = [
            (index, found)
            for index, field in enumerate(_DEVICE_FIELDS)
            if (found := connection.ops.get_db_converters(field.get_col(table)) + field.get_db_converters(connection))
        ]
    return _CONVERTERS[connection.vendor]


_CONVERTERS: dict[str, list] = {}


def active_device_for_token(token: str, *, lock: bool = False) -> Device | None:
    """The active device a provision token belongs to, or None.

    Looked up by sha256 digest (the token is never stored), then compared
    again in constant time. Used by HTTP device auth and MQTT broker auth.
    lock (inside a transaction): its row is locked FOR UPDATE, so the request's own write can use
    this read (twin.engine's `locked`) instead of reading the row again.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    digest = hash_token(token)
    device = _device_by_token_hash(digest, lock=lock)
    if device is None or not hmac.compare_digest(device.provision_token_hash, digest):
        return None
    return device if device.status == DeviceStatus.ACTIVE else None


def audit_for_operator(user, *, tenant_id: str | None = None):
    """Audit events the operator may read: their tenant's (superusers: all, or one tenant's)."""
    qs = AuditEvent.objects.select_related("device")
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    return qs.filter(tenant=tenant) if tenant else qs.none()
