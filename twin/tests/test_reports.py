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
