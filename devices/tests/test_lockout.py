"""Sign-in lockout (django-axes, in the database): per username and per address, on every password sign-in."""

import base64
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from devices.lockout import client_ip
from devices.services import operator_create, operator_token_create

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-pass-word"
LIMIT = 5  # LOGIN_FAILURE_LIMIT's default
LOCKOUT = 15 * 60  # LOGIN_LOCKOUT_MINUTES's default, in seconds


def basic(username, password, address="198.51.100.7"):
    return {
        "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode(),
        "REMOTE_ADDR": address,
    }


@pytest.fixture
def carol(tenant):
    return operator_create(username="carol", tenant=tenant, password=PASSWORD)


def token_login(api_client_factory, username, password, address="198.51.100.7"):
    return api_client_factory(**basic(username, password, address)).post("/customer/auth/token")


def assert_locked_json(response):
    assert response.status_code == 429, response.content
    assert response["Retry-After"] == str(LOCKOUT)
    body = response.json()
    assert body["code"] == "login_locked" and body["retry_after"] == LOCKOUT
    assert "Too many failed sign-ins" in body["detail"] and "15 minutes" in body["detail"]


def test_the_token_endpoint_locks_a_username_out_after_repeated_failures(api_client_factory, carol, tenant):
    bearer = api_client_factory(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=carol)}")
    for _ in range(LIMIT - 1):
        assert token_login(api_client_factory, "carol", "wrong").status_code == 401
    assert_locked_json(token_login(api_client_factory, "carol", "wrong"))  # the LIMIT-th failure locks
    # Locked: the right password does not get through, from anywhere.
    assert_locked_json(token_login(api_client_factory, "carol", PASSWORD))
    assert_locked_json(token_login(api_client_factory, "carol", PASSWORD, address="203.0.113.9"))
    # Bearer tokens are not password sign-ins: they keep working; other operators sign in.
    bearer.get("/customer/devices", expect=200)
    operator_create(username="dave", tenant=tenant, password=PASSWORD)
    assert token_login(api_client_factory, "dave", PASSWORD, address="203.0.113.9").status_code == 200
    # Stored in the database, and lifted LOGIN_LOCKOUT_MINUTES after the last attempt.
    assert AccessAttempt.objects.filter(username="carol").exists()
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(seconds=LOCKOUT + 1))
    assert token_login(api_client_factory, "carol", PASSWORD).status_code == 200


def test_the_token_endpoint_locks_an_address_out(api_client_factory, carol, tenant):
    for n in range(LIMIT):  # one guess each at many accounts (password spraying)
        token_login(api_client_factory, f"user{n}", "password1")
    assert_locked_json(token_login(api_client_factory, "carol", PASSWORD))  # from that address
    assert token_login(api_client_factory, "carol", PASSWORD, address="203.0.113.9").status_code == 200


def test_a_few_mistakes_do_not_lock_anyone_out(api_client_factory, carol):
    for _ in range(LIMIT - 2):
        assert token_login(api_client_factory, "carol", "wrong").status_code == 401
    assert token_login(api_client_factory, "carol", PASSWORD).status_code == 200
    assert token_login(api_client_factory, "carol", PASSWORD).status_code == 200


def test_lockout_off_with_a_zero_limit(api_client_factory, carol, settings):
    settings.AXES_ENABLED = False  # LOGIN_FAILURE_LIMIT=0
    for _ in range(LIMIT * 2):
        assert token_login(api_client_factory, "carol", "wrong").status_code == 401
    assert token_login(api_client_factory, "carol", PASSWORD).status_code == 200


