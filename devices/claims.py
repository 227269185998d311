"""Fleet provisioning by claim: templates, their claim credentials, and the registration of a device by claim.

A tenant makes a provisioning template (what a new device becomes: its id, `device_id_prefix` +
its serial; its tags; its initial desired state; its credential) and claims on it: claim tokens
(`iotc_...`, shown once, stored as a sha256 digest) that are baked into firmware and shared by a
fleet. A device presenting a claim token and its serial (HTTP: POST /device/v1/register; MQTT:
mqtt_bridge.provisioning_api) registers and receives its own identity, a provision token, exactly
as devices.services.device_provision gives one. Each serial registers once per tenant (the unique
(tenant, serial) of provisioning_registrations); a claim can be limited in registrations
(`max_registrations`, kept by one guarded UPDATE that also locks the claim's row) and in time
(`expires_at`), and revoked. Every registration is audited (`device.register`, actor `claim:<id>`).

The initial desired state is the twin's business (this domain does not import twin): it is checked
and written by the receivers of devices.signals.template_desired_check and device_registered.
The claim token itself is never logged nor stored.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from devices.audit import Actor, acting, audit_record
from devices.certificates import (
    ca_certificate_pem,
    check_csr_for,
    claim_certificate_issue,
    claim_certificates_revoke,
)
from devices.choices import CredentialKind
from devices.models import Device, DeviceCertificate, ProvisioningClaim, ProvisioningTemplate, Registration, Tenant
from devices.provisioning_hook import check_hook_secret, check_hook_url, hook_check
from devices.selectors import operator_tenant
from devices.services import device_provision, device_provision_with_certificate, validate_tags
from devices.signals import device_registered, template_desired_check
from devices.tokens import CLAIM_PREFIX, hash_token, new_claim_token
from iotcloud.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from iotcloud.rules import DEVICE_ID_PREFIX, INT32_MAX, PROVISIONING_TEMPLATE_NAME, SERIAL, device_login, is_integer
from iotcloud.sealing import seal

logger = logging.getLogger(__name__)

MAX_CLAIM_TOKEN_LENGTH = 256
CHANNELS = ("http", "mqtt")


class ClaimRefused(DomainError):
    """The claim token does not let anyone register (unknown, revoked, expired): 401."""

    status = 401
    code = "invalid_claim"


def _shown(value, limit: int = 70) -> str:
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


# --- templates -------------------------------------------------------------------------------------


def _check_name(name) -> str:
    if not PROVISIONING_TEMPLATE_NAME.matches(name):
        raise InvalidInput(
            f"Invalid template name {_shown(name)}: use {PROVISIONING_TEMPLATE_NAME.text}", code="invalid_template_name"
        )
    return name


def _check_serials(serials) -> list[str] | None:
    if serials is None:
        return None
    if not isinstance(serials, list):
        raise InvalidInput("allowed_serials must be a list of serials, or null (any serial)", code="invalid_serials")
    limit = settings.PROVISIONING_MAX_ALLOWED_SERIALS
    if len(serials) > limit:
        raise PayloadTooLarge(
            f"{len(serials)} allowed serials; the limit is {limit} (PROVISIONING_MAX_ALLOWED_SERIALS)",
            code="too_many_serials",
        )
    for index, serial in enumerate(serials):
        if not SERIAL.matches(serial):
            raise InvalidInput(
                f"allowed_serials[{index}] is {_shown(serial)}: a serial is {SERIAL.text}", code="invalid_serials"
            )
    return sorted(set(serials))


def template_check(
    *, name, description="", device_id_prefix="", tags=None, desired=None, shadows=None,
    credential=CredentialKind.TOKEN, allowed_serials=None, hook_url="", hook_secret=None, has_secret=False,
) -> dict:  # fmt: skip
    """Every rule a template keeps; its fields, cleaned (the admin form and the API show the errors).

    hook_secret: a new secret for the pre-provisioning hook (None: keep the one it has, `has_secret`);
    the cleaned fields carry it sealed, and an empty hook_url drops it.
    """
    _check_name(name)
    if not isinstance(description, str) or len(description) > 2000 or "\x00" in description:
        raise InvalidInput("description must be text of at most 2000 characters", code="invalid_description")
    if not DEVICE_ID_PREFIX.matches(device_id_prefix):
        raise InvalidInput(
            f"Invalid device_id_prefix {_shown(device_id_prefix)}: use {DEVICE_ID_PREFIX.text} (the device id is "
            "the prefix followed by the serial)",
            code="invalid_device_id_prefix",
        )
    if credential not in CredentialKind.values:
        raise InvalidInput(
            f"Unknown credential {_shown(credential)}: templates issue {', '.join(CredentialKind.values)}",
            code="invalid_credential",
        )
    desired = {} if desired is None else desired
    shadows = {} if shadows is None else shadows
    if not isinstance(desired, dict):
        raise InvalidInput("desired must be a JSON object (the classic shadow's initial desired)", code="not_an_object")
    if not isinstance(shadows, dict):
        raise InvalidInput("shadows must be a JSON object: {shadow name: initial desired}", code="not_an_object")
    # The twin judges the documents and the shadow names (twin.provisioning).
    template_desired_check.send(sender=ProvisioningTemplate, desired=desired, shadows=shadows)
    cleaned = {
        "name": name, "description": description, "device_id_prefix": device_id_prefix,
        "tags": validate_tags(tags if tags is not None else {}), "desired": desired, "shadows": shadows,
        "credential": credential, "allowed_serials": _check_serials(allowed_serials),
        "hook_url": check_hook_url(hook_url),
    }  # fmt: skip
    if hook_secret not in (None, ""):
        cleaned["hook_secret"] = seal(check_hook_secret(hook_secret))
    elif cleaned["hook_url"] and not has_secret:
        raise InvalidInput("hook_url needs a hook_secret: the key its calls are signed with", code="invalid_hook")
    if not cleaned["hook_url"]:
        cleaned["hook_secret"] = ""
    return cleaned


def template_create(*, tenant: Tenant, enabled: bool = True, **fields) -> ProvisioningTemplate:
    cleaned = template_check(**fields)
    try:
        with transaction.atomic():
            template = ProvisioningTemplate.objects.create(tenant=tenant, enabled=bool(enabled), **cleaned)
            audit_record(tenant_id=tenant.id, action="template.create", after={"template": template.name})
    except IntegrityError:
        raise Conflict(
            f"A provisioning template named {cleaned['name']!r} already exists in tenant {tenant.id!r}",
            code="template_exists",
        ) from None
    logger.info("provisioning template created %s", template)
    return template


TEMPLATE_FIELDS = ("name", "description", "device_id_prefix", "tags", "desired", "shadows", "credential",
                   "allowed_serials", "hook_url")  # fmt: skip


def template_update(*, template: ProvisioningTemplate, **changes) -> ProvisioningTemplate:
    """Change some fields (the others stay); `enabled` False stops every claim of it from registering."""
    unknown = sorted(set(changes) - {*TEMPLATE_FIELDS, "hook_secret", "enabled"})
    if unknown:  # pragma: no cover (the serializers pass known fields only)
        raise InvalidInput(f"Unknown template field(s): {', '.join(unknown)}")
    enabled = changes.pop("enabled", template.enabled)
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled must be true or false", code="invalid")
    current = {field: getattr(template, field) for field in TEMPLATE_FIELDS}
    cleaned = template_check(**{**current, **changes}, has_secret=bool(template.hook_secret))
    for field, value in cleaned.items():
        setattr(template, field, value)
    template.enabled = enabled
    try:
        with transaction.atomic():
            template.save()
            audit_record(tenant_id=template.tenant_id, action="template.update",
                         after={"template": template.name, "changed": sorted({*changes, "enabled"})})  # fmt: skip
        # (the audit names a changed hook_secret, never its value)
    except IntegrityError:
        raise Conflict(
            f"A provisioning template named {template.name!r} already exists", code="template_exists"
        ) from None
    return template


@transaction.atomic
def template_delete(*, template: ProvisioningTemplate) -> None:
    """Delete a template with its claims; the devices and the registrations stay (a serial still registered once).
    Its claims' certificates are revoked first (they stay on the revocation list)."""
    claim_certificates_revoke(template.claims.all(), "template deleted")
    audit_record(tenant_id=template.tenant_id, action="template.delete", after={"template": template.name})
    template.delete()
    logger.info("provisioning template deleted %s", template)


