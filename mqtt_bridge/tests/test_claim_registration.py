"""Fleet provisioning by claim over MQTT (mqtt_bridge.provisioning_api) and the claim login.

The bridge's registration answers run on the broker under test (MQTT_URL's, else the embedded one); the
claim login (username `_claim/<tenant>`, the claim token as password, client id
`_claim/<tenant>/<session>`) on the embedded broker, whose auth plugin decides it, and on the HTTP hooks
of EMQX-style brokers. Every refusal is a rejected answer naming the problem, and changes nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import claims
from devices.models import AuditEvent, Device, ProvisioningClaim, Registration
from devices.services import tenant_create
from devices.tokens import hash_token
from mqtt_bridge import topics
from mqtt_bridge.accounts import acl
from mqtt_bridge.accounts.hooks import login_decision, topic_decision
from mqtt_bridge.ingest import Incoming, ingest_batch
from mqtt_bridge.tests.conftest import EmbeddedTestBroker
from mqtt_bridge.tests.test_embedded import Client


@pytest.fixture
def template(mqtt_tenant):
    return claims.template_create(tenant=mqtt_tenant, name="pumps", device_id_prefix="pump-", tags={"k": "v"},
                                  desired={"interval": 60})  # fmt: skip


def make_claim(template, **kwargs):
    claim, token = claims.claim_create(template=template, **kwargs)
    claim.token = token
    return claim


class Registrar:
    """Publishes registration requests on a session's topic and reads the answers."""

    def __init__(self, client, tenant_id: str, session: str):
        self.client, self.topic = client, topics.registration(tenant_id, session)
        self.client.subscribe(topics.registration_replies(tenant_id, session))

    def register(self, body=None, *, raw: bytes | None = None, retain: bool = False):
        self.client.publish(self.topic, raw if raw is not None else json.dumps(body).encode(), retain=retain)
        (message,) = self.client.collect(count=1, timeout=10) or [None]
        assert message is not None, f"no answer on {self.topic}"
        return message.topic.rsplit("/", 1)[1], json.loads(message.payload)


# --- registration through the bridge ------------------------------------------------------------------


def test_registration_over_mqtt_yields_a_working_identity(start_bridge, mqtt_client, mqtt_tenant, template):
    claim = make_claim(template, max_registrations=2)
    start_bridge()
    device = Registrar(mqtt_client(), mqtt_tenant.id, "SN-1")

    outcome, body = device.register({"claim_token": claim.token, "serial": "SN-1", "clientToken": "c-1"})

    assert outcome == "accepted", body
    assert body["tenant"] == mqtt_tenant.id and body["device_id"] == "pump-SN-1" and body["clientToken"] == "c-1"
    created = Device.objects.get(tenant=mqtt_tenant, device_id="pump-SN-1")
    assert created.provision_token_hash == hash_token(body["provision_token"]) and created.tags == {"k": "v"}
    assert created.desired_state == {"interval": 60}
    assert Registration.objects.get(tenant=mqtt_tenant, serial="SN-1").channel == "mqtt"
    audit = AuditEvent.objects.get(action="device.register")
    assert audit.channel == "mqtt" and audit.actor == f"claim:{claim.pk}"

    # The same serial twice is refused; so are an over-count, a revoked and an expired claim.
    outcome, body = device.register({"claim_token": claim.token, "serial": "SN-1"})
    assert (outcome, body["code"], body["status"]) == ("rejected", "serial_registered", 409)
    device.register({"claim_token": claim.token, "serial": "SN-2"})
    outcome, body = device.register({"claim_token": claim.token, "serial": "SN-3"})
    assert (outcome, body["code"]) == ("rejected", "claim_exhausted")
    revoked = make_claim(template)
    claims.claim_revoke(claim=revoked)
    assert device.register({"claim_token": revoked.token, "serial": "SN-4"})[1]["code"] == "claim_revoked"
    expired = make_claim(template)
    ProvisioningClaim.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert device.register({"claim_token": expired.token, "serial": "SN-4"})[1]["code"] == "claim_expired"
    assert Device.objects.filter(tenant=mqtt_tenant).count() == 2


