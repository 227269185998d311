"""The device protocol (shadow get/update/delete, jobs; native and $aws/things/... topics) needs new
grants in every device's role. Hand every active device that has an account back to the bridge:
it brings the role's ACLs in step (accounts.ensure_device_accounts) and keeps the password."""

from django.db import migrations
from django.db.models import F


def regrant(apps, schema_editor):
    Device = apps.get_model("devices", "Device")
    Device.objects.filter(status="active", broker_synced_version__gt=0).update(
        broker_account_version=F("broker_account_version") + 1
    )


class Migration(migrations.Migration):
    dependencies = [
        ("mqtt_bridge", "0002_bind_device_client_ids"),
        ("devices", "0004_shadow_metadata_and_version"),
    ]

    operations = [migrations.RunPython(regrant, migrations.RunPython.noop)]
