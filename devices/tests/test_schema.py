"""The database schema the original runbook checks (PostgreSQL)."""

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device

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


@pytest.mark.postgres
def test_the_pending_list_reads_its_page_from_its_own_index(postgres_only, operator, tenant):
    """GET /customer/devices?sync_status=pending takes its page, in page order, from the partial index
    idx_device_state_pending_list: a page costs its own rows, not a walk past every device in sync
    (bench/fleet_size)."""
    now = timezone.now()
    Device.objects.bulk_create(
        Device(tenant=tenant, device_id=f"d-{n:05d}", provision_token_hash=f"{n:064x}", last_seen=now,
               desired_version=1, reported_version=1)
        for n in range(3000)
    )  # fmt: skip
    pending = ["d-00007", "d-01500", "d-02999"]
    Device.objects.filter(device_id__in=pending).update(desired_version=F("desired_version") + 1)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE device_state")
    with CaptureQueriesContext(connection) as queries:
        body = operator.get("/customer/devices?sync_status=pending", expect=200).json()
    assert [d["device_id"] for d in body["results"]] == pending
    (listing,) = [q["sql"] for q in queries.captured_queries if 'FROM "device_state"' in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + listing)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "idx_device_state_pending_list" in plan, plan
    assert "Sort" not in plan and "Seq Scan on device_state" not in plan, plan
