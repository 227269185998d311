"""Writes to tenants, operators and devices: the one place their rules live.

Views, the admin, management commands and the MQTT bridge call these
functions; none of them changes a Device row on its own.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from knox.models import AuthToken

from devices.choices import DeviceStatus, Role
from devices.models import DEVICE_ID_RE, TENANT_ID_RE, Device, Membership, Tenant
from devices.tokens import hash_token, new_provision_token
from iotcloud.errors import Conflict, InvalidInput
from iotcloud.live import events
from mqtt_bridge.services import wake_bridge

logger = logging.getLogger(__name__)

TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
TAG_VALUE_MAX = 256


# --- tenants and operators -------------------------------------------------


def tenant_create(*, tenant_id: str, name: str = "") -> Tenant:
    if not isinstance(tenant_id, str) or not re.fullmatch(TENANT_ID_RE, tenant_id):
        raise InvalidInput(
            f"Invalid tenant id {tenant_id!r}: use 1-63 of a-z 0-9 _ - starting with a letter or digit",
            code="invalid_tenant_id",
        )
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(id=tenant_id, name=name or tenant_id)
    except IntegrityError:
        raise Conflict(f"Tenant {tenant_id!r} already exists", code="tenant_exists") from None
    logger.info("tenant created %s", tenant_id)
    return tenant


@transaction.atomic
def operator_create(
    *,
    username: str,
    tenant: Tenant | None,
    role: str = Role.OPERATOR,
    email: str = "",
    password: str | None = None,
    superuser: bool = False,
):
    """An operator account; a superuser may have no tenant (it sees all)."""
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}; expected one of {', '.join(Role.values)}", code="invalid_role")
    if tenant is None and not superuser:
        raise InvalidInput("An operator who is not a superuser needs a tenant", code="tenant_required")
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise Conflict(f"User {username!r} already exists", code="user_exists")
    user = User(username=username, email=email, is_staff=True, is_superuser=superuser)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    if tenant is not None:
        Membership.objects.create(user=user, tenant=tenant, role=role)
    logger.info("operator created %s tenant=%s role=%s", username, tenant and tenant.id, role)
    return user


def operator_token_create(*, user) -> str:
    """A new bearer token for scripts; returned once, stored as a digest."""
    _instance, token = AuthToken.objects.create(user=user, expiry=settings.REST_KNOX["TOKEN_TTL"])
    logger.info("operator token created for %s", user)
    return token


# --- devices -------------------------------------------------------------------


def validate_tags(tags) -> dict[str, str]:
    """Tags are a flat object of short strings, used to select devices for jobs."""
    if not isinstance(tags, dict):
        raise InvalidInput("tags must be a JSON object of string values", code="invalid_tags")
    if len(tags) > settings.DEVICE_MAX_TAGS:
        raise InvalidInput(
            f"Too many tags ({len(tags)}); the limit is {settings.DEVICE_MAX_TAGS} (DEVICE_MAX_TAGS)",
            code="invalid_tags",
        )
    for key, value in tags.items():
        if not (isinstance(key, str) and TAG_KEY_RE.fullmatch(key)):
            raise InvalidInput(f"Invalid tag key {key!r}: use 1-64 of A-Z a-z 0-9 _ . : -", code="invalid_tags")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX or "\x00" in value:
            raise InvalidInput(
                f"Tag {key!r} must be a string of at most {TAG_VALUE_MAX} characters", code="invalid_tags"
            )
    return dict(tags)


def device_provision(*, tenant: Tenant, device_id: str, tags: dict | None = None) -> tuple[Device, str]:
    """Register a device; returns it with its provision token (shown only now)."""
    if not isinstance(device_id, str) or not re.fullmatch(DEVICE_ID_RE, device_id):
        raise InvalidInput(
            f"Invalid device id {device_id!r}: use 1-128 of A-Z a-z 0-9 _ . : - "
            "(no '/', '+', '#' or spaces: the id is part of MQTT topics)",
            code="invalid_device_id",
        )
    tags = validate_tags(tags if tags is not None else {})
    token = new_provision_token()
    try:
        with transaction.atomic():
            device = Device.objects.create(
                tenant=tenant, device_id=device_id, tags=tags, provision_token_hash=hash_token(token),
                **_broker_account_change(token, current_version=0),
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"Device {device_id!r} already exists in tenant {tenant.id!r}", code="device_exists") from None
    events.twins_changed(tenant.id, [device_id])
    _wake_broker_sync()
    logger.info("device provisioned %s/%s", tenant.id, device_id)
    return device, token


def device_rotate_token(*, device: Device) -> str:
    """Replace the provision token; the old one stops working at once."""
    token = new_provision_token()
    updated = Device.objects.filter(pk=device.pk, status=DeviceStatus.ACTIVE).update(
        provision_token_hash=hash_token(token), **_broker_account_change(token)
    )
    if not updated:
        raise Conflict(
            f"Device {device.device_id!r} is decommissioned; its token cannot be rotated", code="device_decommissioned"
        )
    device.provision_token_hash = hash_token(token)
    _wake_broker_sync()
    logger.info("device token rotated %s", device)
    return token


@transaction.atomic
def device_decommission(*, device: Device) -> Device:
    """Retire a device: its token stops working and its retained desired message is cleared. Idempotent.

    Resetting desired_published_version (and flagging its jobs notify) hands
    the clearing to the bridge's reconciliation, so it happens even if the
    broker is down right now.
    """
    now = timezone.now()
    changed = Device.objects.filter(pk=device.pk, status=DeviceStatus.ACTIVE).update(
        status=DeviceStatus.DECOMMISSIONED,
        decommissioned_at=now,
        desired_published_version=0,
        **_broker_account_change(None),  # the bridge deletes its broker account
    )
    if changed:
        from jobs.services import executions_cancel_for_device  # jobs build on devices, not the reverse

        executions_cancel_for_device(device=device, reason="device decommissioned")
        wake_bridge()
        events.twins_changed(device.tenant_id, [device.device_id])
    device.refresh_from_db()
    logger.info("device decommissioned %s", device)
    return device


def _broker_account_change(token: str | None, *, current_version=None) -> dict:
    """Columns that hand a device's broker account change to the bridge (MQTT_DEVICE_AUTH=dynsec).

    The new token rides along encrypted until the bridge has set it; None means "delete".
    """
    if not settings.MQTT_DEVICE_AUTH:
        return {}
    from mqtt_bridge.secrets import seal

    version = F("broker_account_version") + 1 if current_version is None else current_version + 1
    return {"broker_account_version": version, "broker_secret": seal(token) if token else ""}


def _wake_broker_sync() -> None:
    if settings.MQTT_DEVICE_AUTH:
        wake_bridge()


def device_set_tags(*, device: Device, tags: dict) -> Device:
    tags = validate_tags(tags)
    Device.objects.filter(pk=device.pk).update(tags=tags)
    device.tags = tags
    return device


def device_touch(*, device: Device, now: datetime | None = None) -> None:
    """Record that the device was heard from, at most once per resolution window.

    A fleet polling every few seconds would otherwise make every read a write;
    the conditional UPDATE also keeps concurrent requests from piling up.
    """
    now = now or timezone.now()
    resolution = settings.DEVICE_LAST_SEEN_RESOLUTION
    if device.last_seen is not None and now - device.last_seen < resolution:
        return
    if (
        Device.objects.filter(pk=device.pk)
        .filter(Q(last_seen__isnull=True) | Q(last_seen__lt=now - resolution))
        .update(last_seen=now)
    ):
        events.twins_changed(device.tenant_id, [device.device_id])  # a stale badge may turn fresh
    device.last_seen = now
