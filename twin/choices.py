from django.db import models

from devices.choices import DeviceStatus
from twin import shadow


class SyncStatus(models.TextChoices):
    """A device's sync badge.

    SYNCED, PENDING and STALE are what twin.shadow.sync_status computes (the pure rule, whose
    values these are); a decommissioned device has no sync to speak of and is shown
    DECOMMISSIONED instead (the dashboard counts it apart, its badge says so).
    """

    SYNCED = shadow.SYNCED
    PENDING = shadow.PENDING
    STALE = shadow.STALE
    DECOMMISSIONED = DeviceStatus.DECOMMISSIONED.value


# What sync_status computes, and what the API's sync_status filter and field take.
SYNC_STATUSES = (SyncStatus.SYNCED, SyncStatus.PENDING, SyncStatus.STALE)


def shown_sync_status(status: str, sync: str) -> SyncStatus:
    """The badge of a device with this status and computed sync status."""
    return SyncStatus.DECOMMISSIONED if status == DeviceStatus.DECOMMISSIONED else SyncStatus(sync)
