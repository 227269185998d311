"""`manage.py mqtt_broker`: the embedded MQTT broker in the foreground, until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mqtt_bridge.dev_tls import DEFAULT_HOSTS, ensure_dev_tls
from mqtt_bridge.embedded import EmbeddedBroker, embedded_credentials

logger = logging.getLogger("mqtt_bridge.embedded")


class Command(BaseCommand):
    help = (
        "Run the embedded MQTT broker (used when MQTT_URL is empty). The bridge logs in with "
        "EMBEDDED_MQTT_USER/EMBEDDED_MQTT_PASSWORD (default: derived from SECRET_KEY); devices log in "
        "as <tenant_id>/<device_id> with their provision token."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=getattr(settings, "EMBEDDED_MQTT_HOST", "") or "127.0.0.1")
        parser.add_argument("--port", type=int, default=None, help="default: EMBEDDED_MQTT_PORT (1884)")
        parser.add_argument(
            "--persistence-path",
            default=None,
            help="SQLite file keeping retained messages across restarts (default: var/mqtt-broker.sqlite3)",
        )
        parser.add_argument("--no-persistence", action="store_true", help="keep retained messages in memory only")
        parser.add_argument("--tls-port", type=int, default=None,
                            help="MQTT over TLS there too, with the development certificate of MQTT_TLS_DIR "
                                 "(made if missing: manage.py tls_dev_ca); default EMBEDDED_MQTT_TLS_PORT "
                                 "(8884), 0: none")  # fmt: skip

    def handle(self, *args, host, port, persistence_path, no_persistence, tls_port, **options):
        username, password, default_port = embedded_credentials()
        port = port or default_port
        tls_port = settings.EMBEDDED_MQTT_TLS_PORT if tls_port is None else tls_port
        tls_files = None
        if tls_port:
            tls, _ = ensure_dev_tls(Path(settings.MQTT_TLS_DIR), [host, *DEFAULT_HOSTS])
            tls_files = (tls.cert_file, tls.key_file)
        path = None
        if not no_persistence:
            var = Path(getattr(settings, "VAR_DIR", Path(settings.BASE_DIR) / "var"))
            path = Path(persistence_path) if persistence_path else var / "mqtt-broker.sqlite3"
        broker = EmbeddedBroker(
            host=host,
            port=port,
            service_users={username: password},
            persistence_path=path,
            session_expiry=getattr(settings, "MQTT_SESSION_EXPIRY_SECONDS", 7 * 24 * 3600),
            tls_port=tls_port or None,
            tls_files=tls_files,
        )

        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            try:
                broker.start()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from exc
            logger.info(
                "embedded MQTT broker listening on %s%s (service account %r, devices: <tenant_id>/<device_id> + "
                "provision token, retained messages %s)",
                broker.url, f" and mqtts://{host}:{tls_port} (CA: {tls.ca_file})" if tls_port else "", username,
                f"kept in {path}" if path else "in memory",
            )  # fmt: skip
            while not stop.wait(0.5):
                if not broker.is_running:
                    raise CommandError("the embedded MQTT broker stopped unexpectedly")
        finally:
            broker.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("embedded MQTT broker on %s stopped", broker.url)