# --- claims ----------------------------------------------------------------------------------------


def _check_claim(label, max_registrations, expires_at) -> None:
    if not isinstance(label, str) or len(label) > 200 or "\x00" in label:
        raise InvalidInput("label must be text of at most 200 characters", code="invalid_label")
    if max_registrations is not None and (not is_integer(max_registrations) or not 1 <= max_registrations <= INT32_MAX):
        raise InvalidInput(
            f"max_registrations must be a whole number from 1 to {INT32_MAX}, or null (no limit)",
            code="invalid_max_registrations",
        )
    if expires_at is not None and (timezone.is_naive(expires_at) or expires_at <= timezone.now()):
        raise InvalidInput("expires_at must be a time in the future, with its time zone", code="invalid_expires_at")


def _claim_row(template, credential: str, token_hash, label, max_registrations, expires_at) -> ProvisioningClaim:
    claim = ProvisioningClaim.objects.create(
        template=template, credential=credential, token_hash=token_hash, label=label,
        max_registrations=max_registrations, expires_at=expires_at,
        broker_account_version=1 if credential == CredentialKind.CERTIFICATE else 0,
    )  # fmt: skip
    audit_record(tenant_id=template.tenant_id, action="claim.create",
                 after={"template": template.name, "claim": claim.pk, "credential": credential,
                        "max_registrations": max_registrations,
                        "expires_at": expires_at.isoformat() if expires_at else None})  # fmt: skip
    return claim


