"""The PostgreSQL backend's health check (iotcloud/db/postgresql): no round trip for a live connection,
and a connection the server closed is still replaced before a request's first query (no 500)."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def server_side_statements(monkeypatch) -> list[str]:
    """Every statement the health check sends on the raw connection."""
    sent: list[str] = []
    raw = connection.connection
    original = raw.cursor

    def cursor(*args, **kwargs):
        inner = original(*args, **kwargs)
        execute = inner.execute

        def recording(query, *a, **k):
            sent.append(str(query))
            return execute(query, *a, **k)

        inner.execute = recording
        return inner

    monkeypatch.setattr(raw, "cursor", cursor)
    return sent


def test_a_live_connection_is_checked_without_a_query(postgres_only, monkeypatch):
    connection.ensure_connection()
    assert connection.vendor == "postgresql" and connection.health_check_enabled
    sent = server_side_statements(monkeypatch)

    assert connection.is_usable() is True
    assert sent == [], "no SELECT 1 for an idle connection the server has not written to"


def test_a_connection_the_server_closed_is_replaced_before_the_next_request(postgres_only, device):
    connection.ensure_connection()
    old_pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k not in ("cursor_factory", "context")},
                         autocommit=True) as admin:  # fmt: skip
        admin.execute("SELECT pg_terminate_backend(%s)", [old_pid])
    time.sleep(0.3)  # the server's goodbye reaches the socket

    assert connection.is_usable() is False
    close_old_connections()  # what request_started does: the check runs at the next query
    answer = Client().get("/device/v1/shadow", HTTP_X_PROVISION_TOKEN=device.token)

    assert answer.status_code == 200
    assert connection.connection.info.backend_pid != old_pid
