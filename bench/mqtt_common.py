"""Shared parts of the MQTT benchmarks: a fresh database, a private Mosquitto, a bridge process, output.

The benchmarks run the real pieces as separate processes (Mosquitto, `manage.py
mqtt_bridge`, PostgreSQL) on loopback, like production on one box.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/iotcloud_bench_mqtt"

# Broker limits sized for a bridge that must not lose reports: the default
# max_queued_messages (1000) would drop QoS 1 messages under a burst.
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def django_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback, as behind a TLS proxy
        "SECRET_KEY": "bench-only-secret-key",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "METRICS_TOKEN": "bench-only-metrics-token",  # required when DEBUG is off
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def setup_django(database_url: str) -> None:
    os.environ.update(django_env(database_url))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()


def recreate_database(database_url: str) -> None:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", admin, "-q", "-c", sql], check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=django_env(database_url), check=True
    )


def seed_devices(count: int, tenant_id: str = "bench") -> list[str]:
    """Bulk-create devices (the columns device_provision leaves); returns device ids."""
    from django.db import connection

    from devices.models import Device
    from devices.services import tenant_create
    from devices.tokens import hash_token, new_provision_token

    tenant = tenant_create(tenant_id=tenant_id)
    ids = [f"dev-{n:05d}" for n in range(count)]
    Device.objects.bulk_create(
        [Device(tenant=tenant, device_id=i, provision_token_hash=hash_token(new_provision_token())) for i in ids],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE device_state")
    return ids


class Mosquitto:
    def __init__(self):
        if not shutil.which("mosquitto"):
            raise SystemExit("mosquitto is not installed (apt-get install -y mosquitto)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
        (self.dir / "mosquitto.conf").write_text(MOSQUITTO_CONF.format(port=self.port))
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")])
        wait_port(self.port)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class BridgeProcess:
    def __init__(self, database_url: str, mqtt_url: str, **settings: str):
        self.log_path = Path(tempfile.mkstemp(prefix="bench-bridge-", suffix=".log")[1])
        env = django_env(database_url, MQTT_URL=mqtt_url, MQTT_CLIENT_ID="bench-bridge", LOG_LEVEL="INFO", **settings)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "mqtt_bridge"], cwd=REPO, env=env,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while b"connected to" not in self.log_path.read_bytes():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"bridge did not connect:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(30)
        return self.log_path.read_text(errors="replace")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
