"""How the benchmarks run the application: its environment, manage.py, Django in this process.

Production settings (DEBUG off, a metrics token, JSON logs by default) with the
pieces the benchmark chooses: its database, its broker, no Redis unless
BENCH_REDIS_URL is set. Settings a developer's shell or .env might carry
(REDIS_URL, MQTT_URL, ...) are set explicitly, so every run measures the same
configuration.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

from bench.common import REPO, BenchError

MANAGE = str(REPO / "manage.py")


def env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of an application process (gunicorn, the bridge, manage.py, this process)."""
    base = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE")}
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "iotcloud.settings",
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECRET_KEY": os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        "METRICS_TOKEN": secrets.token_urlsafe(32),  # required when DEBUG is off
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback, as behind a TLS proxy
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MQTT_URL": "",
        "MQTT_DEVICE_AUTH": "",  # the private broker is anonymous (no device accounts to sync)
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", ""),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def manage(*args: str, environ: dict[str, str], what: str | None = None) -> float:
    """Run `manage.py <args>`; BenchError with its output when it fails. Returns the seconds it took."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, MANAGE, *args], env=environ, cwd=REPO, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise BenchError(f"{what or 'manage.py ' + args[0]} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    return time.monotonic() - started


def setup_django(database_url: str, **extra: str) -> None:
    """Configure Django in this process as an application process (for seeding and in-process work)."""
    os.environ.update(env(database_url, **extra))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def close_connections() -> None:
    """Close this process's Django connections (before its database is dropped, or servers take over)."""
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()
