"""Named shadows (table `twin_named_shadows`) and the shadow documents outbox.

The classic shadow lives in the seed's `device_state` columns (devices.models.Device); a named
shadow has the very same columns under the very same names, so twin.engine reads and writes
both with one code path.
"""

from django.db import models
from django.db.models import F, Q

from devices.models import Device
from iotcloud.rules import SHADOW_NAME


class NamedShadow(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="named_shadows")
    name = models.CharField(max_length=SHADOW_NAME.max_length)
    desired_state = models.JSONField(default=dict, blank=True)
    reported_state = models.JSONField(default=dict, blank=True)
    desired_metadata = models.JSONField(default=dict, blank=True)
    reported_metadata = models.JSONField(default=dict, blank=True)
    desired_version = models.PositiveIntegerField(default=0)
    reported_version = models.PositiveIntegerField(default=0)
    shadow_version = models.PositiveIntegerField(default=0)
    shadow_updated_at = models.DateTimeField(null=True, blank=True)
    reported_updated_at = models.DateTimeField(null=True, blank=True)
    # Deleted shadows keep their row, so the version goes on from where it was (as AWS IoT does).
    deleted = models.BooleanField(default=False)
    desired_published_version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "twin_named_shadows"
        ordering = ["device_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["device", "name"], name="uniq_named_shadow_device_name"),
            models.CheckConstraint(
                condition=Q(reported_version__lte=F("desired_version")), name="named_shadow_reported_not_ahead"
            ),
        ]
        indexes = [
            models.Index(
                fields=["id"],
                name="idx_named_shadow_unpublished",
                condition=Q(desired_version__gt=F("desired_published_version")),
            ),
        ]

    def __str__(self):
        return f"{self.device_id}:{self.name}"


class ShadowEvent(models.Model):
    """An accepted shadow change waiting for the bridge: its update/documents message (previous and
    current) and, when the change leaves desired and reported apart, its update/delta. Written in
    the change's own transaction, deleted once the broker acknowledged it: nothing is lost when a
    bridge or the broker is down, and every writer (HTTP, admin, bridge) takes the same path."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    shadow_name = models.CharField(max_length=SHADOW_NAME.max_length, blank=True, default="")
    documents = models.JSONField()  # {"previous": {...}, "current": {...}}
    delta = models.JSONField(null=True, blank=True)  # {"state": ..., "metadata": ..., "version": n}
    client_token = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField()
    # Its writer publishes it itself until then (twin.engine.leased_events); the delivery loop after.
    leased_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "twin_shadow_events"

    def __str__(self):
        return f"{self.device_id}:{self.shadow_name} event {self.pk}"
