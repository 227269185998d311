"""Fleet provisioning by claim (devices.claims): templates, claims, registration over HTTP, the operator API.

A registration yields a working identity; a serial registers once; expired, revoked and over-count claims
are refused; tenant isolation; hostile input is a 4xx naming the problem; concurrency on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devices import claims
from devices.models import AuditEvent, Device, ProvisioningClaim, Registration
from devices.tokens import CLAIM_PREFIX, hash_token
from iotcloud.errors import Conflict, Forbidden, InvalidInput, PayloadTooLarge
from iotcloud.testing import Api, device_client, make_operator_client

pytestmark = pytest.mark.django_db

REGISTER = "/device/v1/register"
TEMPLATES = "/customer/provisioning/templates"


@pytest.fixture
def template(tenant):
    return claims.template_create(
        tenant=tenant, name="pumps", device_id_prefix="pump-", tags={"fleet": "pumps"},
        desired={"interval": 60}, shadows={"config": {"mode": "eco"}},
    )  # fmt: skip


@pytest.fixture
def claim(template):
    claim, token = claims.claim_create(template=template, max_registrations=3)
    claim.token = token
    return claim


def device_api(token=None) -> Api:
    from rest_framework.test import APIClient

    client = APIClient()
    if token is not None:
        client.credentials(HTTP_X_CLAIM_TOKEN=token)
    return Api(client)


def register(token, serial, expect=None):
    return device_api(token).post(REGISTER, {"serial": serial}, expect=expect)


# --- the happy path --------------------------------------------------------------------------------------


def test_a_registration_yields_a_working_identity(tenant, claim):
    body = register(claim.token, "SN-0001", expect=201).json()

    assert body["tenant"] == "acme" and body["device_id"] == "pump-SN-0001"
    assert body["provision_token"].startswith("iotd_")
    device = Device.objects.get(tenant=tenant, device_id="pump-SN-0001")
    assert device.tags == {"fleet": "pumps"} and device.provision_token_hash == hash_token(body["provision_token"])
    # The identity works on the device API, and the template's initial desired state is there.
    device.token = body["provision_token"]
    shadow = device_client(device).get("/device/v1/shadow", expect=200).json()
    assert shadow["desired"] == {"interval": 60}
    from twin.models import NamedShadow

    assert NamedShadow.objects.get(device=device, name="config").desired_state == {"mode": "eco"}
    claim.refresh_from_db()
    assert claim.registrations == 1
    registration = Registration.objects.get(tenant=tenant, serial="SN-0001")
    assert registration.device == device and registration.channel == "http" and registration.claim == claim
    audit = AuditEvent.objects.get(action="device.register")
    assert audit.actor == f"claim:{claim.pk}" and audit.channel == "http" and audit.device == device
    assert audit.after == {"serial": "SN-0001", "template": "pumps", "claim": claim.pk}
    # The device's own provisioning is by the claim too, and the claim token is in no audit row.
    assert AuditEvent.objects.get(action="device.provision").actor == f"claim:{claim.pk}"
    assert not any(claim.token in str(e.after) for e in AuditEvent.objects.all())


def test_the_claim_token_is_shown_once_and_stored_as_a_digest(template):
    claim, token = claims.claim_create(template=template)
    assert token.startswith(CLAIM_PREFIX) and len(token) > 40
    stored = ProvisioningClaim.objects.get(pk=claim.pk)
    assert stored.token_hash == hash_token(token) and token not in str(stored.__dict__)


# --- refusals ----------------------------------------------------------------------------------------------


def test_the_same_serial_twice_is_refused(tenant, claim, template):
    register(claim.token, "SN-1", expect=201)
    body = register(claim.token, "SN-1", expect=409).json()
    assert body["code"] == "serial_registered" and "SN-1" in body["detail"]
    # Also with another claim of the tenant, even of another template.
    other = claims.template_create(tenant=tenant, name="other", device_id_prefix="x-")
    _, token = claims.claim_create(template=other)
    assert register(token, "SN-1", expect=409).json()["code"] == "serial_registered"
    assert Device.objects.filter(tenant=tenant).count() == 1
    claim.refresh_from_db()
    assert claim.registrations == 1  # the refused one did not count


def test_a_serial_whose_device_id_exists_is_refused_and_not_counted(tenant, claim, make_device):
    make_device(tenant, "pump-SN-9")
    assert register(claim.token, "SN-9", expect=409).json()["code"] == "device_exists"
    claim.refresh_from_db()
    assert claim.registrations == 0 and not Registration.objects.exists()


def test_an_over_count_claim_is_refused(claim):
    for n in range(3):
        register(claim.token, f"SN-{n}", expect=201)
    body = register(claim.token, "SN-4", expect=403).json()
    assert body["code"] == "claim_exhausted" and body["limit"] == 3 and "3" in body["detail"]


def test_an_expired_claim_is_refused(template):
    claim, token = claims.claim_create(template=template, expires_at=timezone.now() + timedelta(hours=1))
    ProvisioningClaim.objects.filter(pk=claim.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = register(token, "SN-1", expect=401)
    assert response.json()["code"] == "claim_expired"
    assert response["WWW-Authenticate"] == 'ClaimToken header="X-Claim-Token"'


def test_a_revoked_claim_is_refused_and_revoking_twice_is_fine(claim):
    register(claim.token, "SN-1", expect=201)
    claims.claim_revoke(claim=claim)
    revoked_at = ProvisioningClaim.objects.get(pk=claim.pk).revoked_at
    claims.claim_revoke(claim=claim)
    assert ProvisioningClaim.objects.get(pk=claim.pk).revoked_at == revoked_at
    assert register(claim.token, "SN-2", expect=401).json()["code"] == "claim_revoked"
    assert Device.objects.filter(device_id="pump-SN-1").get().is_active  # what it registered keeps working
    assert AuditEvent.objects.filter(action="claim.revoke").count() == 1


def test_a_disabled_template_registers_nobody(claim, template):
    claims.template_update(template=template, enabled=False)
    assert register(claim.token, "SN-1", expect=403).json()["code"] == "template_disabled"


def test_the_allow_list(tenant, template, claim):
    claims.template_update(template=template, allowed_serials=["SN-A", "SN-B", "SN-A"])
    template.refresh_from_db()
    assert template.allowed_serials == ["SN-A", "SN-B"]
    assert register(claim.token, "SN-C", expect=403).json()["code"] == "serial_not_allowed"
    register(claim.token, "SN-A", expect=201)


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "missing_claim_token"), ("", "missing_claim_token"), ("iotc_nope", "invalid_claim"),
     ("iotd_" + "x" * 43, "invalid_claim"), ("iotc_" + "x" * 300, "invalid_claim"),
     ("iotc_\u00e9\u200b", "invalid_claim")],
)  # fmt: skip
def test_unknown_or_missing_claim_tokens_are_401(claim, token, code):
    response = device_api(token).post(REGISTER, {"serial": "SN-1"})
    assert response.status_code == 401 and response.json()["code"] == code
    assert "WWW-Authenticate" in response


def test_a_device_token_is_no_claim_token(device, claim):
    assert register(device.token, "SN-1", expect=401).json()["code"] == "invalid_claim"


@pytest.mark.parametrize(
    "body",
    [{"serial": ""}, {"serial": "a/b"}, {"serial": "a+b"}, {"serial": "#"}, {"serial": "x" * 65},
     {"serial": "x" * 5000}, {"serial": 12}, {"serial": None}, {"serial": ["SN"]}, {"serial": {"a": 1}},
     {"serial": "SN\x00"},
     {"serial": "sn é"}, {}, {"serial": "SN", "extra": 1}, ["SN"], "SN"],
)  # fmt: skip
def test_hostile_bodies_are_a_clear_400(claim, body):
    response = device_api(claim.token).post(REGISTER, body)
    assert response.status_code == 400, response.content
    assert response.json()["detail"] and response.json()["code"]
    claim.refresh_from_db()
    assert claim.registrations == 0 and not Device.objects.exists()


def test_broken_json_and_other_methods(claim):
    api = device_api(claim.token)
    assert api.raw("post", REGISTER, b"{nope").status_code == 400
    assert api.raw("post", REGISTER, b"serial=SN", content_type="application/x-www-form-urlencoded").status_code == 415
    assert api.get(REGISTER).status_code == 405


def test_registrations_are_rate_limited_per_claim(settings, template):
    settings.CLAIM_RATE_LIMIT, settings.CLAIM_RATE_BURST = "2/m", 2
    _, first = claims.claim_create(template=template)
    _, second = claims.claim_create(template=template)
    register(first, "SN-1", expect=201)
    register(first, "SN-2", expect=201)
    response = register(first, "SN-3", expect=429)
    assert response.json()["code"] == "rate_limited" and "CLAIM_RATE_LIMIT" in response.json()["detail"]
    assert int(response["Retry-After"]) >= 1
    register(second, "SN-3", expect=201)  # another claim has its own bucket


# --- templates and claims: the service's rules -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [({"name": "a/b"}, "invalid_template_name"), ({"name": ""}, "invalid_template_name"),
     ({"device_id_prefix": "a/"}, "invalid_device_id_prefix"),
     ({"device_id_prefix": "x" * 65}, "invalid_device_id_prefix"),
     ({"tags": {"a b": "x"}}, "invalid_tags"), ({"tags": ["x"]}, "invalid_tags"),
     ({"credential": "password"}, "invalid_credential"), ({"desired": [1]}, "not_an_object"),
     ({"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}, "too_deep"),
     ({"shadows": {"bad/name": {}}}, "invalid_shadow_name"), ({"shadows": {"": {}}}, "invalid_shadow_name"),
     ({"shadows": {"config": 3}}, "not_an_object"), ({"allowed_serials": "SN"}, "invalid_serials"),
     ({"allowed_serials": ["ok", "not ok"]}, "invalid_serials"), ({"allowed_serials": [1]}, "invalid_serials")],
)  # fmt: skip
def test_template_rules(tenant, fields, code):
    with pytest.raises(InvalidInput) as refused:
        claims.template_create(tenant=tenant, **{"name": "t", **fields})
    assert refused.value.code == code


def test_template_limits(settings, tenant):
    settings.PROVISIONING_MAX_ALLOWED_SERIALS = 2
    with pytest.raises(PayloadTooLarge):
        claims.template_create(tenant=tenant, name="t", allowed_serials=["a", "b", "c"])
    with pytest.raises(PayloadTooLarge):
        claims.template_create(tenant=tenant, name="t", desired={"a": "x" * 9000})


def test_template_names_are_unique_per_tenant(tenant, other_tenant, template):
    with pytest.raises(Conflict):
        claims.template_create(tenant=tenant, name="pumps")
    claims.template_create(tenant=other_tenant, name="pumps")


@pytest.mark.parametrize(
    "fields",
    [{"max_registrations": 0}, {"max_registrations": -1}, {"max_registrations": True}, {"max_registrations": 2**31},
     {"expires_at": timezone.now() - timedelta(seconds=1)}, {"label": "x" * 201}],
)  # fmt: skip
def test_claim_rules(template, fields):
    with pytest.raises(InvalidInput):
        claims.claim_create(template=template, **fields)


def test_a_claim_of_another_tenant_registers_in_its_own_tenant(tenant, other_tenant, claim):
    other = claims.template_create(tenant=other_tenant, name="pumps", device_id_prefix="g-")
    _, token = claims.claim_create(template=other)
    assert register(token, "SN-1", expect=201).json()["tenant"] == "globex"
    assert register(claim.token, "SN-1", expect=201).json()["tenant"] == "acme"  # serials are per tenant


def test_deleting_a_template_keeps_devices_and_the_once_per_serial_rule(tenant, template, claim):
    register(claim.token, "SN-1", expect=201)
    claims.template_delete(template=template)
    assert Device.objects.filter(device_id="pump-SN-1").exists()
    assert Registration.objects.get(serial="SN-1").claim is None
    again = claims.template_create(tenant=tenant, name="pumps")
    _, token = claims.claim_create(template=again)
    assert register(token, "SN-1", expect=409).json()["code"] == "serial_registered"


def test_service_refusals_name_their_code(claim):
    claims.claim_register(claim_token=claim.token, serial="SN-1", channel="mqtt")
    with pytest.raises(Conflict) as refused:
        claims.claim_register(claim_token=claim.token, serial="SN-1", channel="mqtt")
    assert refused.value.code == "serial_registered"
    claims.template_update(template=claim.template, allowed_serials=[])
    with pytest.raises(Forbidden):
        claims.claim_register(claim_token=claim.token, serial="SN-2", channel="mqtt")
    assert Registration.objects.get(serial="SN-1").channel == "mqtt"


# --- the operator API ------------------------------------------------------------------------------------


def test_operator_api_templates_and_claims(operator, tenant):
    body = {"name": "meters", "device_id_prefix": "m-", "tags": {"kind": "meter"}, "desired": {"rate": 5},
            "shadows": {"cfg": {"x": 1}}, "allowed_serials": ["A1", "A2"]}  # fmt: skip
    created = operator.post(TEMPLATES, body, expect=201).json()
    assert created["tenant"] == "acme" and created["credential"] == "token" and created["enabled"] is True
    assert [t["name"] for t in operator.get(TEMPLATES, expect=200).json()["results"]] == ["meters"]
    assert operator.get(f"{TEMPLATES}/meters", expect=200).json()["allowed_serials"] == ["A1", "A2"]
    updated = operator.patch(f"{TEMPLATES}/meters", {"allowed_serials": None, "enabled": False}, expect=200).json()
    assert updated["allowed_serials"] is None and updated["enabled"] is False and updated["tags"] == {"kind": "meter"}
    operator.patch(f"{TEMPLATES}/meters", {"enabled": True}, expect=200)

    claim = operator.post(f"{TEMPLATES}/meters/claims", {"label": "factory 1", "max_registrations": 2}, expect=201)
    assert claim["Cache-Control"] == "no-store"
    claim = claim.json()
    assert claim["claim_token"].startswith("iotc_") and claim["status"] == "active"
    listed = operator.get(f"{TEMPLATES}/meters/claims", expect=200).json()
    assert [c["id"] for c in listed] == [claim["id"]] and "claim_token" not in listed[0]
    register(claim["claim_token"], "A9", expect=201)
    assert operator.get("/customer/provisioning/registrations", expect=200).json()["results"][0]["device_id"] == "m-A9"
    revoked = operator.post(f"{TEMPLATES}/meters/claims/{claim['id']}/revoke", expect=200).json()
    assert revoked["status"] == "revoked" and revoked["registrations"] == 1
    register(claim["claim_token"], "A8", expect=401)
    operator.delete(f"{TEMPLATES}/meters", expect=204)
    operator.get(f"{TEMPLATES}/meters", expect=404)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"name": "a/b"}, 400), ({"name": 5}, 400), ({"name": "t", "credential": "password"}, 400),
     ({"name": "t", "tags": "x"}, 400), ({"name": "t", "desired": [1]}, 400), ({"name": "t", "nope": 1}, 400),
     ({"name": "t", "allowed_serials": "SN"}, 400), ({"name": "t", "allowed_serials": [None]}, 400),
     ({"name": "t", "enabled": "yes please"}, 400), ({"name": "t", "tenant": "globex"}, 400), ([], 400)],
)  # fmt: skip
def test_operator_api_hostile_templates(operator, other_tenant, body, status):
    response = operator.post(TEMPLATES, body, expect=status)
    assert response.json()["detail"]


def test_operator_api_hostile_claims_and_lookups(operator, template, claim):
    for body in ({"max_registrations": 0}, {"max_registrations": "3"}, {"expires_at": "yesterday"},
                 {"expires_at": "2000-01-01T00:00:00Z"}, {"label": 3}, {"token": "mine"}):  # fmt: skip
        operator.post(f"{TEMPLATES}/pumps/claims", body, expect=400)
    for claim_id in ("nope", "0", "-1", "99999999999999999999999", str(claim.pk + 1000)):
        assert (
            operator.post(f"{TEMPLATES}/pumps/claims/{claim_id}/revoke", expect=404).json()["code"] == "claim_not_found"
        )
    operator.get(f"{TEMPLATES}/nope%00", expect=404)
    operator.get(f"{TEMPLATES}/{'x' * 300}", expect=404)


def test_operator_api_tenant_isolation(operator, other_operator, template, claim):
    register(claim.token, "SN-1", expect=201)
    assert other_operator.get(TEMPLATES, expect=200).json()["results"] == []
    other_operator.get(f"{TEMPLATES}/pumps", expect=404)
    other_operator.patch(f"{TEMPLATES}/pumps", {"enabled": False}, expect=404)
    other_operator.delete(f"{TEMPLATES}/pumps", expect=404)
    other_operator.get(f"{TEMPLATES}/pumps/claims", expect=404)
    other_operator.post(f"{TEMPLATES}/pumps/claims", {}, expect=404)
    other_operator.post(f"{TEMPLATES}/pumps/claims/{claim.pk}/revoke", expect=404)
    assert other_operator.get("/customer/provisioning/registrations", expect=200).json()["results"] == []
    # A template of the same name in the other tenant: its claims are not ours.
    other_operator.post(TEMPLATES, {"name": "pumps"}, expect=201)
    other_operator.post(f"{TEMPLATES}/pumps/claims/{claim.pk}/revoke", expect=404)
    assert ProvisioningClaim.objects.get(pk=claim.pk).revoked_at is None


def test_operator_api_needs_an_operator_who_may_write(tenant, template, api_client_factory):
    from devices.choices import Role

    api_client_factory().get(TEMPLATES, expect=401)
    viewer = make_operator_client(tenant, "vera", role=Role.VIEWER)
    viewer.get(TEMPLATES, expect=200)
    viewer.post(f"{TEMPLATES}/pumps/claims", {}, expect=403)
    viewer.post(TEMPLATES, {"name": "t"}, expect=403)


# --- concurrency (PostgreSQL) ------------------------------------------------------------------------


@pytest.mark.postgres
def test_two_registrations_of_the_same_serial_make_exactly_one_device(postgres_only, tenant, template):
    from twin.tests.test_concurrency import run_in_threads

    _, first = claims.claim_create(template=template)
    _, second = claims.claim_create(template=template)  # two claims: no claim row lock serializes them
    statuses = run_in_threads(lambda n: register(first if n % 2 else second, "SN-RACE").status_code, 8)

    assert sorted(statuses) == [201] + [409] * 7
    assert Device.objects.filter(tenant=tenant).count() == 1
    assert Registration.objects.filter(tenant=tenant, serial="SN-RACE").count() == 1
    assert sum(ProvisioningClaim.objects.values_list("registrations", flat=True)) == 1


@pytest.mark.postgres
def test_a_claim_limited_to_n_registers_exactly_n_under_concurrency(postgres_only, settings, tenant, template):
    from twin.tests.test_concurrency import run_in_threads

    settings.CLAIM_RATE_LIMIT = ""
    claim, token = claims.claim_create(template=template, max_registrations=5)
    statuses = run_in_threads(lambda n: register(token, f"SN-{n}").status_code, 12)

    assert statuses.count(201) == 5 and statuses.count(403) == 7
    claim.refresh_from_db()
    assert claim.registrations == 5
    assert Device.objects.filter(tenant=tenant).count() == Registration.objects.count() == 5
    assert AuditEvent.objects.filter(action="device.register").count() == 5


# --- the admin -----------------------------------------------------------------------------------------


def test_admin_templates_claims_shown_once_and_revoked(tenant, other_tenant, claim, template):
    from iotcloud.testing import staff_client

    alice = staff_client(tenant, "alice-admin")
    add = "/admin/devices/provisioningtemplate/add/"
    fields = {"tenant": tenant.pk, "name": "meters", "description": "", "device_id_prefix": "m-", "tags": '{"a": "b"}',
              "desired": '{"x": 1}', "shadows": "{}", "credential": "token", "allowed_serials": "", "enabled": "on",
              "claims-TOTAL_FORMS": "0", "claims-INITIAL_FORMS": "0"}  # fmt: skip
    assert alice.post(add, fields).status_code == 302
    meters = claims.templates_for_operator(alice.user).get(name="meters")
    assert meters.tags == {"a": "b"} and meters.desired == {"x": 1} and meters.allowed_serials is None
    refused = alice.post(add, {**fields, "name": "bad", "device_id_prefix": "a/b"})
    assert refused.status_code == 200 and b"device_id_prefix" in refused.content
    assert alice.post(add, {**fields, "name": "deep", "desired": '{"a": [[[[[[1]]]]]]}'}).status_code == 200
    assert not claims.templates_for_operator(alice.user).filter(name__in=["bad", "deep"]).exists()
    change = alice.post(f"/admin/devices/provisioningtemplate/{meters.pk}/change/",
                        {**fields, "enabled": "", "allowed_serials": '["S1"]'})  # fmt: skip
    assert change.status_code == 302
    meters.refresh_from_db()
    assert meters.enabled is False and meters.allowed_serials == ["S1"]

    page = alice.post(f"/admin/devices/provisioningtemplate/{meters.pk}/new-claim/", {"max_registrations": "5"})
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    token = page.context["token"]
    assert token.startswith("iotc_") and token.encode() in page.content
    new = ProvisioningClaim.objects.get(token_hash=hash_token(token))
    assert new.max_registrations == 5
    assert token.encode() not in alice.get(f"/admin/devices/provisioningtemplate/{meters.pk}/change/").content
    revoke = f"/admin/devices/provisioningtemplate/{meters.pk}/claims/{new.pk}/revoke/"
    assert alice.get(revoke).status_code == 200
    assert alice.post(revoke).status_code == 302
    assert ProvisioningClaim.objects.get(pk=new.pk).revoked_at is not None

    register(claim.token, "SN-1", expect=201)
    assert b"SN-1" in alice.get("/admin/devices/registration/").content
    # Another tenant's operator sees none of it.
    bob = staff_client(other_tenant, "bob-admin")
    assert bob.get(f"/admin/devices/provisioningtemplate/{meters.pk}/change/").status_code in (302, 404)
    assert bob.get(f"/admin/devices/provisioningtemplate/{meters.pk}/new-claim/").status_code == 404
    assert bob.post(f"/admin/devices/provisioningtemplate/{template.pk}/claims/{claim.pk}/revoke/").status_code == 404
    assert b"SN-1" not in bob.get("/admin/devices/registration/").content
    assert ProvisioningClaim.objects.get(pk=claim.pk).revoked_at is None


# --- a certificate template ------------------------------------------------------------------------------


def test_a_certificate_template_issues_a_certificate_for_the_devices_csr_or_a_key_made_once(tenant):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from devices.models import DeviceCertificate

    template = claims.template_create(tenant=tenant, name="meters", device_id_prefix="m-", credential="certificate")
    claim, token = claims.claim_create(template=template)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
           .public_bytes(serialization.Encoding.PEM).decode())  # fmt: skip
    body = device_api(token).post(REGISTER, {"serial": "A1", "csr": csr}, expect=201).json()
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert body["provision_token"] is None and body["private_key_pem"] is None and body["device_id"] == "m-A1"
    made = device_api(token).post(REGISTER, {"serial": "A2"}, expect=201).json()
    assert "PRIVATE KEY" in made["private_key_pem"]
    assert DeviceCertificate.objects.filter(device__device_id__in=["m-A1", "m-A2"], revoked_at=None).count() == 2

    foreign = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "acme/m-other")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())  # fmt: skip
    refused = device_api(token).post(REGISTER, {"serial": "A3", "csr": foreign}, expect=400).json()
    assert refused["code"] == "csr_subject_mismatch"
    assert not Registration.objects.filter(serial="A3").exists()
    assert ProvisioningClaim.objects.get(pk=claim.pk).registrations == 2  # a refused CSR uses nothing up


def test_a_csr_for_a_token_template_is_refused(claim):
    refused = device_api(claim.token).post(REGISTER, {"serial": "B1", "csr": "x"}, expect=400).json()
    assert refused["code"] == "invalid_csr" and "issues provision tokens" in refused["detail"]
    assert not Registration.objects.exists()
