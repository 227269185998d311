"""Bridge heartbeats (table `bridge_heartbeats`): one row per bridge instance.

Each bridge upserts its row every BRIDGE_HEARTBEAT_SECONDS (mqtt_bridge.heartbeat);
/readyz reads it to tell whether any bridge is alive, /metrics exports its
cumulative counters. Rows of bridges that stopped stay until they are old
(pruned by the beating bridges), so a rolling restart does not look like an outage.
"""

from django.db import models


class BridgeHeartbeat(models.Model):
    client_id = models.CharField(primary_key=True, max_length=128)
    hostname = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(default=0)
    # "5" or "3.1.1": what the bridge negotiated with the broker.
    protocol = models.CharField(max_length=8, blank=True, default="")
    connected = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    last_beat_at = models.DateTimeField()
    # The bridge's cumulative counters since started_at: received, accepted, rejected, published.
    stats = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "bridge_heartbeats"
        ordering = ["client_id"]

    def __str__(self):
        return f"{self.client_id} ({self.hostname}:{self.pid})"
