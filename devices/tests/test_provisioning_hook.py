"""The pre-provisioning check (devices.provisioning_hook): a real HTTP service in a thread decides.

Allowed, denied with a reason, tags from the hook, a signed call the service can verify; a hook that is
down, slow, failing, redirecting or answering nonsense refuses the registration (503, fail closed) and
creates nothing; the template's hook fields are checked and the secret never shown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devices import claims
from devices.models import Device, ProvisioningClaim, Registration
from devices.provisioning_hook import SIGNATURE_HEADER
from iotcloud.errors import InvalidInput

from .test_claims import TEMPLATES, register

pytestmark = pytest.mark.django_db

SECRET = "s3cret-for-the-hook-0123"


class Hook:
    """A tenant's check service: answers what `answer` says and records what it was sent."""

    def __init__(self):
        self.calls: list[dict] = []
        self.answer = (200, {"allow": True})  # (status, JSON-able body) or (status, raw bytes)
        self.delay = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                hook.calls.append({"body": json.loads(body), "signed": self.headers[SIGNATURE_HEADER] == expected})
                time.sleep(hook.delay)
                status, answer = hook.answer
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/check"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    service = Hook()
    yield service
    service.close()


@pytest.fixture
def hooked(tenant, hook):
    template = claims.template_create(tenant=tenant, name="gated", device_id_prefix="g-", tags={"fleet": "gated"},
                                      hook_url=hook.url, hook_secret=SECRET)  # fmt: skip
    claim, token = claims.claim_create(template=template)
    claim.token = token
    return claim


def test_an_allowed_registration_is_asked_signed_and_creates_the_device(hooked, hook):
    body = register(hooked.token, "SN-1", expect=201).json()

    assert body["device_id"] == "g-SN-1" and body["provision_token"]
    [call] = hook.calls
    assert call["signed"], "the service can check the X-Iotcloud-Signature HMAC with its secret"
    assert {k: call["body"][k] for k in ("tenant", "template", "serial", "device_id", "channel", "claim")} == {
        "tenant": "acme", "template": "gated", "serial": "SN-1", "device_id": "g-SN-1", "channel": "http",
        "claim": hooked.pk,
    }  # fmt: skip
    assert isinstance(call["body"]["timestamp"], int)


def test_a_denied_serial_is_refused_with_the_hooks_reason_and_nothing_is_created(hooked, hook):
    hook.answer = (200, {"allow": False, "reason": "not in our ERP\x00\n"})

    body = register(hooked.token, "SN-2", expect=403).json()

    assert body["code"] == "registration_denied" and "SN-2" in body["detail"]
    assert body["detail"].endswith(": not in our ERP"), "the reason, printable characters only"
    assert not Device.objects.filter(device_id="g-SN-2").exists() and not Registration.objects.exists()
    assert ProvisioningClaim.objects.get(pk=hooked.pk).registrations == 0, "a denied serial spends nothing"


def test_the_hooks_tags_are_set_over_the_templates(hooked, hook):
    hook.answer = (200, {"allow": True, "tags": {"site": "lyon", "fleet": "gated-b"}})

    register(hooked.token, "SN-3", expect=201)

    assert Device.objects.get(device_id="g-SN-3").tags == {"fleet": "gated-b", "site": "lyon"}


@pytest.mark.parametrize(
    "answer, why",
    [
        ((500, {"allow": True}), "HTTP 500"),
        ((302, {}), "HTTP 302"),
        ((200, b"<html>ok</html>"), "not JSON"),
        ((200, {"allowed": True}), '"allow"'),
        ((200, {"allow": "yes"}), '"allow"'),
        ((200, [True]), '"allow"'),
        ((200, {"allow": True, "tags": {"bad key!": "x"}}), "tags are refused"),
        ((200, b"x" * (64 * 1024 + 10)), "bytes"),
    ],
)
def test_a_hook_answering_nonsense_refuses_the_registration(hooked, hook, answer, why):
    hook.answer = answer

    body = register(hooked.token, "SN-4", expect=503).json()

    assert body["code"] == "hook_unavailable" and why in body["detail"] and "retry later" in body["detail"]
    assert not Registration.objects.exists() and not Device.objects.filter(device_id="g-SN-4").exists()


