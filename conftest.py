"""Shared test fixtures: tenants, operators with bearer tokens, devices with tokens (built on iotcloud.testing)."""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from devices.services import tenant_create
from iotcloud import testing
from iotcloud.testing import Api, device_client, make_operator_client, subprocess_database_url  # noqa: F401  (re-exported)


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


@pytest.fixture(autouse=True)
def _fresh_device_rate_limits():
    """Empty per-device rate-limit buckets for every test (device pks repeat across tests on SQLite)."""
    from devices.throttling import reset_device_rate_limits

    reset_device_rate_limits()


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL=postgres://...; .ci/run does)")


@pytest.fixture
def tenant(db):
    return tenant_create(tenant_id="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return tenant_create(tenant_id="globex", name="Globex")


@pytest.fixture
def operator(tenant):
    return make_operator_client(tenant, "alice")


@pytest.fixture
def other_operator(other_tenant):
    return make_operator_client(other_tenant, "bob")


@pytest.fixture
def make_device():
    return testing.make_device


@pytest.fixture
def device(tenant, make_device):
    return make_device(tenant)


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
