"""Fleet provisioning by claim over MQTT: a device registers and gets its identity (devices.claims.claim_register).

    tenant/_iotcloud/provisioning/{tenant}/{session}/register     device -> platform, QoS 1, not retained
        {"claim_token": "iotc_...", "serial": "SN-0001", "clientToken"?: "..."}
    .../register/accepted    {"tenant", "device_id", "provision_token", "timestamp", "clientToken"?}
    .../register/rejected    {"detail", "code", "status", "timestamp", "clientToken"?} (the HTTP API's refusals)

The device logs in with its claim (mqtt_bridge.accounts.acl: username `_claim/{tenant}`, the claim token as
password, client id `_claim/{tenant}/{session}`), which lets it publish this one topic and hear its answers.

A device holding a claim certificate instead (Mosquitto's certificate listener, MQTT_DEVICE_AUTH=dynsec)
registers on its claim's topics, `tenant/_iotcloud/provisioning/{tenant}/claims/{claim id}/{session}/register`,
with {"serial", "csr", "clientToken"?}: only a certificate template, only with the device's CSR, as the
whole batch hears the answers.
The bridge does not trust the login: the payload carries the claim token, checked again here, and the claim
must be of the topic's tenant (a tenant the platform does not have gets no answer). Registrations run in the
ingest batch's transaction, each in a savepoint of its own, and their answers are published once it has
committed. Rate-limited per claim token (CLAIM_RATE_LIMIT, counted in each bridge process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings

from devices.choices import CredentialKind
from devices.claims import ClaimRefused, claim_for_token, claim_register, identity_document
from devices.models import ProvisioningClaim, Tenant
from devices.throttling import CLAIM_MQTT_BUCKETS, claim_rate
from devices.tokens import hash_token
from iotcloud.errors import DomainError, InvalidInput, TooManyRequests
from mqtt_bridge import topics
from mqtt_bridge.requests import Reply, client_token, encode, parse_body, stamped, token_of

logger = logging.getLogger(__name__)

FIELDS = frozenset({"claim_token", "serial", "csr", "clientToken"})
CERTIFICATE_FIELDS = FIELDS - {"claim_token"}


def handle_registrations(items: Sequence[tuple[topics.Registration, bytes]]) -> list[Reply | None]:
    """One answer per registration request, in order; None for a tenant this platform does not have
    (nobody to answer, as for a device's request naming no device), and for a claim certificate's
    topic where no broker account says who may publish there (MQTT_DEVICE_AUTH is not dynsec)."""
    tenants = set(Tenant.objects.filter(id__in={r.tenant_id for r, _ in items}).values_list("id", flat=True))
    certificates = settings.MQTT_DEVICE_AUTH == "dynsec"
    return [
        _handle(request, payload) if request.tenant_id in tenants and (certificates or request.claim_id is None)
        else None
        for request, payload in items
    ]  # fmt: skip


def _handle(request: topics.Registration, payload: bytes) -> Reply:
    try:
        body = parse_body(payload)
        token = client_token(body)
    except DomainError as exc:
        return _rejected(request, exc, token_of(payload))
    if request.claim_id is not None:
        return _handle_certificate_claim(request, body, token)
    try:
        unknown = sorted(body.keys() - FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown field(s) in a registration: {', '.join(map(repr, unknown))}", code="invalid")
        claim_token = body.get("claim_token")
        if not isinstance(claim_token, str) or not claim_token:
            raise ClaimRefused('Missing claim token: send "claim_token", a string', code="missing_claim_token")
        _check_rate(claim_token)
        claim = claim_for_token(claim_token)
        if claim is not None and claim.template.tenant_id != request.tenant_id:  # another tenant's: unknown here
            raise ClaimRefused("Invalid claim token", code="invalid_claim")
        registered = claim_register(claim_token=claim_token, serial=body.get("serial"), channel="mqtt",
                                    csr=body.get("csr"))  # fmt: skip
    except DomainError as exc:
        return _rejected(request, exc, token)
    document = identity_document(registered)
    return Reply(request.reply_topic(topics.ACCEPTED), encode(stamped(document, token)))


def _handle_certificate_claim(request: topics.Registration, body: dict, token: str | None) -> Reply:
    """A registration from a device holding claim `request.claim_id`'s certificate (the broker's ACL
    let only that account publish here). Its answer is heard by every device of the batch, so it
    may carry no secret: a certificate template and the device's own CSR, or a refusal."""
    try:
        unknown = sorted(body.keys() - CERTIFICATE_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown field(s) in a registration: {', '.join(map(repr, unknown))}", code="invalid")
        _check_rate(f"claim-certificate:{request.claim_id}")
        claim = (ProvisioningClaim.objects.select_related("template", "template__tenant")
                 .filter(pk=request.claim_id, credential=CredentialKind.CERTIFICATE,
                         template__tenant_id=request.tenant_id).first())  # fmt: skip
        if claim is None:
            raise ClaimRefused("Invalid claim: no claim certificate of this tenant has this id", code="invalid_claim")
        if claim.template.credential != CredentialKind.CERTIFICATE:
            raise InvalidInput(
                f"Template {claim.template.name!r} issues provision tokens, and every device holding this claim "
                "certificate hears its answers: register over HTTP (POST /device/v1/register, the certificate "
                "through your TLS proxy) or use a certificate template",
                code="token_over_shared_topic",
            )  # fmt: skip
        if body.get("csr") is None:
            raise InvalidInput(
                'Missing "csr": every device holding this claim certificate hears the answer, so the private key '
                "must stay on the device: send its CSR (PEM)",
                code="csr_required",
            )  # fmt: skip
        registered = claim_register(claim=claim, serial=body.get("serial"), channel="mqtt", csr=body.get("csr"))
    except DomainError as exc:
        return _rejected(request, exc, token)
    return Reply(request.reply_topic(topics.ACCEPTED), encode(stamped(identity_document(registered), token)))


def _check_rate(claim_token: str) -> None:
    rate = claim_rate()
    if rate is not None and not CLAIM_MQTT_BUCKETS.take_many([hash_token(claim_token[:256])], rate)[0]:
        raise TooManyRequests(
            f"Rate limit exceeded: {rate.describe('registration').replace('per device', 'per claim')} "
            "(CLAIM_RATE_LIMIT); retry later",
            limit=rate.text, burst=rate.burst,
        )  # fmt: skip


def _rejected(request: topics.Registration, error: DomainError, token: str | None) -> Reply:
    logger.info("registration refused on %s: %s (%s)", request.topic, error.code, error.message)
    return Reply(request.reply_topic(topics.REJECTED), encode(stamped({**error.body(), "status": error.status}, token)))