def test_the_pre_provisioning_hook_decides_over_mqtt_too(start_bridge, mqtt_client, mqtt_tenant):
    from devices.tests.test_provisioning_hook import SECRET, Hook

    hook = Hook()
    try:
        template = claims.template_create(tenant=mqtt_tenant, name="gated", device_id_prefix="g-",
                                          hook_url=hook.url, hook_secret=SECRET)  # fmt: skip
        claim = make_claim(template)
        start_bridge()
        device = Registrar(mqtt_client(), mqtt_tenant.id, "SN-9")
        hook.answer = (200, {"allow": False, "reason": "unknown to the ERP"})

        outcome, body = device.register({"claim_token": claim.token, "serial": "SN-9"})
        assert (outcome, body["code"], body["status"]) == ("rejected", "registration_denied", 403)
        assert body["detail"].endswith("unknown to the ERP")

        hook.answer = (200, {"allow": True})
        outcome, body = device.register({"claim_token": claim.token, "serial": "SN-9"})
        assert outcome == "accepted" and body["device_id"] == "g-SN-9"
        assert [c["body"]["channel"] for c in hook.calls] == ["mqtt", "mqtt"] and all(c["signed"] for c in hook.calls)
    finally:
        hook.close()


def test_a_certificate_template_answers_over_mqtt_with_the_devices_certificate(start_bridge, mqtt_client,
                                                                               mqtt_tenant):  # fmt: skip
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    template = claims.template_create(tenant=mqtt_tenant, name="meters", device_id_prefix="m-",
                                      credential="certificate")  # fmt: skip
    claim = make_claim(template)
    start_bridge()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
           .public_bytes(serialization.Encoding.PEM).decode())  # fmt: skip
    outcome, body = Registrar(mqtt_client(), mqtt_tenant.id, "M-1").register(
        {"claim_token": claim.token, "serial": "M-1", "csr": csr}
    )
    assert outcome == "accepted", body
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert body["provision_token"] is None and body["private_key_pem"] is None and body["ca_certificate_pem"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"not json", "parse_error"), (b"[1]", "invalid"), (b"\xff\xfe", "parse_error"), (b"{}", "missing_claim_token"),
     (b'{"claim_token": 5, "serial": "SN"}', "missing_claim_token"), (b'{"claim_token": "iotc_x", "serial": "SN"}',
     "invalid_claim"), (b'{"claim_token": "CLAIM", "serial": "a/b"}', "invalid_serial"),
     (b'{"claim_token": "CLAIM", "serial": 7}', "invalid_serial"), (b'{"claim_token": "CLAIM"}', "invalid_serial"),
     (b'{"claim_token": "CLAIM", "serial": "SN", "extra": 1}', "invalid"),
     (b'{"claim_token": "CLAIM", "serial": "SN", "clientToken": 5}', "invalid_client_token")],
)  # fmt: skip
def test_hostile_registrations_are_rejected_with_a_reason(start_bridge, mqtt_client, mqtt_tenant, template, raw, code):
    claim = make_claim(template)
    start_bridge()
    device = Registrar(mqtt_client(), mqtt_tenant.id, "s-1")
    outcome, body = device.register(raw=raw.replace(b"CLAIM", claim.token.encode()))
    assert outcome == "rejected" and body["code"] == code and body["detail"], body
    assert not Device.objects.filter(tenant=mqtt_tenant).exists()