def claim_create(
    *, template: ProvisioningTemplate, label: str = "", max_registrations: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ProvisioningClaim, str]:  # fmt: skip
    """A claim on the template; returns it with its claim token (shown only now)."""
    _check_claim(label, max_registrations, expires_at)
    token = new_claim_token()
    with transaction.atomic():
        claim = _claim_row(template, CredentialKind.TOKEN, hash_token(token), label, max_registrations, expires_at)
    logger.info("provisioning claim %d created for %s", claim.pk, template)
    return claim, token


def claim_create_with_certificate(
    *, template: ProvisioningTemplate, label: str = "", max_registrations: int | None = None,
    expires_at: datetime | None = None, csr: str | None = None,
) -> tuple[ProvisioningClaim, DeviceCertificate, str | None]:  # fmt: skip
    """A claim whose credential is a claim certificate (devices.certificates.claim_certificate_issue):
    for the factory's CSR, or with a key made now (returned once). Over MQTT it logs in on Mosquitto's
    certificate listener; over HTTP a TLS proxy forwards it. Its broker account follows (bridge)."""
    _check_claim(label, max_registrations, expires_at)
    with transaction.atomic():  # a refused CSR (its CN empty or the claim's name) rolls the claim back
        claim = _claim_row(template, CredentialKind.CERTIFICATE, None, label, max_registrations, expires_at)
        issued, key_pem = claim_certificate_issue(claim=claim, csr_pem=csr)
    logger.info("provisioning claim %d (certificate) created for %s", claim.pk, template)
    return claim, issued, key_pem


def claim_revoke(*, claim: ProvisioningClaim) -> ProvisioningClaim:
    """Revoke a claim: it registers nobody from now on (devices it registered keep their identity). Idempotent."""
    now = timezone.now()
    with transaction.atomic():
        if ProvisioningClaim.objects.filter(pk=claim.pk, revoked_at__isnull=True).update(
            revoked_at=now, broker_account_version=F("broker_account_version") + 1
        ):
            claim_certificates_revoke(ProvisioningClaim.objects.filter(pk=claim.pk))
            audit_record(tenant_id=claim.template.tenant_id, action="claim.revoke",
                         after={"template": claim.template.name, "claim": claim.pk})  # fmt: skip
            logger.info("provisioning claim %d revoked", claim.pk)
    claim.refresh_from_db()
    return claim


def claim_for_template(template: ProvisioningTemplate, claim_id) -> ProvisioningClaim:
    claim = None
    digits = isinstance(claim_id, str) and claim_id.isascii() and claim_id.isdigit() and len(claim_id) <= 18
    if digits and int(claim_id) > 0:
        claim = ProvisioningClaim.objects.select_related("template").filter(template=template, pk=int(claim_id)).first()
    if claim is None:
        raise NotFound(f"Claim {str(claim_id)[:40]!r} of template {template.name!r} not found", code="claim_not_found")
    return claim


