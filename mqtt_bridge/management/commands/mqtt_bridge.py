"""python manage.py mqtt_bridge — publish desired state, ingest reported state.

Wiring only: build the bridge (or, with --processes N > 1, supervise N of them: mqtt_bridge.processes),
stop on SIGTERM/SIGINT, exit 0.
"""

import gc
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.processes import DEFAULT_GROUP, Supervisor, default_processes


class Command(BaseCommand):
    help = "Run the MQTT bridge (desired delivery and reported ingestion) until SIGTERM/SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--client-id", help="MQTT client id (default: MQTT_CLIENT_ID); one per bridge instance")
        parser.add_argument("--shared-group", help="subscribe as $share/<group>/... (default: MQTT_SHARED_GROUP)")
        parser.add_argument(
            "--processes", type=int,
            help="bridge processes sharing the load (default: MQTT_BRIDGE_PROCESSES, 1; 0: the number of "
            "cores with MQTT_URL, 1 with the embedded broker)",
        )  # fmt: skip

    def handle(self, *args, client_id=None, shared_group=None, processes=None, **options):
        count = processes if processes is not None else settings.MQTT_BRIDGE_PROCESSES
        count = count or default_processes(bool(settings.MQTT_URL))
        if count < 1:
            raise CommandError("--processes must be 1 or more")
        if count > 1:
            group = shared_group or settings.MQTT_SHARED_GROUP or DEFAULT_GROUP
            supervisor = Supervisor(count, client_id=client_id or settings.MQTT_CLIENT_ID, shared_group=group)
            signal.signal(signal.SIGTERM, supervisor.request_stop)
            signal.signal(signal.SIGINT, supervisor.request_stop)
            raise SystemExit(supervisor.run())
        bridge = Bridge(client_id=client_id, shared_group=shared_group)
        # Django, the apps and their modules live as long as the process: out of the collector's way, so
        # that a full collection walks only what the bridge made since (without this, one took 100-180 ms,
        # every request in flight waiting for it; bench/mqtt_shadow_rtt).
        gc.collect()
        gc.freeze()

        def request_stop(signum, frame):
            bridge.stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        bridge.run_forever()