def test_a_slow_hook_times_out_and_a_retry_after_it_recovers_registers(hooked, hook, settings):
    settings.PROVISIONING_HOOK_TIMEOUT_SECONDS = 0.3
    hook.delay = 1.0

    assert "timed out" in register(hooked.token, "SN-5", expect=503).json()["detail"]

    hook.delay = 0.0
    assert register(hooked.token, "SN-5", expect=201).json()["device_id"] == "g-SN-5"


def test_a_hook_that_is_down_refuses_and_is_not_asked_for_a_registered_serial(hooked, hook):
    register(hooked.token, "SN-6", expect=201)
    assert register(hooked.token, "SN-6", expect=409).json()["code"] == "serial_registered"
    assert len(hook.calls) == 1, "a serial already registered is refused before the hook is asked"

    hook.close()
    assert register(hooked.token, "SN-7", expect=503).json()["code"] == "hook_unavailable"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hook_url": "ftp://example.com/x"}, "http"),
        ({"hook_url": "/relative"}, "absolute"),
        ({"hook_url": "https://example.com/ x"}, "URL"),
        ({"hook_url": "http://[::1/check"}, "absolute"),
        ({"hook_url": "https://example.com/x"}, "needs a hook_secret"),
        ({"hook_url": "https://example.com/x", "hook_secret": "short"}, "16 to 256"),
    ],
)
def test_bad_hook_fields_are_refused(tenant, fields, message):
    with pytest.raises(InvalidInput, match=message):
        claims.template_create(tenant=tenant, name="t", **fields)


def test_the_api_sets_the_hook_and_never_shows_its_secret(operator):
    api = operator
    created = api.post(TEMPLATES, {"name": "gated", "hook_url": "https://erp.example/check", "hook_secret": SECRET},
                       expect=201).json()  # fmt: skip
    assert created["hook_url"] == "https://erp.example/check" and created["hook_secret_set"] is True
    assert SECRET not in json.dumps(created)

    # Changing the URL keeps the secret; clearing the URL drops both.
    changed = api.patch(f"{TEMPLATES}/gated", {"hook_url": "https://erp.example/v2"}, expect=200).json()
    assert changed["hook_url"] == "https://erp.example/v2" and changed["hook_secret_set"] is True
    cleared = api.patch(f"{TEMPLATES}/gated", {"hook_url": ""}, expect=200).json()
    assert cleared["hook_url"] == "" and cleared["hook_secret_set"] is False
    refused = api.patch(f"{TEMPLATES}/gated", {"hook_url": "https://erp.example/v3"}, expect=400).json()
    assert refused["code"] == "invalid_hook"


def test_the_admin_sets_the_hook_keeps_its_secret_and_refuses_a_url_without_one(tenant):
    from iotcloud.sealing import unseal
    from iotcloud.testing import staff_client

    alice = staff_client(tenant, "alice-admin")
    add = "/admin/devices/provisioningtemplate/add/"
    fields = {"tenant": tenant.pk, "name": "gated", "description": "", "device_id_prefix": "g-", "tags": "{}",
              "desired": "{}", "shadows": "{}", "credential": "token", "allowed_serials": "", "enabled": "on",
              "hook_url": "https://erp.example/check", "hook_secret": "",
              "claims-TOTAL_FORMS": "0", "claims-INITIAL_FORMS": "0"}  # fmt: skip
    refused = alice.post(add, fields)
    assert refused.status_code == 200 and b"needs a hook_secret" in refused.content
    assert alice.post(add, {**fields, "hook_secret": SECRET}).status_code == 302
    gated = claims.templates_for_operator(alice.user).get(name="gated")
    assert gated.hook_url == "https://erp.example/check" and unseal(gated.hook_secret) == SECRET

    page = alice.get(f"/admin/devices/provisioningtemplate/{gated.pk}/change/")
    assert SECRET.encode() not in page.content and gated.hook_secret.encode() not in page.content
    change = alice.post(f"/admin/devices/provisioningtemplate/{gated.pk}/change/",
                        {**fields, "hook_url": "https://erp.example/v2"})  # fmt: skip
    assert change.status_code == 302, "an empty secret field keeps the secret"
    gated.refresh_from_db()
    assert gated.hook_url == "https://erp.example/v2" and unseal(gated.hook_secret) == SECRET
