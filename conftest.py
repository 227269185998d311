"""Shared test fixtures: tenants, operators with bearer tokens, devices with tokens."""

from urllib.parse import quote

import pytest
from django.db import connection
from rest_framework.test import APIClient

from devices.choices import Role
from devices.services import device_provision, operator_create, operator_token_create, tenant_create


def pytest_configure(config):
    """A fast password hasher for the test run, and for every process it starts (they inherit the variable)."""
    import os

    from django.conf import settings

    os.environ["TEST_FAST_PASSWORD_HASHER"] = "1"
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.django_db(transaction=True))


def subprocess_database_url() -> str:
    """DATABASE_URL of the test database, for servers and bridges the tests start as processes."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return (
            f"postgres://{quote(db['USER'] or '')}:{quote(db['PASSWORD'] or '')}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    return f"sqlite:///{db['NAME']}"


@pytest.fixture(autouse=True)
def _fresh_device_rate_limits():
    """Empty per-device rate-limit buckets for every test (device pks repeat across tests on SQLite)."""
    from devices.throttling import reset_device_rate_limits

    reset_device_rate_limits()


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL=postgres://...; .ci/run does)")


class Api:
    """An API client that prints the body when a status assertion fails."""

    def __init__(self, client: APIClient):
        self.client = client

    def call(self, method, url, data=None, expect=None, **headers):
        kwargs = {"format": "json"} if data is not None else {}
        response = getattr(self.client, method)(url, data, headers=headers or None, **kwargs)
        if expect is not None:
            body = response.content.decode(errors="replace")[:2000]
            assert response.status_code == expect, f"{method.upper()} {url}: {response.status_code} {body}"
        return response

    def get(self, url, **kw):
        return self.call("get", url, **kw)

    def post(self, url, data=None, **kw):
        return self.call("post", url, data, **kw)

    def patch(self, url, data=None, **kw):
        return self.call("patch", url, data, **kw)

    def put(self, url, data=None, **kw):
        return self.call("put", url, data, **kw)

    def raw(self, method, url, body: bytes, content_type="application/json", **headers):
        return getattr(self.client, method)(url, body, content_type=content_type, headers=headers or None)


@pytest.fixture
def tenant(db):
    return tenant_create(tenant_id="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return tenant_create(tenant_id="globex", name="Globex")


def make_operator_client(tenant, username, role=Role.OPERATOR, superuser=False) -> Api:
    user = operator_create(username=username, tenant=tenant, role=role, superuser=superuser)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=user)}")
    api = Api(client)
    api.user = user
    return api


@pytest.fixture
def operator(tenant):
    return make_operator_client(tenant, "alice")


@pytest.fixture
def other_operator(other_tenant):
    return make_operator_client(other_tenant, "bob")


@pytest.fixture
def make_device():
    def make(tenant, device_id="sensor-1", tags=None):
        device, token = device_provision(tenant=tenant, device_id=device_id, tags=tags)
        device.token = token
        return device

    return make


@pytest.fixture
def device(tenant, make_device):
    return make_device(tenant)


def device_client(device) -> Api:
    client = APIClient()
    client.credentials(HTTP_X_PROVISION_TOKEN=device.token)
    return Api(client)


@pytest.fixture
def device_api(device):
    return device_client(device)


@pytest.fixture
def api_client_factory():
    def make(**credentials) -> Api:
        client = APIClient()
        if credentials:
            client.credentials(**credentials)
        return Api(client)

    return make
