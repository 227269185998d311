"""Operators exchange a password for a bearer token and revoke it."""

import base64

import pytest
from django.contrib.auth import get_user_model

from devices.services import operator_create

pytestmark = pytest.mark.django_db


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_password_for_token_then_revoke(api_client_factory, tenant, device):
    operator_create(username="carol", tenant=tenant, password="s3cret-pass-word")
    body = api_client_factory(**basic("carol", "s3cret-pass-word")).post("/customer/auth/token", expect=200).json()
    assert body["token"].startswith("iotop_") and body["expiry"] is None

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
