"""python manage.py run_platform — the whole platform in one terminal (what `make run` uses).

Starts, as child processes: the embedded MQTT broker (only when MQTT_URL is
unset), the web server with the MQTT bridge (one process, unless REDIS_URL is
set: then two) and, with --simulate, the device simulator. Output is
prefixed with each child's name. Ctrl-C or SIGTERM stops them all; if one
dies, the others are stopped too.
"""

import json
import os
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from iotcloud.signals import set_on_stop_signals
from mqtt_bridge.config import broker_settings


class Command(BaseCommand):
    help = "Run broker (if embedded), MQTT bridge, web server and optionally the device simulator."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="web server address (host:port)")
        parser.add_argument("--simulate", action="store_true", help="also simulate the demo devices")

    def handle(self, *args, addr, simulate, **options):
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        children = []
        if not settings.MQTT_URL:
            children.append(("broker", [*manage, "mqtt_broker"], "listening"))
        if settings.REDIS_URL:  # events cross processes through Redis
            children.append(("bridge", [*manage, "mqtt_bridge"], "connected to"))
            children.append(("web", [*manage, "web", addr], None))
        else:  # one process, so the in-memory channel layer carries the bridge's events to the browsers
            children.append(("web", [*manage, "web", addr, "--with-bridge"], "connected to"))
        if simulate:
            children.append(("devices", [*manage, "simulate_devices", "--api-url", f"http://{addr}"], None))

        stop = threading.Event()
        set_on_stop_signals(stop)
        processes: list[tuple[str, subprocess.Popen]] = []
        self.stdout.write(f"MQTT broker: {broker_settings()}   web: http://{addr}/   (Ctrl-C stops everything)")
        self.stdout.write(self._login_hint(addr))
        try:
            for name, command, ready_text in children:
                ready = threading.Event()
                process = subprocess.Popen(  # noqa: S603 (our own fixed commands)
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                processes.append((name, process))
                threading.Thread(target=self._pump, args=(name, process, ready, ready_text), daemon=True).start()
                if ready_text and not ready.wait(30):
                    self.stderr.write(f"{name} did not start in 30 s")
                    return
            while not stop.wait(0.5):
                for name, process in processes:
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with {process.returncode}; stopping everything")
                        stop.set()
        finally:
            for _name, process in reversed(processes):
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + 20
            for _name, process in reversed(processes):
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()

    @staticmethod
    def _login_hint(addr: str) -> str:
        demo = settings.VAR_DIR / "demo.json"
        saved = json.loads(demo.read_text()) if demo.exists() else {}
        login = f"{saved['username']} / {saved['password']}" if saved.get("password") else "see `manage.py demo`"
        return f"Operator UI: http://{addr}/admin/   sign in as {login}"

    def _pump(self, name, process, ready, ready_text):
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if ready_text and ready_text in line:
                ready.set()
            self.stdout.write(f"{name:>8} | {line}")
            self.stdout.flush()
