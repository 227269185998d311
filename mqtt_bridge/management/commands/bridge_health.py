"""python manage.py bridge_health — exit 0 when this host's bridge beats and is connected (container health checks).

Reads the heartbeat row of MQTT_CLIENT_ID (the bridge of this container); exit 1 naming
the problem when it is missing, older than BRIDGE_HEARTBEAT_STALE_SECONDS or disconnected.
"""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from mqtt_bridge.models import BridgeHeartbeat


class Command(BaseCommand):
    help = "Health check of this host's MQTT bridge (its heartbeat row)."

    def add_arguments(self, parser):
        parser.add_argument("--client-id", default=None, help="the bridge to check (default: MQTT_CLIENT_ID)")

    def handle(self, *args, client_id=None, **options):
        client_id = client_id or settings.MQTT_CLIENT_ID
        row = BridgeHeartbeat.objects.filter(client_id=client_id).first()
        if row is None:
            raise CommandError(f"no heartbeat from bridge {client_id!r} yet")
        age = timezone.now() - row.last_beat_at
        if age > timedelta(seconds=settings.BRIDGE_HEARTBEAT_STALE_SECONDS):
            raise CommandError(f"bridge {client_id!r} last beat {age.total_seconds():.0f} s ago")
        if not row.connected:
            raise CommandError(f"bridge {client_id!r} is not connected to the broker")
        self.stdout.write(f"bridge {client_id!r} ok (beat {age.total_seconds():.1f} s ago)")
