"""The database schema the original runbook checks (PostgreSQL)."""

import pytest
from django.db import connection

SHADOW_COLUMNS = ["desired_state", "desired_version", "reported_state", "reported_version", "shadow_updated_at"]


@pytest.mark.postgres
def test_shadow_columns_exist(postgres_only):
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT column_name, data_type FROM information_schema.columns
            WHERE table_name = 'device_state' AND column_name = ANY(%s) ORDER BY column_name
            """,
            [SHADOW_COLUMNS],
        )
        rows = cursor.fetchall()
    assert [name for name, _ in rows] == sorted(SHADOW_COLUMNS)
    types = dict(rows)
    assert types["desired_state"] == "jsonb" and types["reported_state"] == "jsonb"
    assert types["shadow_updated_at"] == "timestamp with time zone"


@pytest.mark.postgres
def test_pending_index_exists_and_is_partial(postgres_only):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'device_state' "
            "AND indexname = 'idx_device_state_shadow_pending'"
        )
        rows = cursor.fetchall()
    assert len(rows) == 1
    indexdef = rows[0][0]
    assert "(tenant_id)" in indexdef
    assert "WHERE (desired_version > reported_version)" in indexdef


@pytest.mark.postgres
def test_provision_token_hash_is_unique_and_indexed(postgres_only):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'device_state' AND indexdef LIKE %s",
            ["%UNIQUE%provision_token_hash%"],
        )
        assert cursor.fetchall()