def claim_for_token(token) -> ProvisioningClaim | None:
    """The claim a claim token belongs to (whatever its state), or None; digest lookup, constant-time compare."""
    if not isinstance(token, str) or not token.startswith(CLAIM_PREFIX) or len(token) > MAX_CLAIM_TOKEN_LENGTH:
        return None
    digest = hash_token(token)
    claim = ProvisioningClaim.objects.select_related("template", "template__tenant").filter(token_hash=digest).first()
    if claim is None or not hmac.compare_digest(claim.token_hash, digest):
        return None
    return claim


def claim_problem(claim: ProvisioningClaim | None, *, now: datetime | None = None) -> DomainError | None:
    """Why this claim registers nobody now (before its count), or None."""
    now = now or timezone.now()
    if claim is None:
        return ClaimRefused("Invalid claim token", code="invalid_claim")
    if claim.revoked_at is not None:
        return ClaimRefused("This claim was revoked", code="claim_revoked")
    if claim.expires_at is not None and claim.expires_at <= now:
        return ClaimRefused(f"This claim expired at {claim.expires_at:%Y-%m-%dT%H:%M:%SZ}", code="claim_expired")
    if not claim.template.enabled:
        return Forbidden(f"Provisioning template {claim.template.name!r} is disabled", code="template_disabled")
    return None


def claim_login_check(token) -> ProvisioningClaim | None:
    """The claim a broker login may use (a known claim, not revoked nor expired, its template enabled), or None."""
    claim = claim_for_token(token)
    return claim if claim is not None and claim_problem(claim) is None else None


# --- registration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    device: Device
    provision_token: str | None  # a token template's identity (None: a certificate template's)
    registration: Registration
    certificate: DeviceCertificate | None = None  # a certificate template's
    private_key_pem: str | None = None  # made here when the device sent no CSR: returned once


