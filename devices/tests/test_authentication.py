"""Hostile credentials on every operator and device credential path: always 401 with WWW-Authenticate, never a 500.

The headers are what a fuzzer of the OpenAPI sends: NUL and control characters, invalid base64, bytes that
are not UTF-8, megabytes of token, characters a WSGI server could never hand over (in-process clients can).
"""

import base64

import pytest
from django.urls import reverse

from devices.services import operator_create, operator_token_create

pytestmark = pytest.mark.django_db


def b64(raw: bytes | str) -> str:
    return base64.b64encode(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw).decode()


def latin1(raw: bytes) -> str:
    """A header as a WSGI/ASGI server hands it over: the raw bytes decoded as latin-1."""
    return raw.decode("latin-1")


HOSTILE_BASIC = {
    "nul in username": "Basic " + b64("car\x00ol:s3cret-pass-word"),
    "nul in password": "Basic " + b64("carol:s3cret\x00-pass-word"),
    "newline in username": "Basic " + b64("carol\n2026-01-01 INFO forged:x"),
    "escape in username": "Basic " + b64("\x1b[2J:x"),
    "zero-width username": "Basic " + b64("carol\u200b:s3cret-pass-word"),
    "not base64": "Basic !!!not*base64!!!",
    "bad padding": "Basic YWJj=ZA",
    "no colon": "Basic " + b64("carol"),
    "empty": "Basic ",
    "spaces": "Basic YQ== YQ==",
    "invalid utf-8": "Basic " + b64(b"\xc3\x28\xff:\xfe\xff"),
    "latin-1 bytes in header": latin1(b"Basic \xff\xfe\x00\x01"),
    "non-latin-1 header": "Basic \u20ac\u2603",
    "lone surrogate": "Basic " + b64("\ud800:x"),
    "huge username": "Basic " + b64("x" * 100_000 + ":pw"),
    "huge password": "Basic " + b64("carol:" + "p" * 100_000),
    "huge header": "Basic " + "A" * 300_000,
    "bearer instead": "Bearer iotop_\x00\x00",
}

HOSTILE_BEARER = {
    "nul": "Bearer iotop_\x00" + "0" * 63,
    "only nul": "Bearer \x00",
    "control characters": "Bearer iotop_\x01\x02\x1b",
    "not utf-8": latin1(b"Bearer iotop_" + b"\xff\xfe" * 32),
    "latin-1 letters": "Bearer iotop_" + "\xe9" * 64,
    "non-latin-1": "Bearer iotop_\u20ac\u2603",
    "lone surrogate": "Bearer iotop_\ud800",
    "huge": "Bearer iotop_" + "0" * 300_000,
    "empty": "Bearer ",
    "spaces": "Bearer a b",
    "wrong but well-formed": "Bearer iotop_" + "0" * 64,
}

HOSTILE_PROVISION = {
    "nul": "\x00",
    "nul inside": "iotd_abc\x00def",
    "control characters": "iotd_\x01\x1b[2J",
    "huge": "iotd_" + "a" * 300_000,
    "non-ascii": "iotd_\xe9\xe8\u20ac\u2603",
    "not utf-8": latin1(b"iotd_\xff\xfe\xc3\x28"),
    "lone surrogate": "iotd_\ud800",
}


def assert_401(response, scheme: str):
    body = response.content.decode(errors="replace")[:300]
    assert response.status_code == 401, f"{response.status_code} {body}"
    assert response["WWW-Authenticate"].startswith(scheme)
    assert response.json()["code"] and response.json()["detail"]


@pytest.fixture
def carol(tenant):
    return operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")


@pytest.mark.parametrize("header", HOSTILE_BASIC.values(), ids=HOSTILE_BASIC.keys())
def test_hostile_basic_credentials_on_the_token_endpoint_are_401(api_client_factory, carol, header):
    assert_401(api_client_factory(HTTP_AUTHORIZATION=header).post("/customer/auth/token"), "Basic")


@pytest.mark.parametrize("header", HOSTILE_BEARER.values(), ids=HOSTILE_BEARER.keys())
@pytest.mark.parametrize("method, url", [("get", "/customer/devices"), ("post", "/customer/auth/logout")])
def test_hostile_bearer_tokens_are_401(api_client_factory, carol, device, header, method, url):
    operator_token_create(user=carol)  # a real token exists: lookups by prefix have something to find
    client = api_client_factory(HTTP_AUTHORIZATION=header)
    assert_401(getattr(client, method)(url), "Bearer")
    assert_401(client.get(f"/customer/devices/{device.device_id}/twin"), "Bearer")


@pytest.mark.parametrize("token", HOSTILE_PROVISION.values(), ids=HOSTILE_PROVISION.keys())
def test_hostile_provision_tokens_are_401(api_client_factory, device, token):
    client = api_client_factory(HTTP_X_PROVISION_TOKEN=token)
    assert_401(client.get("/device/v1/shadow"), "ProvisionToken")
    assert_401(client.post("/device/v1/shadow/reported", {"reported": {}, "version": 0}), "ProvisionToken")


def test_the_right_credentials_still_work(api_client_factory, carol, device):
    token = api_client_factory(HTTP_AUTHORIZATION="Basic " + b64("carol:s3cret-pass-word"))
    bearer = token.post("/customer/auth/token", expect=200).json()["token"]
    api_client_factory(HTTP_AUTHORIZATION=f"Bearer {bearer}").get("/customer/devices", expect=200)
    api_client_factory(HTTP_X_PROVISION_TOKEN=device.token).get("/device/v1/shadow", expect=200)


SIGN_IN_BODIES = {
    "nul username": b"username=car%00ol&password=s3cret-pass-word",
    "nul password": b"username=carol&password=s3cret%00",
    "huge username": b"username=" + b"x" * 100_000 + b"&password=pw",
    "not utf-8": b"username=%ff%fe%c3%28&password=%ff",
    "control characters": b"username=carol%0a%1b&password=%0d%0a",
}


@pytest.mark.parametrize("body", SIGN_IN_BODIES.values(), ids=SIGN_IN_BODIES.keys())
@pytest.mark.parametrize("url", [reverse("admin:login"), "/api-auth/login/"])
def test_hostile_credentials_on_the_sign_in_pages_are_refused_not_crashed(client, carol, url, body):
    response = client.generic("POST", url, body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.status_code  # the form again, with its error
    assert "_auth_user_id" not in client.session
