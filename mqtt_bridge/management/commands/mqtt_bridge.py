"""python manage.py mqtt_bridge — publish desired state, ingest reported state.

Wiring only: build the bridge (with --processes N > 1, one that hands its ingestion to N worker
processes: mqtt_bridge.partitions), stop on SIGTERM/SIGINT, exit 0. `--ingest-worker` is how the
bridge starts one of those workers, not a command for people.
"""

import argparse
import gc

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from iotcloud.signals import set_on_stop_signals
from mqtt_bridge.bridge import Bridge
from mqtt_bridge.partitions import default_processes


class Command(BaseCommand):
    help = "Run the MQTT bridge (desired delivery and reported ingestion) until SIGTERM/SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--client-id", help="MQTT client id (default: MQTT_CLIENT_ID); one per bridge instance")
        parser.add_argument("--shared-group", help="subscribe as $share/<group>/... (default: MQTT_SHARED_GROUP)")
        parser.add_argument(
            "--processes", type=int,
            help="ingest worker processes, each device's messages on one of them (default: "
            "MQTT_BRIDGE_PROCESSES; 0: the number of cores with MQTT_URL, 1 with the embedded broker)",
        )  # fmt: skip
        parser.add_argument("--ingest-worker", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--worker-fds", help=argparse.SUPPRESS)
        parser.add_argument("--protocol", type=int, help=argparse.SUPPRESS)

    def handle(self, *args, client_id=None, shared_group=None, processes=None, **options):
        _out_of_the_collectors_way()
        if options["ingest_worker"]:
            from mqtt_bridge.ingest_worker import run_worker

            read_fd, write_fd = (int(fd) for fd in options["worker_fds"].split(","))
            run_worker(read_fd=read_fd, write_fd=write_fd, client_id=client_id, protocol=options["protocol"])
            return
        count = processes if processes is not None else settings.MQTT_BRIDGE_PROCESSES
        count = count or default_processes(bool(settings.MQTT_URL))
        if count < 1:
            raise CommandError("--processes must be 0 (the number of cores) or more")
        bridge = Bridge(client_id=client_id, shared_group=shared_group, processes=count)
        set_on_stop_signals(bridge.stopping)
        bridge.run_forever()


def _out_of_the_collectors_way() -> None:
    # Django, the apps and their modules live as long as the process: out of the collector's way, so
    # that a full collection walks only what the bridge made since (without this, one took 100-180 ms,
    # every request in flight waiting for it; bench/mqtt_shadow_rtt).
    gc.collect()
    gc.freeze()
