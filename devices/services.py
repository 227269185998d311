"""Writes to tenants, operators and devices: the one place their rules live.

Views, the admin, management commands and the MQTT bridge call these
functions; none of them changes a Device row on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import ASCIIUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings

from devices.audit import audit_record, audit_rows, who
from devices.bulk import BulkRow, RowError, RowsRefused, RowsTaken, shown_id
from devices.certificates import certificate_issue, certificates_revoke, check_csr_for
from devices.choices import DeviceStatus, Role
from devices.models import Device, DeviceCertificate, Membership, Tenant
from devices.signals import device_decommissioned
from devices.tokens import hash_token, new_provision_token
from iotcloud import outbox
from iotcloud.errors import Conflict, InvalidInput, PayloadTooLarge
from iotcloud.rules import DEVICE_ID, TAG_KEY, TENANT_ID, Limit, device_login
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


def _shown(value, limit: int = 60) -> str:
    """A user-supplied value quoted for a message: repr (escapes control characters), shortened."""
    if not isinstance(value, str):
        return repr(value)[:limit]
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


def operator_tokens_prune(*, now=None) -> int:
    """Delete expired bearer tokens (they no longer authenticate; this only keeps the table small)."""
    count, _ = AuthToken.objects.filter(expiry__lt=now or timezone.now()).delete()
    if count:
        logger.info("operator tokens: %d expired pruned", count)
    return count


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
            shown = _shown(key, TAG_KEY.max_length + 2)
            raise InvalidInput(f"Invalid tag key {shown}: use {TAG_KEY.text}", code="invalid_tags")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX or "\x00" in value:
            raise InvalidInput(
                f"Tag {key!r} must be a string of at most {TAG_VALUE_MAX} characters", code="invalid_tags"
            )
    return dict(tags)


def device_check(*, device_id, tags=None) -> dict[str, str]:
    """Every rule a new device's id and tags keep (device_provision, devices_provision_bulk); the tags, cleaned."""
    if not DEVICE_ID.matches(device_id):
        raise InvalidInput(
            f"Invalid device id {_shown(device_id, DEVICE_ID.max_length + 2)}: use {DEVICE_ID.text} "
            "(no '/', '+', '#' or spaces: the id is part of MQTT topics)",
            code="invalid_device_id",
        )
    return validate_tags(tags if tags is not None else {})


def device_provision(*, tenant: Tenant, device_id: str, tags: dict | None = None) -> tuple[Device, str]:
    """Register a device; returns it with its provision token (shown only now)."""
    tags = device_check(device_id=device_id, tags=tags)
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


BULK_INSERT_BATCH = 1000  # rows per INSERT (SQLite: fewer, Django caps them at its parameter limit)
BULK_IDS_PER_QUERY = 10_000  # ids per "which exist already" query (SQLite: its parameter limit)