def test_another_tenants_claim_and_oversize_registrations(start_bridge, mqtt_client, mqtt_tenant, template, settings):
    other = tenant_create(tenant_id=f"{mqtt_tenant.id}-o")
    foreign = make_claim(claims.template_create(tenant=other, name="pumps"))
    claim = make_claim(template)
    start_bridge()
    device = Registrar(mqtt_client(), mqtt_tenant.id, "s-2")
    # A claim is only good on its own tenant's topics.
    assert device.register({"claim_token": foreign.token, "serial": "SN-1"})[1]["code"] == "invalid_claim"
    big = json.dumps({"claim_token": claim.token, "serial": "SN-1", "clientToken": "x" * 40}).encode() + b" " * (
        settings.MQTT_MAX_PAYLOAD_BYTES
    )
    assert device.register(raw=big)[1]["code"] == "too_large"


def test_registrations_over_mqtt_are_rate_limited_per_claim(start_bridge, mqtt_client, mqtt_tenant, template, settings):
    settings.CLAIM_RATE_LIMIT, settings.CLAIM_RATE_BURST = "1/m", 1
    claim = make_claim(template)
    start_bridge()
    device = Registrar(mqtt_client(), mqtt_tenant.id, "s-3")
    assert device.register({"claim_token": claim.token, "serial": "SN-1"})[0] == "accepted"
    outcome, body = device.register({"claim_token": claim.token, "serial": "SN-2"})
    assert (outcome, body["code"], body["status"]) == ("rejected", "rate_limited", 429)
    assert "CLAIM_RATE_LIMIT" in body["detail"]


def test_ingest_refuses_retained_and_empty_registrations(transactional_db, mqtt_tenant, template):
    claim = make_claim(template)
    topic = topics.registration(mqtt_tenant.id, "s")
    payload = json.dumps({"claim_token": claim.token, "serial": "SN-1"}).encode()
    retained, empty = ingest_batch([Incoming(topic, payload, retained=True), Incoming(topic, b"")])
    assert retained.error.code == "retained_report" and not retained.replies
    assert empty.error.code == "empty_message"
    assert not Device.objects.exists()


# --- the claim login: the embedded broker ------------------------------------------------------------


@pytest.fixture
def embedded():
    broker = EmbeddedTestBroker()
    broker.start()
    yield broker
    broker.stop()


def test_a_claim_login_registers_on_the_embedded_broker_and_touches_nothing_else(
    embedded, start_bridge, mqtt_tenant, template
):
    claim = make_claim(template)
    tenant = mqtt_tenant.id
    start_bridge(embedded.settings)
    clients = []

    def login(username=None, password=None, client_id=None):
        username = username or acl.claim_username(tenant)
        client_id = client_id or acl.claim_client_id(tenant, "SN-7")
        client = Client(embedded.port, client_id=client_id, username=username, password=password or claim.token)
        clients.append(client)
        return client

    try:
        device = login()
        assert not device.rc.is_failure
        assert device.subscribe(topics.registration_replies(tenant, "SN-7"))
        for stolen in (topics.registration_replies(tenant, "SN-8"), f"{topics.PROVISIONING_ROOT}/#", "#",
                       f"tenant/{tenant}/device/+/shadow/desired", topics.REGISTRATION_FILTER):  # fmt: skip
            assert not device.subscribe(stolen), stolen
        device.publish(topics.registration(tenant, "SN-8"), json.dumps({"claim_token": claim.token, "serial": "X"}))
        device.publish(topics.reported(tenant, "pump-SN-7"), b'{"reported": {}, "version": 0}')
        device.publish(topics.registration(tenant, "SN-7"), json.dumps({"claim_token": claim.token, "serial": "SN-7"}))
        message = device.receive()
        assert message.topic == topics.registration(tenant, "SN-7") + "/accepted"
        identity = json.loads(message.payload)
        assert not Registration.objects.filter(serial="X").exists()  # the other session's topic was refused

        # The identity logs in as the device itself.
        own = login(identity["tenant"] + "/" + identity["device_id"], identity["provision_token"],
                    acl.device_client_id(identity["tenant"], identity["device_id"]))  # fmt: skip
        assert not own.rc.is_failure

        # Refused logins: a wrong token, a device token, another tenant, a client id not of the form, revoked.
        assert login(password="iotc_wrong").rc.is_failure
        assert login(password=identity["provision_token"]).rc.is_failure
        assert login(username=acl.claim_username("nobody")).rc.is_failure
        assert login(client_id="SN-7").rc.is_failure
        assert login(client_id=acl.claim_client_id(tenant, "a+b")).rc.is_failure
        assert login(client_id=f"{tenant}/pump-SN-7").rc.is_failure  # no claim login takes over a device's session
        claims.claim_revoke(claim=claim)
        assert login().rc.is_failure
    finally:
        for client in clients:
            if not client.rc.is_failure:
                client.close()


