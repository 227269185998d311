"""manage.py bridge_health: the bridge container's health check."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from mqtt_bridge.models import BridgeHeartbeat


def beat(client_id="b-1", age=0.0, connected=True):
    now = timezone.now()
    BridgeHeartbeat.objects.update_or_create(
        client_id=client_id,
        defaults={"started_at": now, "last_beat_at": now - timedelta(seconds=age), "connected": connected},
    )


def test_healthy_bridge(db, settings, capsys):
    settings.MQTT_CLIENT_ID = "b-1"
    beat()
    call_command("bridge_health")
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (None, "no heartbeat"),
        ({"age": 120}, "last beat 120 s ago"),
        ({"connected": False}, "not connected"),
        ({"client_id": "someone-else"}, "no heartbeat"),
    ],
)
def test_unhealthy_bridge(db, settings, row, message):
    settings.MQTT_CLIENT_ID = "b-1"
    if row is not None:
        beat(**row)
    with pytest.raises(CommandError, match=message):
        call_command("bridge_health")