def devices_provision_bulk(*, tenant: Tenant, rows: Sequence[BulkRow | Mapping]) -> list[tuple[Device, str]]:
    """Register many devices at once, all or none; returns them with their tokens (shown only now), in order.

    `rows` are devices.bulk.BulkRow (numbered as the user sees them) or mappings of device_id and
    tags (numbered 1, 2...). Every row is checked against device_check's rules, against the other
    rows (an id given twice) and against the tenant's devices before anything is written; all the
    rows breaking a rule are refused together (RowsRefused, 400, naming them). More rows than
    DEVICES_BULK_MAX_ROWS is PayloadTooLarge. Then one transaction inserts them in batches with
    their audit events; an id created meanwhile by someone else is RowsTaken (409), nothing created.
    """
    rows = [row if isinstance(row, BulkRow) else _bulk_row(number, row) for number, row in enumerate(rows, 1)]
    limit = Limit(settings.DEVICES_BULK_MAX_ROWS, "DEVICES_BULK_MAX_ROWS")
    if len(rows) > limit:
        raise PayloadTooLarge(
            f"{len(rows)} devices in one call; the limit is {limit} ({limit.name}): split them",
            code="too_many_rows",
            limit=int(limit),
        )
    if not rows:
        raise InvalidInput("No devices to provision: the upload has no rows", code="no_rows")
    errors: list[RowError] = []
    accepted: dict[str, tuple[BulkRow, dict]] = {}  # device id -> its row and tags
    first_row: dict[str, int] = {}  # device id -> the first row giving it, refused or not
    for row in rows:
        first = first_row.setdefault(row.device_id, row.number) if isinstance(row.device_id, str) else row.number
        try:
            if row.error:
                raise InvalidInput(row.error, code=row.code or "invalid_row")
            tags = device_check(device_id=row.device_id, tags=row.tags)
            if first != row.number:
                raise InvalidInput(
                    f"Device id {row.device_id!r} is given twice: also on row {first}", code="duplicate_device_id"
                )
        except InvalidInput as exc:
            errors.append(RowError(row.number, shown_id(row.device_id), exc.message, exc.code))
            continue
        accepted[row.device_id] = (row, tags)
    for device_id in sorted(_existing_device_ids(tenant, list(accepted)), key=lambda d: accepted[d][0].number):
        errors.append(_exists_error(tenant, accepted.pop(device_id)[0]))
    if errors:
        raise RowsRefused(sorted(errors, key=lambda e: e.row), total=len(rows))

    created: list[tuple[Device, str]] = []
    for device_id, (_, tags) in accepted.items():
        token = new_provision_token()
        device = Device(
            tenant=tenant, device_id=device_id, tags=tags, provision_token_hash=hash_token(token),
            **_broker_account_change(token, current_version=0),
        )  # fmt: skip
        created.append((device, token))
    devices = [device for device, _ in created]
    try:
        with transaction.atomic():
            Device.objects.bulk_create(devices, batch_size=BULK_INSERT_BATCH)
            if any(device.pk is None for device in devices):  # databases that return no ids from a bulk insert
                pks = dict(_tenant_devices(tenant, list(accepted)).values_list("device_id", "pk"))
                for device in devices:
                    device.pk = pks[device.device_id]
            actor, now = who(), timezone.now()
            audit_rows([
                {"tenant_id": tenant.id, "device_id": device.pk, "at": now, "actor": actor.actor,
                 "channel": actor.channel, "action": "device.provision", "after": {"tags": device.tags}}
                for device in devices
            ])  # fmt: skip
    except IntegrityError:  # some of them were created in between, by another request
        taken = sorted(_existing_device_ids(tenant, list(accepted)), key=lambda d: accepted[d][0].number)
        if not taken:  # pragma: no cover (only ids are unique, besides 256-bit token digests)
            raise Conflict("A conflicting change was made meanwhile; nothing was created: try again") from None
        taken_errors = [_exists_error(tenant, accepted[device_id][0], meanwhile=True) for device_id in taken]
        raise RowsTaken(taken_errors, total=len(rows)) from None
    outbox.twins_changed(tenant.id, accepted)
    _wake_broker_sync()
    logger.info("devices provisioned in bulk %s: %d", tenant.id, len(devices))
    return created


def _bulk_row(number: int, row: Mapping) -> BulkRow:
    return BulkRow(number, row.get("device_id"), row.get("tags"))


def _tenant_devices(tenant: Tenant, device_ids: list[str]):
    return Device.objects.filter(tenant=tenant, device_id__in=device_ids)


def _existing_device_ids(tenant: Tenant, device_ids: list[str]) -> set[str]:
    """Which of these ids the tenant already has: one query for 10,000 ids (SQLite: one per 998, its parameter cap)."""
    per_query = min(BULK_IDS_PER_QUERY, (connection.features.max_query_params or BULK_IDS_PER_QUERY + 1) - 1)
    found: set[str] = set()
    for start in range(0, len(device_ids), per_query):
        batch = device_ids[start : start + per_query]
        found.update(_tenant_devices(tenant, batch).values_list("device_id", flat=True))
    return found


def _exists_error(tenant: Tenant, row: BulkRow, *, meanwhile: bool = False) -> RowError:
    when = " (created meanwhile by someone else)" if meanwhile else ""
    detail = f"Device {row.device_id!r} already exists in tenant {tenant.id!r}{when}"
    return RowError(row.number, row.device_id, detail, "device_exists")


def device_provision_with_certificate(
    *, tenant: Tenant, device_id: str, tags: dict | None = None, csr_pem: str | None = None
) -> tuple[Device, str, DeviceCertificate, str | None]:
    """device_provision and an X.509 certificate (for the device's CSR, or with a key made now: returned
    once), all or nothing; a CSR this device may not have is refused before anything exists."""
    if csr_pem is not None:
        check_csr_for(csr_pem, device_login(tenant.id, device_id))
    with transaction.atomic():
        device, token = device_provision(tenant=tenant, device_id=device_id, tags=tags)
        issued, key_pem = certificate_issue(device=device, csr_pem=csr_pem)
    return device, token, issued, key_pem


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
        certificates_revoke(device=device, reason="device decommissioned")  # refused at their next connect
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
