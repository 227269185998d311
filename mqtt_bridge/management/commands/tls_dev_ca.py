"""`manage.py tls_dev_ca`: a development CA and broker certificate for MQTT over TLS (mqtt_bridge.dev_tls)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mqtt_bridge.dev_tls import DEFAULT_HOSTS, ensure_dev_tls


class Command(BaseCommand):
    requires_system_checks = []  # runs before the database exists (compose's tls-init)
    help = (
        "Create a development certificate authority and a broker certificate (kept when they exist and "
        "still fit): ca.crt for devices and the bridge to trust, broker.crt/broker.key for the broker."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dir", default=None, help="where the files go (default: MQTT_TLS_DIR, var/tls)")
        parser.add_argument("--host", action="append", default=[], dest="hosts",
                            help="a name or address the broker is reached at (repeat it; default: localhost, "
                                 "127.0.0.1, ::1; these are always included)")  # fmt: skip
        parser.add_argument("--force", action="store_true", help="make a new CA and broker certificate")

    def handle(self, *args, dir, hosts, force, **options):
        directory = Path(dir or settings.MQTT_TLS_DIR)
        try:
            tls, written = ensure_dev_tls(directory, [*hosts, *DEFAULT_HOSTS], force=force)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot write the development TLS files in {directory}: {exc}") from exc
        state = f"wrote {', '.join(written)}" if written else "up to date"
        self.stdout.write(f"{tls.directory}: {state}\n  CA (trust this): {tls.ca_file}\n"
                          f"  broker: {tls.cert_file} {tls.key_file}")  # fmt: skip