@pytest.mark.parametrize("url", [reverse("admin:login"), "/api-auth/login/"])
def test_the_sign_in_pages_lock_out_with_a_page_saying_so(client, carol, url):
    for _ in range(LIMIT - 1):
        response = client.post(url, {"username": "carol", "password": "wrong"}, REMOTE_ADDR="198.51.100.7")
        assert response.status_code == 200  # the form again
    response = client.post(url, {"username": "carol", "password": "wrong"}, REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 429 and response["Retry-After"] == str(LOCKOUT)
    page = response.content.decode()
    assert "Signing in is locked" in page and "Too many failed sign-ins" in page and "15 minutes" in page
    response = client.post(url, {"username": "carol", "password": PASSWORD}, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 429 and "_auth_user_id" not in client.session


def test_a_successful_admin_sign_in_still_works(client, carol):
    response = client.post(reverse("admin:login"), {"username": "carol", "password": PASSWORD})
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(carol.pk)


def test_hostile_request_metadata_is_stored_without_crashing(api_client_factory, carol):
    client = api_client_factory(
        **basic("carol", "wrong"),
        HTTP_USER_AGENT="agent\x00" + "x" * 1000,
        HTTP_ACCEPT="application/json, text/h\x00tml" + ", x/y" * 500,
    )
    assert client.post("/customer/auth/token").status_code == 401
    assert "\x00" not in AccessAttempt.objects.get(username="carol").user_agent


# --- the client address ------------------------------------------------------------------------------------


def request_from(remote, forwarded=None):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().post("/customer/auth/token", **meta)


def test_the_address_is_remote_addr_and_x_forwarded_for_is_ignored_by_default():
    assert client_ip(request_from("198.51.100.7", "203.0.113.1")) == "198.51.100.7"
    assert client_ip(request_from("not an address")) is None


def test_x_forwarded_for_counts_only_behind_trusted_proxies(settings):
    settings.TRUSTED_PROXY_COUNT = 1  # one proxy (it appends the address it saw)
    assert client_ip(request_from("10.0.0.2", "203.0.113.1")) == "203.0.113.1"
    assert client_ip(request_from("10.0.0.2", "6.6.6.6, 203.0.113.1")) == "203.0.113.1"  # the client's own entry
    assert client_ip(request_from("10.0.0.2")) == "10.0.0.2"  # did not come through the proxy
    assert client_ip(request_from("10.0.0.2", "garbage")) == "10.0.0.2"
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(request_from("10.0.0.3", "6.6.6.6, 203.0.113.1, 10.0.0.2")) == "203.0.113.1"
    assert client_ip(request_from("10.0.0.3", "2001:db8::1, 10.0.0.2")) == "2001:db8::1"


def test_spoofed_x_forwarded_for_does_not_escape_the_lockout(api_client_factory, carol):
    for n in range(LIMIT):
        client = api_client_factory(**basic("carol", "wrong"), HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
        client.post("/customer/auth/token")
    assert_locked_json(token_login(api_client_factory, "someone-else", "x"))  # the real address is locked


# --- settings from the environment ---------------------------------------------------------------------------


def test_lockout_settings_come_from_the_environment(tmp_path):
    code = (
        "from django.conf import settings as s; "
        "print([s.AXES_ENABLED, s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.TRUSTED_PROXY_COUNT])"
    )
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'settings.sqlite3'}"}

    def read(**variables):
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "--verbosity", "0", "--command", code],
            cwd=Path(__file__).resolve().parents[2], env={**env, **variables}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert read() == repr([True, 5, 900.0, 0])
    assert read(LOGIN_FAILURE_LIMIT="3", LOGIN_LOCKOUT_MINUTES="60", TRUSTED_PROXY_COUNT="1") == repr(
        [True, 3, 3600.0, 1]
    )
    assert read(LOGIN_FAILURE_LIMIT="0") == repr([False, 1, 900.0, 0])


# --- under ASGI (daphne serves the operator UI): axes' middleware runs its async path ------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", [reverse("admin:login"), "/customer/auth/token"])
def test_lockout_under_asgi(async_client, tenant, url):
    import asyncio

    from asgiref.sync import sync_to_async

    async def attempts():
        await sync_to_async(operator_create)(username="carol", tenant=tenant, password=PASSWORD)
        if url.startswith("/admin/"):
            post = lambda password: async_client.post(url, {"username": "carol", "password": password})  # noqa: E731
        else:
            post = lambda password: async_client.post(  # noqa: E731
                url, headers={"Authorization": basic("carol", password)["HTTP_AUTHORIZATION"]}
            )
        statuses = [(await post("wrong")).status_code for _ in range(LIMIT - 1)]
        return statuses, await post("wrong"), await post(PASSWORD)

    statuses, locked, right_password = asyncio.run(attempts())
    assert statuses == [200 if url.startswith("/admin/") else 401] * (LIMIT - 1)
    for response in (locked, right_password):
        assert response.status_code == 429 and response["Retry-After"] == str(LOCKOUT)
        if url.startswith("/admin/"):
            assert "Signing in is locked" in response.content.decode()
        else:
            assert response.json()["code"] == "login_locked" and response.json()["retry_after"] == LOCKOUT
