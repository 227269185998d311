"""`manage.py broker_crl`: the device CA and its revocation list as files for the broker (devices.certificates).

Mosquitto trusts device certificates through `cafile` (device-ca.crt) and refuses revoked ones
through `crlfile` (device-crl.pem), which it reads again on SIGHUP. Run once, or with --every to
rewrite the list when revocations change (and send SIGHUP to the broker's pid with --signal-pid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from devices.certificates import ca_certificate_pem, revocation_list_pem


class Command(BaseCommand):
    help = "Write the device CA certificate and its revocation list for the broker (device-ca.crt, device-crl.pem)."

    def add_arguments(self, parser):
        parser.add_argument("--dir", required=True, help="where to write device-ca.crt and device-crl.pem")
        parser.add_argument("--every", type=float, default=0, help="keep it current: look again every N seconds")
        parser.add_argument("--signal-pid", type=int, default=None,
                            help="send SIGHUP to this process (the broker) whenever the list changed")  # fmt: skip

    def handle(self, *args, dir, every, signal_pid, **options):
        directory = Path(dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _write(directory / "device-ca.crt", ca_certificate_pem())
        except OSError as exc:
            raise CommandError(f"cannot write in {directory}: {exc}") from exc
        last = None
        while True:
            revoked = _revoked_set()
            if revoked != last:  # a new list (the CRL's own timestamps change every time: compare what it names)
                try:
                    _write(directory / "device-crl.pem", revocation_list_pem())
                except OSError as exc:
                    raise CommandError(f"cannot write in {directory}: {exc}") from exc
                self.stdout.write(f"{directory / 'device-crl.pem'}: {len(revoked)} revoked certificate(s)")
                if signal_pid and last is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(signal_pid, signal.SIGHUP)
                last = revoked
            if not every:
                return
            time.sleep(every)


def _revoked_set() -> frozenset[str]:
    from django.utils import timezone

    from devices.models import DeviceCertificate

    rows = DeviceCertificate.objects.filter(revoked_at__isnull=False, not_after__gt=timezone.now())
    return frozenset(rows.values_list("serial", flat=True))


def _write(path: Path, text: str) -> None:
    """Atomically (a broker reading it mid-write would see half a file), readable by the broker."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