# --- the claim login: the HTTP hooks (EMQX-style brokers) and the ACL rule ----------------------------


def test_http_hooks_decide_claim_logins_like_the_embedded_broker(transactional_db, mqtt_tenant, template):
    claim = make_claim(template)
    tenant = mqtt_tenant.id
    user, client_id = acl.claim_username(tenant), acl.claim_client_id(tenant, "SN-1")
    assert login_decision(user, claim.token, client_id).allow
    assert not login_decision(user, claim.token, "SN-1").allow
    assert not login_decision(user, "iotc_nope", client_id).allow
    assert not login_decision(acl.claim_username("other"), claim.token, acl.claim_client_id("other", "SN-1")).allow
    claims.template_update(template=template, enabled=False)
    assert not login_decision(user, claim.token, client_id).allow

    assert topic_decision(user, acl.PUBLISH, topics.registration(tenant, "SN-1"), client_id).allow
    assert topic_decision(user, acl.SUBSCRIBE, topics.registration_replies(tenant, "SN-1"), client_id).allow
    assert not topic_decision(user, acl.PUBLISH, topics.registration(tenant, "SN-2"), client_id).allow
    assert not topic_decision(user, acl.SUBSCRIBE, "#", client_id).allow
    assert not topic_decision(user, acl.PUBLISH, topics.registration(tenant, "SN-1"), None).allow  # no client id


def test_claim_acl_rule():
    assert acl.parse_claim_username("_claim/acme") == acl.ClaimLogin("acme")
    for bad in ("_claim/", "_claim/a/b", "_claim/ACME", "acme/_claim", "_claim/a\x00", "_claim/-a"):
        assert acl.parse_claim_username(bad) is None, bad
    login = acl.ClaimLogin("acme")
    assert acl.claim_session(login, "_claim/acme/SN-1") == "SN-1"
    for bad in (
        None,
        "",
        "_claim/acme/",
        "_claim/acme/a/b",
        "_claim/other/SN",
        "_claim/acme/#",
        "_claim/acme/" + "x" * 65,
    ):
        assert acl.claim_session(login, bad) is None, bad
    assert acl.parse_username("_claim/acme") is not None  # parses, but as tenant "_claim": no device can have it
    assert topics.parse_registration(topics.registration("acme", "SN-1")) == topics.Registration(
        topics.registration("acme", "SN-1"), "acme", "SN-1"
    )
    assert topics.parse_registration("tenant/_iotcloud/provisioning/ACME/s/register") is None
    assert topics.parse_reported(topics.registration("acme", "s")) is None
    assert topics.parse_request(topics.registration("acme", "s")) is None
    assert not acl.claim_may(acl.PUBLISH, "acme", "s", topics.registration("acme", "s") + "/accepted")
    assert not acl.claim_may(acl.SUBSCRIBE, "acme", "s", "$share/g/" + topics.registration_replies("acme", "s"))


def test_a_registration_for_a_tenant_the_platform_does_not_have_gets_no_answer(transactional_db, template):
    claim = make_claim(template)
    payload = json.dumps({"claim_token": claim.token, "serial": "SN-1"}).encode()
    (verdict,) = ingest_batch([Incoming(topics.registration("no-such-tenant", "s"), payload)])
    assert verdict.error.code == "tenant_not_found" and not verdict.replies
    assert not Device.objects.exists()
