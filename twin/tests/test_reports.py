"""twin_record_reports: the one write path for reports (HTTP and MQTT)."""

import pytest

from devices.models import Device
from devices.services import device_decommission
from twin.services import Report, twin_record_reports, twin_update_desired

pytestmark = pytest.mark.django_db


def report(device, reported, version):
    return Report(device.tenant_id, device.device_id, reported, version)


def test_batch_verdicts_are_per_report_and_in_order(tenant, other_tenant, make_device):
    a = make_device(tenant, "a")
    b = make_device(tenant, "b")
    gone = make_device(tenant, "gone")
    theirs = make_device(other_tenant, "theirs")
    device_decommission(device=gone)
    for device in (a, b):
        twin_update_desired(device=device, document={"x": 1})

    results = twin_record_reports(
        [
            report(a, {"x": 1}, 1),
            report(b, {"x": 1}, 2),
            report(gone, {}, 0),
            Report(tenant.id, theirs.device_id, {}, 0),
            report(b, [1], 0),
            report(b, {}, "1"),
        ]
    )

    codes = [r.code if r else None for r in results]
    assert codes == [None, "version_conflict", "device_decommissioned", "device_not_found", "not_an_object",
                     "invalid_version"]  # fmt: skip
    assert results[1].extra == {"desired_version": 1}
    assert Device.objects.get(pk=a.pk).reported_version == 1
    assert Device.objects.get(pk=b.pk).reported_version == 0
    assert Device.objects.get(pk=theirs.pk).reported_updated_at is None


def test_newest_report_of_a_batch_wins_whatever_the_order(tenant, make_device):
    device = make_device(tenant)
    for n in range(4):
        twin_update_desired(device=device, document={"n": n})
    results = twin_record_reports([report(device, {"v": v}, v) for v in (3, 1, 4, 2)])
    assert results == [None] * 4
    device.refresh_from_db()
    assert (device.reported_version, device.reported_state) == (4, {"v": 4})


def test_equal_versions_later_report_wins(tenant, make_device):
    device = make_device(tenant)
    twin_update_desired(device=device, document={"n": 1})
    twin_record_reports([report(device, {"temp": 20}, 1), report(device, {"temp": 21}, 1)])
    device.refresh_from_db()
    assert device.reported_state == {"temp": 21}


def test_older_report_keeps_state_but_counts_as_seen(tenant, make_device):
    device = make_device(tenant)
    for n in range(3):
        twin_update_desired(device=device, document={"n": n})
    twin_record_reports([report(device, {"v": 3}, 3)])
    Device.objects.filter(pk=device.pk).update(last_seen=None)
    assert twin_record_reports([report(device, {"v": 1}, 1)]) == [None]
    device.refresh_from_db()
    assert device.reported_state == {"v": 3} and device.reported_version == 3
    assert device.last_seen is not None


def test_empty_batch():
    assert twin_record_reports([]) == []


def test_a_report_moves_last_seen_only_past_its_resolution(tenant, make_device, settings):
    """As a read does (devices.services.device_touch): a fleet reporting every few seconds does not
    rewrite an indexed column each time, so PostgreSQL can update the row in place (HOT)."""
    device = make_device(tenant)
    twin_update_desired(device=device, document={"n": 1})
    twin_record_reports([report(device, {"v": 1}, 1)])
    first = Device.objects.get(pk=device.pk).last_seen
    assert first is not None

    twin_record_reports([report(device, {"v": 2}, 1)])
    row = Device.objects.get(pk=device.pk)
    assert row.reported_state == {"v": 2} and row.last_seen == first, "within the window: the state, not last_seen"

    Device.objects.filter(pk=device.pk).update(last_seen=first - settings.DEVICE_LAST_SEEN_RESOLUTION)
    twin_record_reports([report(device, {"v": 3}, 1)])
    assert Device.objects.get(pk=device.pk).last_seen > first, "past it: last_seen moves"


def test_repeated_reports_are_hot_updates_on_postgresql(postgres_only, transactional_db, tenant, make_device):
    from django.db import connection

    device = make_device(tenant)
    twin_update_desired(device=device, document={"n": 1})
    twin_record_reports([report(device, {"v": 0}, 1)])  # last_seen set: from here it stays within its window

    def hot_updates() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'device_state'")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'device_state'")
        assert cursor.fetchone()[0] == ["fillfactor=70"]
    before = hot_updates()
    for n in range(1, 6):
        twin_record_reports([report(device, {"v": n}, 1)])
    assert hot_updates() - before >= 5, "no indexed column changed: the row was updated in place"
