"""Device accounts the bridge created on Mosquitto before accounts were bound to their client id
accept any client id (a device could take over another client's session). Hand every active
device that has an account back to the bridge: it re-applies the account, now with its client id
bound and its ACLs in step (accounts.ensure_device_accounts), and keeps the password as it is."""

from django.db import migrations
from django.db.models import F


def rebind(apps, schema_editor):
    Device = apps.get_model("devices", "Device")
    Device.objects.filter(status="active", broker_synced_version__gt=0).update(
        broker_account_version=F("broker_account_version") + 1
    )


class Migration(migrations.Migration):
    dependencies = [
        ("mqtt_bridge", "0001_bridge_heartbeats"),
        ("devices", "0003_broker_accounts"),
    ]

    operations = [migrations.RunPython(rebind, migrations.RunPython.noop)]