def claim_register(*, serial, channel: str, claim_token=None, claim: ProvisioningClaim | None = None,
                   csr=None) -> Registered:  # fmt: skip
    """Register the device `serial` with a claim token, or with a claim already found from its claim
    certificate (`claim`, None: not one of ours); its identity comes back once.

    Refusals, in this order: the claim (401 invalid_claim, claim_revoked, claim_expired; 403
    template_disabled), the serial (400 invalid_serial; 403 serial_not_allowed), the CSR, the
    template's pre-provisioning hook (devices.provisioning_hook: 403 registration_denied, 503
    hook_unavailable; called before the transaction, and its tags are set over the template's), the
    count (403 claim_exhausted), the serial or device id taken (409 serial_registered, device_exists). One
    transaction: the guarded UPDATE of the claim's count (it holds the claim's row lock until the
    commit, so N+k concurrent registrations of a claim limited to N make exactly N), the
    registration row (the unique (tenant, serial) makes exactly one device per serial), the device
    (device_provision: its rules and side effects), its initial desired state, the audit.
    """
    if channel not in CHANNELS:  # pragma: no cover (the adapters pass theirs)
        raise ValueError(channel)
    if claim_token is not None:
        claim = claim_for_token(claim_token)
    problem = claim_problem(claim)
    if problem is not None:
        raise problem
    template, tenant = claim.template, claim.template.tenant
    if not SERIAL.matches(serial):
        raise InvalidInput(f"Invalid serial {_shown(serial)}: use {SERIAL.text}", code="invalid_serial")
    if template.allowed_serials is not None and serial not in template.allowed_serials:
        raise Forbidden(
            f"Serial {serial!r} is not on the allow-list of template {template.name!r}", code="serial_not_allowed"
        )
    device_id = template.device_id_prefix + serial
    certificate = template.credential == CredentialKind.CERTIFICATE
    if csr is not None and not certificate:
        raise InvalidInput(f"csr: template {template.name!r} issues provision tokens, not certificates",
                           code="invalid_csr")  # fmt: skip
    if csr is not None:  # refused before anything is counted or created
        check_csr_for(csr, device_login(tenant.id, device_id))
    tags = template.tags
    if template.hook_url:  # the tenant's check, asked only for a serial that could still register
        if Registration.objects.filter(tenant=tenant, serial=serial).exists():
            raise _serial_registered(serial, tenant)
        verdict = hook_check(template=template, claim_id=claim.pk, serial=serial, device_id=device_id, channel=channel)
        tags = {**tags, **verdict.tags} if verdict.tags else tags
    actor = Actor(f"claim:{claim.pk}", channel)
    with acting(actor.actor, actor.channel), transaction.atomic():
        now = timezone.now()
        live = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        within = Q(max_registrations__isnull=True) | Q(registrations__lt=F("max_registrations"))
        if not ProvisioningClaim.objects.filter(live & within, pk=claim.pk).update(
            registrations=F("registrations") + 1
        ):
            claim.refresh_from_db()
            raise claim_problem(claim, now=now) or Forbidden(
                f"This claim has registered its {claim.max_registrations} device(s), its limit", code="claim_exhausted",
                limit=claim.max_registrations,
            )  # fmt: skip
        try:
            with transaction.atomic():
                registration = Registration.objects.create(
                    tenant=tenant, serial=serial, claim=claim, template_name=template.name, channel=channel, at=now
                )
        except IntegrityError:
            raise _serial_registered(serial, tenant) from None
        issued = key_pem = None
        if certificate:
            device, token, issued, key_pem = device_provision_with_certificate(
                tenant=tenant, device_id=device_id, tags=tags, csr_pem=csr
            )
        else:
            device, token = device_provision(tenant=tenant, device_id=device_id, tags=tags)
        Registration.objects.filter(pk=registration.pk).update(device=device)
        registration.device = device
        device_registered.send(sender=Device, device=device, desired=template.desired, shadows=template.shadows)
        audit_record(tenant_id=tenant.id, device_id=device.pk, action="device.register", actor=actor,
                     after={"serial": serial, "template": template.name, "claim": claim.pk})  # fmt: skip
    logger.info("device registered %s by claim %d (%s, template %s)", device, claim.pk, channel, template.name)
    if certificate:  # the certificate is its identity: the token made with the device is never shown
        return Registered(device, None, registration, issued, key_pem)
    return Registered(device, token, registration)


def _serial_registered(serial: str, tenant: Tenant) -> Conflict:
    return Conflict(f"Serial {serial!r} is already registered in tenant {tenant.id!r}", code="serial_registered")


def identity_document(registered: Registered) -> dict:
    """What a registered device is told, over HTTP and MQTT alike: its tenant, device id and identity."""
    device = registered.device
    document = {"tenant": device.tenant_id, "device_id": device.device_id,
                "provision_token": registered.provision_token}  # fmt: skip
    if registered.certificate is not None:
        document.update(
            certificate_pem=registered.certificate.certificate_pem,
            private_key_pem=registered.private_key_pem,
            ca_certificate_pem=ca_certificate_pem(),
        )
    return document


# --- reads for operators ---------------------------------------------------------------------------


def templates_for_operator(user, *, tenant_id: str | None = None):
    """Templates the operator may see: their tenant's (superusers: all, or one tenant's)."""
    qs = ProvisioningTemplate.objects.all()
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    return qs.filter(tenant=tenant) if tenant else qs.none()


def template_for_operator(user, name: str, *, tenant_id: str | None = None) -> ProvisioningTemplate:
    """One template by name, or NotFound: another tenant's template does not exist for you."""
    if not PROVISIONING_TEMPLATE_NAME.matches(name):
        raise NotFound(f"Provisioning template {_shown(name)} not found", code="template_not_found")
    matches = list(templates_for_operator(user, tenant_id=tenant_id).filter(name=name)[:2])
    if not matches:
        raise NotFound(f"Provisioning template {name!r} not found", code="template_not_found")
    if len(matches) > 1:
        raise InvalidInput(
            f"Template {name!r} exists in several tenants; add ?tenant=<tenant id>", code="ambiguous_template"
        )
    return matches[0]


def registrations_for_operator(user, *, tenant_id: str | None = None):
    qs = Registration.objects.select_related("device")
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    return qs.filter(tenant=tenant) if tenant else qs.none()
