"""The test kit every app's tests use: API clients (operator, staff, device), data factories and the
database URL for processes a test starts. Fixtures built on these are in the top-level conftest.py.

Not imported by the application: only tests (and the benchmarks' seeding) use it.
"""

from __future__ import annotations

from urllib.parse import quote

from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from devices.choices import Role
from devices.services import device_provision, operator_create, operator_token_create

STAFF_PASSWORD = "A-long-Pass-123!"  # passes AUTH_PASSWORD_VALIDATORS


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

    def delete(self, url, **kw):
        return self.call("delete", url, **kw)

    def raw(self, method, url, body: bytes, content_type="application/json", **headers):
        return getattr(self.client, method)(url, body, content_type=content_type, headers=headers or None)


def make_operator_client(tenant, username, role=Role.OPERATOR, superuser=False) -> Api:
    """An operator with a bearer token, as the REST API sees one."""
    user = operator_create(username=username, tenant=tenant, role=role, superuser=superuser)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=user)}")
    api = Api(client)
    api.user = user
    return api


def staff_client(tenant, username, role=Role.OPERATOR, superuser=False, password=STAFF_PASSWORD) -> Client:
    """An operator signed in to the admin (a session of its own); `.user` is the operator."""
    user = operator_create(username=username, tenant=tenant, role=role, password=password, superuser=superuser)
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def make_device(tenant, device_id="sensor-1", tags=None):
    """A provisioned device; `.token` is its provision token (shown once in real life)."""
    device, token = device_provision(tenant=tenant, device_id=device_id, tags=tags)
    device.token = token
    return device


def device_client(device) -> Api:
    client = APIClient()
    client.credentials(HTTP_X_PROVISION_TOKEN=device.token)
    return Api(client)


def subprocess_database_url() -> str:
    """DATABASE_URL of the test database, for servers and bridges the tests start as processes."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return (
            f"postgres://{quote(db['USER'] or '')}:{quote(db['PASSWORD'] or '')}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    return f"sqlite:///{db['NAME']}"
