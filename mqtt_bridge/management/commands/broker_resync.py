"""python manage.py broker_resync — rebuild devices' broker accounts (Mosquitto dynamic security) from the database.

For a broker that was replaced, restored or wiped. Devices whose account had to be created
again have no password on the broker (only token digests are stored): they are listed, and
with --rotate-missing their tokens are rotated and the new ones written to --tokens-file
(mode 600) for delivery to the devices.
"""

import json
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.models import Device
from devices.services import device_rotate_token
from mqtt_bridge.accounts import acl, dynsec
from mqtt_bridge.accounts.sync import broker_accounts_resync, broker_accounts_sync_pending
from mqtt_bridge.config import broker_settings


class Command(BaseCommand):
    help = "Rebuild per-device broker accounts and ACLs (MQTT_DEVICE_AUTH=dynsec) from the database."

    def add_arguments(self, parser):
        parser.add_argument("--rotate-missing", action="store_true",
                            help="rotate the tokens of devices whose broker account had to be recreated")  # fmt: skip
        parser.add_argument("--tokens-file", help="where --rotate-missing writes the new tokens (JSON, mode 600)")

    def handle(self, *args, rotate_missing, tokens_file, **options):
        if settings.MQTT_DEVICE_AUTH != "dynsec":
            raise CommandError("MQTT_DEVICE_AUTH is not 'dynsec': the broker's accounts are not managed by iotcloud")
        if rotate_missing and not tokens_file:
            raise CommandError("--rotate-missing needs --tokens-file (the new tokens are shown only once)")
        broker = broker_settings()
        try:
            control = dynsec.DynsecClient(broker, client_id=f"iotcloud-resync-{uuid.uuid4().hex[:8]}")
        except (dynsec.DynsecError, OSError) as exc:
            raise CommandError(f"cannot reach the broker's dynamic security plugin at {broker}: {exc}") from None
        try:
            report = broker_accounts_resync(control)
            self.stdout.write(f"{report.rebuilt} device accounts rebuilt, {len(report.removed)} removed")
            for username in report.removed:
                self.stdout.write(f"  removed {username}")
            if report.without_password and not rotate_missing:
                self.stdout.write(
                    f"{len(report.without_password)} device(s) have no password on the broker and cannot connect "
                    "until their token is rotated (admin, API, or --rotate-missing):"
                )
                for username in report.without_password:
                    self.stdout.write(f"  {username}")
            if report.without_password and rotate_missing:
                tokens = self._rotate(report.without_password)
                while broker_accounts_sync_pending(run=control.run):
                    pass
                path = Path(tokens_file)
                path.touch(mode=0o600)
                os.chmod(path, 0o600)
                path.write_text(json.dumps(tokens, indent=2))
                self.stdout.write(f"{len(tokens)} token(s) rotated; new tokens in {path}")
        except dynsec.DynsecError as exc:
            raise CommandError(str(exc)) from None
        finally:
            control.close()

    @staticmethod
    def _rotate(usernames: list[str]) -> dict[str, str]:
        tokens = {}
        for username in usernames:
            login = acl.parse_username(username)
            device = Device.objects.get(tenant_id=login.tenant_id, device_id=login.device_id)
            tokens[username] = device_rotate_token(device=device)
        return tokens
