"""Management commands: create_tenant, create_operator, provision_device, demo."""

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from devices.models import Device, Tenant

pytestmark = pytest.mark.django_db


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_tenant_operator_device_commands_give_working_tokens():
    run("create_tenant", "acme", "--name", "Acme")
    output = run("create_operator", "alice", "--tenant", "acme")
    operator_token = re.search(r"bearer token \(shown once\): (\S+)", output).group(1)
    output = run("provision_device", "acme", "pump-1", "--tags", '{"site": "paris"}')
    device_token = re.search(r"provision token \(shown once\): (\S+)", output).group(1)

    operator = APIClient()
    operator.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert operator.get("/customer/devices/pump-1").json()["tags"] == {"site": "paris"}
    device = APIClient()
    device.credentials(HTTP_X_PROVISION_TOKEN=device_token)
    assert device.get("/device/v1/shadow").status_code == 200


@pytest.mark.parametrize(
    "args",
    [
        ("create_tenant", "Bad/Id"),
        ("create_operator", "bob", "--tenant", "missing"),
        ("create_operator", "bob"),
        ("provision_device", "missing", "d1"),
    ],
)
def test_commands_fail_clearly(args):
    with pytest.raises(CommandError):
        run(*args)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--password", "123"), "Password refused: This password is too short"),
        (("--password", "alice1234"), "too similar to the username"),
    ],
)
def test_create_operator_applies_the_password_validators(args, message):
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match=message):
        run("create_operator", "alice", "--tenant", "acme", *args)
    assert not get_user_model().objects.filter(username="alice").exists()
    run("create_operator", "alice", "--tenant", "acme", "--password", "s3cret-pass-word")  # a good one passes


@pytest.mark.parametrize("username", ["eve\nforged", "acme-admin\u200b", "<b>x</b>"])
def test_create_operator_refuses_hostile_usernames(username):
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match="Invalid username"):
        run("create_operator", username, "--tenant", "acme")
    assert not get_user_model().objects.exists()


def test_create_operator_token_respects_the_lifetime_and_the_cap(settings):
    from django.utils import timezone
    from knox.models import AuthToken

    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_LIMIT_PER_USER": 2}
    run("create_tenant", "acme")
    first = re.search(r"bearer token \(shown once\): (\S+)", run("create_operator", "alice", "--tenant", "acme"))[1]
    second = run("create_operator_token", "alice").strip()
    token = AuthToken.objects.get(token_key=second[:15])
    assert abs(token.expiry - timezone.now() - settings.REST_KNOX["TOKEN_TTL"]).total_seconds() < 60
    with pytest.raises(CommandError, match=r"already has 2 active bearer tokens.*OPERATOR_TOKEN_LIMIT=2"):
        run("create_operator_token", "alice")
    third = run("create_operator_token", "alice", "--replace-oldest").strip()
    assert set(AuthToken.objects.values_list("token_key", flat=True)) == {second[:15], third[:15]}
    assert first[:15] not in set(AuthToken.objects.values_list("token_key", flat=True))


def test_provision_device_refuses_bad_input():
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match="not valid JSON"):
        run("provision_device", "acme", "d1", "--tags", "{")
    with pytest.raises(CommandError, match="Invalid device id"):
        run("provision_device", "acme", "a/b")
    run("provision_device", "acme", "d1")
    with pytest.raises(CommandError, match="already exists"):
        run("provision_device", "acme", "d1")


def test_demo_is_rerunnable_and_prints_working_tokens(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = run("demo")
    output = run("demo")
    assert Tenant.objects.filter(id="demo").count() == 1
    assert Device.objects.filter(tenant_id="demo").count() == 12
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["operator_token"] in output
    # The login stays printable on every run, and it works.
    assert f"demo / {saved['password']}" in first
    assert f"demo / {saved['password']}" in output
    assert get_user_model().objects.get(username="demo").check_password(saved["password"])
    assert (tmp_path / "demo.json").stat().st_mode & 0o077 == 0
    assert "curl" in output
    device = APIClient()
    device.credentials(HTTP_X_PROVISION_TOKEN=saved["devices"]["thermo-01"])
    assert device.get("/device/v1/shadow").status_code == 200
