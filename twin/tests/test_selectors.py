"""The SQL form of sync status must agree with the pure rule, device by device."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device
from twin.selectors import SYNC_STATUSES, device_sync_status, sync_status_q

pytestmark = pytest.mark.django_db


def test_sync_status_filter_matches_the_pure_rule(tenant, make_device, settings):
    now = timezone.now()
    stale_after = settings.TWIN_STALE_AFTER
    seen = [
        None,
        now,
        now - stale_after + timedelta(seconds=5),
        now - stale_after - timedelta(seconds=5),
        now - timedelta(days=3),
    ]
    versions = [(0, 0), (3, 3), (3, 2), (5, 0)]
    for i, last_seen in enumerate(seen):
        for j, (desired, reported) in enumerate(versions):
            device = make_device(tenant, f"d{i}-{j}")
            Device.objects.filter(pk=device.pk).update(
                last_seen=last_seen, desired_version=desired, reported_version=reported
            )
    devices = list(Device.objects.all())
    for status in SYNC_STATUSES:
        by_sql = set(Device.objects.filter(sync_status_q(status, now=now)).values_list("device_id", flat=True))
        by_rule = {d.device_id for d in devices if device_sync_status(d, now=now) == status}
        assert by_sql == by_rule, status
        assert by_rule  # every status is represented, so the comparison means something
