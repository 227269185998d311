"""python manage.py web — the web server (daphne: HTTP + the operator websocket).

With --with-bridge the MQTT bridge runs in the same process, so live updates
from device reports reach operator screens through the in-memory channel
layer: the zero-setup `make run` needs no Redis. With REDIS_URL set, run
`web` and `mqtt_bridge` as separate processes (as many as you like) instead.
"""

from django.core.management import call_command
from django.core.management.base import BaseCommand

from mqtt_bridge.bridge import Bridge


class Command(BaseCommand):
    help = "Run the web server (ASGI: HTTP and websockets), optionally with the MQTT bridge in-process."

    def add_arguments(self, parser):
        parser.add_argument("addr", nargs="?", default="127.0.0.1:8000", help="host:port")
        parser.add_argument("--with-bridge", action="store_true", help="also run the MQTT bridge in this process")

    def handle(self, *args, addr, with_bridge, **options):
        bridge = Bridge() if with_bridge else None
        if bridge is not None:
            bridge.start()
        try:
            # daphne's runserver (daphne is first in INSTALLED_APPS); it stops on SIGINT/SIGTERM.
            call_command("runserver", addr, use_reloader=False)
        finally:
            if bridge is not None:
                bridge.stop()
