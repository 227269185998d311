"""Writes to tenants, operators and devices: the one place their rules live.

Views, the admin, management commands and the MQTT bridge call these
functions; none of them changes a Device row on its own.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import ASCIIUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings

from devices.audit import audit_record
from devices.choices import DeviceStatus, Role
from devices.models import Device, Membership, Tenant
from devices.signals import device_decommissioned
from devices.tokens import hash_token, new_provision_token
from iotcloud import outbox
from iotcloud.errors import Conflict, InvalidInput
from iotcloud.rules import DEVICE_ID, TAG_KEY, TENANT_ID
from iotcloud.sealing import seal

logger = logging.getLogger(__name__)

TAG_VALUE_MAX = 256


# --- tenants and operators -------------------------------------------------


def tenant_create(*, tenant_id: str, name: str = "") -> Tenant:
    if not TENANT_ID.matches(tenant_id):
        raise InvalidInput(
            f"Invalid tenant id {tenant_id!r}: use {TENANT_ID.text}",
            code="invalid_tenant_id",
        )
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(id=tenant_id, name=name or tenant_id)
    except IntegrityError:
        raise Conflict(f"Tenant {tenant_id!r} already exists", code="tenant_exists") from None
    logger.info("tenant created %s", tenant_id)
    return tenant


# Operator usernames: ASCII letters, digits and @ . + - _ (Django's ASCIIUsernameValidator), at most
# 150 characters. No spaces, newlines, markup, zero-width or other invisible characters, and no
# look-alike letters from other scripts ("acme-admin\u200b" or a Cyrillic "\u0430" cannot pass for
# "acme-admin"); a name differing only in case from an existing one is refused too.
USERNAME_MAX_LENGTH = 150
_username_validator = ASCIIUsernameValidator()


def _shown(value: str, limit: int = 60) -> str:
    """A user-supplied value quoted for a message: repr (escapes control characters), shortened."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def operator_username_check(username, *, tenant: Tenant | None) -> str:
    """The username normalized (NFKC), or InvalidInput / Conflict.

    A name taken by an operator of `tenant` (the tenant the account is made in: the acting
    admin's own) is "already exists"; a name taken anywhere else gets the same neutral answer as
    any other unusable name, so a tenant admin cannot learn which accounts exist platform-wide.
    """
    User = get_user_model()
    if not isinstance(username, str) or not username:
        raise InvalidInput("A username is required", code="invalid_username")
    username = User.normalize_username(username)
    try:
        if len(username) > USERNAME_MAX_LENGTH:
            raise ValidationError("too long")
        _username_validator(username)
    except ValidationError:
        raise InvalidInput(
            f"Invalid username {_shown(username)}: use 1-{USERNAME_MAX_LENGTH} of A-Z a-z 0-9 @ . + - _ "
            "(no spaces, accents or invisible characters)",
            code="invalid_username",
        ) from None
    taken = User.objects.filter(username__iexact=username).first()
    if taken is not None:
        if tenant is not None and Membership.objects.filter(user=taken, tenant=tenant).exists():
            raise Conflict(
                f"An operator named {taken.username!r} already exists in tenant {tenant.id!r}", code="user_exists"
            )
        raise Conflict("This username cannot be used; choose another one", code="username_unavailable")
    return username


def operator_password_check(password: str, *, user) -> None:
    """AUTH_PASSWORD_VALIDATORS (length, common passwords, similarity to the username...), as InvalidInput.

    The messages are in `errors`, one per rule broken; the admin shows each under the field.
    """
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise InvalidInput(
            "Password refused: " + " ".join(exc.messages), code="invalid_password", errors=list(exc.messages)
        ) from None


def operator_check(*, username, password: str | None, tenant: Tenant | None, email: str = "") -> str:
    """Every rule operator_create applies, without creating anything (forms show the errors first).

    Returns the normalized username.
    """
    username = operator_username_check(username, tenant=tenant)
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise InvalidInput(f"Invalid email address {_shown(email)}", code="invalid_email") from None
    if password:
        operator_password_check(password, user=get_user_model()(username=username, email=email))
    return username


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
    """An operator account; a superuser may have no tenant (it sees all).

    The username and password rules hold on every path (admin, commands, demo); without a
    password the account has an unusable one (bearer tokens only).
    """
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}; expected one of {', '.join(Role.values)}", code="invalid_role")
    if tenant is None and not superuser:
        raise InvalidInput("An operator who is not a superuser needs a tenant", code="tenant_required")
    username = operator_check(username=username, password=password, tenant=tenant, email=email)
    User = get_user_model()
    user = User(username=username, email=email, is_staff=True, is_superuser=superuser)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # created in between by someone else
        raise Conflict("This username cannot be used; choose another one", code="username_unavailable") from None
    if tenant is not None:
        Membership.objects.create(user=user, tenant=tenant, role=role)
    logger.info("operator created %s tenant=%s role=%s", username, tenant and tenant.id, role)
    return user


