"""Operators exchange a password for a bearer token and revoke it."""

import base64
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import CONSTANTS

from devices.services import operator_create, operator_token_create

pytestmark = pytest.mark.django_db


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_password_for_token_then_revoke(api_client_factory, tenant, device):
    operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    body = api_client_factory(**basic("carol", "s3cret-pass-word")).post("/customer/auth/token", expect=200).json()
    assert body["token"].startswith("iotop_")
    expiry = datetime.fromisoformat(body["expiry"].replace("Z", "+00:00"))
    assert abs(expiry - (timezone.now() + timedelta(hours=720))) < timedelta(minutes=1)  # 30 days by default

    bearer = api_client_factory(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    bearer.get(f"/customer/devices/{device.device_id}/twin", expect=200)
    bearer.post("/customer/auth/logout", expect=204)
    bearer.get(f"/customer/devices/{device.device_id}/twin", expect=401)


def test_wrong_password_is_401(api_client_factory, tenant):
    operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    api_client_factory(**basic("carol", "nope")).post("/customer/auth/token", expect=401)


def test_user_without_tenant_gets_no_token(api_client_factory):
    get_user_model().objects.create_user(username="drifter", password="s3cret-pass-word")
    api_client_factory(**basic("drifter", "s3cret-pass-word")).post("/customer/auth/token", expect=403)


# --- token lifetime and cap ------------------------------------------------------------------------------


def test_default_token_lifetime_and_cap(settings):
    assert settings.REST_KNOX["TOKEN_TTL"] == timedelta(hours=720)
    assert settings.REST_KNOX["TOKEN_LIMIT_PER_USER"] == 10


def test_a_zero_lifetime_means_tokens_never_expire(api_client_factory, tenant, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": None}  # OPERATOR_TOKEN_TTL_HOURS=0
    operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    body = api_client_factory(**basic("carol", "s3cret-pass-word")).post("/customer/auth/token", expect=200).json()
    assert body["expiry"] is None


def test_an_expired_token_is_refused(api_client_factory, tenant):
    user = operator_create(username="carol", tenant=tenant)
    bearer = api_client_factory(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=user)}")
    bearer.get("/customer/devices", expect=200)
    AuthToken.objects.filter(user=user).update(expiry=timezone.now() - timedelta(seconds=1))
    bearer.get("/customer/devices", expect=401)


def test_tokens_per_operator_are_capped(api_client_factory, tenant, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_LIMIT_PER_USER": 3}
    operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    login = api_client_factory(**basic("carol", "s3cret-pass-word"))
    tokens = [login.post("/customer/auth/token", expect=200).json()["token"] for _ in range(3)]
    refused = login.post("/customer/auth/token", expect=409).json()
    assert refused["code"] == "token_limit" and refused["limit"] == 3
    assert "3 active bearer tokens" in refused["detail"] and "OPERATOR_TOKEN_LIMIT" in refused["detail"]
    for token in tokens:  # nobody lost theirs
        api_client_factory(HTTP_AUTHORIZATION=f"Bearer {token}").get("/customer/devices", expect=200)
    api_client_factory(HTTP_AUTHORIZATION=f"Bearer {tokens[0]}").post("/customer/auth/logout", expect=204)
    login.post("/customer/auth/token", expect=200)  # room again
    login.post("/customer/auth/token", expect=409)
    # Expired tokens do not count.
    AuthToken.objects.filter(user__username="carol").update(expiry=timezone.now() - timedelta(seconds=1))
    login.post("/customer/auth/token", expect=200)
    assert AuthToken.objects.filter(user__username="carol").count() == 1  # and are cleaned up


def test_a_zero_cap_means_no_cap(tenant, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_LIMIT_PER_USER": None}  # OPERATOR_TOKEN_LIMIT=0
    user = operator_create(username="carol", tenant=tenant)
    for _ in range(12):
        operator_token_create(user=user)
    assert AuthToken.objects.filter(user=user).count() == 12


def test_an_operators_other_expired_tokens_are_pruned_hourly_not_on_every_request(api_client_factory, tenant):
    from devices.services import operator_tokens_prune

    user = operator_create(username="carol", tenant=tenant)
    current, stale = operator_token_create(user=user), operator_token_create(user=user)
    stale_row = AuthToken.objects.get(token_key=stale[: CONSTANTS.TOKEN_KEY_LENGTH])
    AuthToken.objects.filter(pk=stale_row.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    api_client_factory(HTTP_AUTHORIZATION=f"Bearer {current}").get("/customer/devices", expect=200)
    assert AuthToken.objects.filter(pk=stale_row.pk).exists()  # the request did not go looking for it
    assert operator_tokens_prune() == 1
    assert list(AuthToken.objects.filter(user=user).values_list("token_key", flat=True)) == [
        current[: CONSTANTS.TOKEN_KEY_LENGTH]
    ]
    api_client_factory(HTTP_AUTHORIZATION=f"Bearer {stale}").get("/customer/devices", expect=401)
    api_client_factory(HTTP_AUTHORIZATION=f"Bearer {current}").get("/customer/devices", expect=200)
