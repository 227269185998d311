"""The bridge's heartbeat: its row in bridge_heartbeats, upserted every BRIDGE_HEARTBEAT_SECONDS.

/readyz reads the rows to know a bridge is alive; /metrics exports their
counters (bridge.stats). A failed beat is logged and retried at the next
interval: the heartbeat never stops the bridge. The last beat is written on a
clean stop, so the final counters are kept.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import DatabaseError, InterfaceError
from django.utils import timezone

from mqtt_bridge.client import V5
from mqtt_bridge.models import BridgeHeartbeat

logger = logging.getLogger(__name__)

# Rows of bridges gone this long are deleted (by whichever bridge beats), so
# retired client ids do not linger in /metrics forever.
RETENTION = timedelta(days=1)
PRUNE_EVERY_SECONDS = 3600

UPDATED_FIELDS = ["hostname", "pid", "protocol", "connected", "started_at", "last_beat_at", "stats"]


class Heartbeat:
    """Run in the bridge's own thread: `bridge._spawn("heartbeat", Heartbeat(bridge).run)`."""

    def __init__(self, bridge, interval: float | None = None):
        self.bridge = bridge
        self.interval = interval if interval is not None else settings.BRIDGE_HEARTBEAT_SECONDS
        self.started_at = timezone.now()
        self.hostname = socket.gethostname()
        self._pruned_at = float("-inf")

    def run(self) -> None:
        self.beat()
        while not self.bridge.stopping.wait(self.interval):
            self.beat()
        self.beat()  # final counters

    def beat(self) -> bool:
        """Upsert this bridge's row; False (logged) when the database refused."""
        close_old_connections()
        try:
            write_beat(self.row())
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                BridgeHeartbeat.objects.filter(last_beat_at__lt=timezone.now() - RETENTION).delete()
                self._pruned_at = time.monotonic()
        except (DatabaseError, InterfaceError):
            logger.exception("bridge heartbeat failed; retrying in %g s", self.interval)
            connection.close()
            return False
        return True

    def row(self) -> BridgeHeartbeat:
        bridge = self.bridge
        return BridgeHeartbeat(
            client_id=bridge.client_id,
            hostname=self.hostname[:255],
            pid=os.getpid(),
            protocol="5" if getattr(bridge, "protocol", None) == V5 else "3.1.1",
            connected=bridge.connected.is_set() and not bridge.stopping.is_set(),
            started_at=self.started_at,
            last_beat_at=timezone.now(),
            stats=dict(bridge.stats),  # a copy: the ingest and deliver threads keep counting
        )


def write_beat(row: BridgeHeartbeat) -> None:
    """One upsert statement (INSERT ... ON CONFLICT DO UPDATE) on PostgreSQL and SQLite."""
    BridgeHeartbeat.objects.bulk_create(
        [row], update_conflicts=True, unique_fields=["client_id"], update_fields=UPDATED_FIELDS
    )
