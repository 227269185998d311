"""Room on each page of device_state for HOT updates (PostgreSQL only).

A report rewrites a device's row. With every page full (fillfactor 100, the default) the new version
of the row lands on another page and every index of the table (eleven, one of them GIN) gets a new
entry; with free room on the page and no indexed column changed (twin.engine moves last_seen only
past its resolution), PostgreSQL updates the row in place and no index. Pages written before this
keep their layout until they are rewritten (VACUUM FULL or pg_repack to apply it at once).
"""

from django.db import migrations

FILLFACTOR = 70


def set_fillfactor(apps, schema_editor, value=FILLFACTOR):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE device_state SET (fillfactor = {int(value)})")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE device_state RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("devices", "0011_claim_certificate")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