def operator_token_issue(*, user, replace_oldest: bool = False) -> tuple[AuthToken, str]:
    """A new bearer token (returned once, stored as a digest) and its row, with the expiry.

    Tokens live REST_KNOX["TOKEN_TTL"] (OPERATOR_TOKEN_TTL_HOURS). An operator holds at most
    TOKEN_LIMIT_PER_USER unexpired tokens (OPERATOR_TOKEN_LIMIT): at the cap a new one is refused
    (Conflict "token_limit") so that no script loses its token behind its back, unless
    replace_oldest (the demo, `create_operator_token --replace-oldest`) revokes the oldest ones.
    """
    limit = knox_settings.TOKEN_LIMIT_PER_USER
    with transaction.atomic():
        # One issuer at a time per operator, so that concurrent logins cannot both pass the count.
        get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
        AuthToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()  # expired ones are gone anyway
        if limit:
            live = AuthToken.objects.filter(user=user).order_by("created")
            count = live.count()
            if count >= limit and not replace_oldest:
                raise Conflict(
                    f"{user} already has {count} active bearer tokens, the limit (OPERATOR_TOKEN_LIMIT={limit}): "
                    "revoke one (POST /customer/auth/logout with it) or wait until one expires; "
                    "a new password revokes them all",
                    code="token_limit",
                    limit=limit,
                )
            if count >= limit:
                oldest = list(live.values_list("pk", flat=True)[: count - limit + 1])
                AuthToken.objects.filter(pk__in=oldest).delete()
                logger.info("operator tokens revoked for %s: %d oldest, at the limit", user, len(oldest))
        instance, token = AuthToken.objects.create(
            user=user, expiry=knox_settings.TOKEN_TTL, prefix=knox_settings.TOKEN_PREFIX
        )
    logger.info("operator token created for %s (expires %s)", user, instance.expiry or "never")
    return instance, token


def operator_token_create(*, user, replace_oldest: bool = False) -> str:
    """A new bearer token for scripts (see operator_token_issue); returned once."""
    return operator_token_issue(user=user, replace_oldest=replace_oldest)[1]


def operator_tokens_revoke(*, user) -> int:
    """Revoke every bearer token of the operator (a new password, a disabled password)."""
    count, _ = AuthToken.objects.filter(user=user).delete()
    if count:
        logger.info("operator tokens revoked for %s: %d (password changed)", user, count)
    return count


def operator_set_password(*, user, password: str | None) -> None:
    """A new password (None: password sign-in disabled), after the password validators.

    Signs the operator out everywhere: their bearer tokens are revoked, and their sessions end
    (Django ties a session to the password hash). Every other path that sets a password
    (`changepassword`, Django's own admin forms, password reset) revokes the tokens too, through
    revoke_tokens_on_password_change below.
    """
    if password is None:
        user.set_unusable_password()
    else:
        operator_password_check(password, user=user)
        user.set_password(password)
    user.save(update_fields=["password"])
    operator_tokens_revoke(user=user)
    logger.info("operator password %s for %s", "set" if password is not None else "disabled", user)


def revoke_tokens_on_password_change(sender, instance, created=False, **kwargs) -> None:
    """post_save of the user model: set_password() was called (any path) -> revoke the tokens.

    `_password` holds the new raw password from set_password() until the save completes; it is
    None for other saves, including the hash upgrade check_password() does at sign-in.
    """
    if not created and getattr(instance, "_password", None) is not None:
        operator_tokens_revoke(user=instance)


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
        if not TAG_KEY.matches(key):
            raise InvalidInput(f"Invalid tag key {key!r}: use {TAG_KEY.text}", code="invalid_tags")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX or "\x00" in value:
            raise InvalidInput(
                f"Tag {key!r} must be a string of at most {TAG_VALUE_MAX} characters", code="invalid_tags"
            )
    return dict(tags)


def device_provision(*, tenant: Tenant, device_id: str, tags: dict | None = None) -> tuple[Device, str]:
    """Register a device; returns it with its provision token (shown only now)."""
    if not DEVICE_ID.matches(device_id):
        raise InvalidInput(
            f"Invalid device id {device_id!r}: use {DEVICE_ID.text} "
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
    audit_record(tenant_id=tenant.id, device_id=device.pk, action="device.provision", after={"tags": tags})
    outbox.twins_changed(tenant.id, [device_id])
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
    audit_record(tenant_id=device.tenant_id, device_id=device.pk, action="device.rotate_token")
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
        audit_record(tenant_id=device.tenant_id, device_id=device.pk, action="device.decommission")
        device_decommissioned.send(sender=Device, device=device, reason="device decommissioned")  # jobs cancel theirs
        outbox.wake_delivery()
        outbox.twins_changed(device.tenant_id, [device.device_id])
    device.refresh_from_db()
    logger.info("device decommissioned %s", device)
    return device


def _broker_account_change(token: str | None, *, current_version=None) -> dict:
    """Columns that hand a device's broker account change to the bridge (MQTT_DEVICE_AUTH=dynsec).

    The new token rides along encrypted until the bridge has set it; None means "delete".
    """
    if not settings.MQTT_DEVICE_AUTH:
        return {}
    version = F("broker_account_version") + 1 if current_version is None else current_version + 1
    return {"broker_account_version": version, "broker_secret": seal(token) if token else ""}


def _wake_broker_sync() -> None:
    if settings.MQTT_DEVICE_AUTH:
        outbox.wake_delivery()


def device_set_tags(*, device: Device, tags: dict) -> Device:
    tags = validate_tags(tags)
    before = Device.objects.filter(pk=device.pk).values_list("tags", flat=True).first()
    Device.objects.filter(pk=device.pk).update(tags=tags)
    audit_record(tenant_id=device.tenant_id, device_id=device.pk, action="device.tags", before=before, after=tags)
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
        outbox.twins_changed(device.tenant_id, [device.device_id])  # a stale badge may turn fresh
    device.last_seen = now
