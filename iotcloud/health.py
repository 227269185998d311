"""Readiness checks (/readyz): database, MQTT broker, bridge heartbeat, desired-delivery backlog.

Each check returns a CheckResult naming what is wrong; readiness() runs them
all and is ready when every *required* check passed. The views only render
the result. The broker check is a bare TCP connect, cached for a couple of
seconds, so a storm of probes from many load balancers does not become a
storm of connections to the broker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from mqtt_bridge import selectors as delivery_selectors
from mqtt_bridge.config import broker_settings

logger = logging.getLogger(__name__)

# How long one TCP probe result of the broker is reused (per process).
BROKER_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str
    # False: reported, but does not make the service unready.
    required: bool = True
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        status = "ok" if self.ok else "failed"
        return {"status": status, "required": self.required, "reason": self.reason, **self.details}


@dataclass(frozen=True)
class Readiness:
    checks: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok or not check.required for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.ok and check.required]

    def summary(self) -> dict:
        """What anyone may see: the verdict and the names of the failed checks (no counts, ids or addresses)."""
        return {"status": "ok" if self.ready else "unavailable", "failed": self.failed}

    def as_dict(self) -> dict:
        """The full detail, for operators (the metrics token): every check with its reason and figures."""
        return {**self.summary(), "checks": {check.name: check.as_dict() for check in self.checks}}


# --- checks -------------------------------------------------------------------------------


def readiness() -> Readiness:
    """Run every check; the database-backed ones are not attempted when the database is down."""
    database = check_database()
    checks = [database, check_broker()]
    if database.ok:
        checks += [check_bridge(), check_delivery()]
    else:
        checks += [
            CheckResult("bridge", False, "not checked: database unavailable", required=settings.READY_REQUIRE_BRIDGE),
            CheckResult("delivery", False, "not checked: database unavailable"),
        ]
    result = Readiness(tuple(checks))
    _log_change(result)
    return result


_last_failed: list[str] | None = None


def _log_change(result: Readiness) -> None:
    """Log when this process's verdict changes, not on every probe."""
    global _last_failed
    failed = result.failed
    if failed == _last_failed:
        return
    _last_failed = failed
    if failed:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in result.checks if c.name in failed)
        logger.warning("not ready: %s", reasons)
    else:
        logger.info("ready")


def _database():
    """The connection the database check uses (tests swap in one to an unreachable server)."""
    return connections[DEFAULT_DB_ALIAS]


def check_database() -> CheckResult:
    db = _database()
    start = time.perf_counter()
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not ready"; say which
        return CheckResult("database", False, f"{db.vendor} did not answer SELECT 1: {_one_line(exc)}")
    ms = (time.perf_counter() - start) * 1000
    return CheckResult("database", True, f"{db.vendor} answered SELECT 1 in {ms:.1f} ms")


_broker_cache: dict[tuple[str, int], tuple[float, CheckResult]] = {}
_broker_lock = threading.Lock()


def clear_broker_cache() -> None:
    with _broker_lock:
        _broker_cache.clear()


def check_broker() -> CheckResult:
    """TCP connect to the configured broker (MQTT_URL, else the embedded broker), reused for BROKER_CACHE_SECONDS."""
    try:
        broker = broker_settings()
    except ImproperlyConfigured as exc:
        return CheckResult("broker", False, f"broker settings are invalid: {exc}")
    key = (broker.host, broker.port)
    now = time.monotonic()
    with _broker_lock:
        cached = _broker_cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
    result = _probe_broker(broker.host, broker.port, settings.READY_BROKER_TIMEOUT_SECONDS)
    with _broker_lock:
        _broker_cache[key] = (time.monotonic() + BROKER_CACHE_SECONDS, result)
    return result


def _probe_broker(host: str, port: int, timeout: float) -> CheckResult:
    details = {"host": host, "port": port}
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = f"cannot open a TCP connection to {host}:{port} within {timeout:g} s: {_one_line(exc)}"
        return CheckResult("broker", False, reason, details=details)
    ms = (time.perf_counter() - start) * 1000
    return CheckResult("broker", True, f"TCP connect to {host}:{port} in {ms:.1f} ms", details=details)


def check_bridge(now: datetime | None = None) -> CheckResult:
    """At least one bridge beat within BRIDGE_HEARTBEAT_STALE_SECONDS."""
    now = now or timezone.now()
    stale_after = settings.BRIDGE_HEARTBEAT_STALE_SECONDS
    required = settings.READY_REQUIRE_BRIDGE
    beats = [(beat.client_id, beat.last_beat_at) for beat in delivery_selectors.bridge_heartbeats(limit=50)]
    fresh = [(client_id, (now - beat).total_seconds()) for client_id, beat in beats]
    fresh = [(client_id, age) for client_id, age in fresh if age <= stale_after]
    details = {"bridges": [{"client_id": client_id, "age_seconds": round(age, 1)} for client_id, age in fresh]}
    if fresh:
        return CheckResult("bridge", True, f"{len(fresh)} bridge(s) beat within {stale_after:g} s", required, details)
    if not beats:
        return CheckResult("bridge", False, "no bridge has ever written a heartbeat", required, details)
    client_id, newest = beats[0]
    reason = (
        f"no bridge heartbeat within {stale_after:g} s "
        f"(newest: {client_id}, {(now - newest).total_seconds():.0f} s ago)"
    )
    return CheckResult("bridge", False, reason, required, details)


def check_delivery(now: datetime | None = None) -> CheckResult:
    """Desired changes waiting for the broker; fails when the oldest is older than READY_MAX_DELIVERY_LAG_SECONDS."""
    backlog = delivery_selectors.delivery_backlog(now)
    limit = settings.READY_MAX_DELIVERY_LAG_SECONDS
    age = backlog.oldest_age_seconds
    details = {"backlog": backlog.count, "oldest_age_seconds": None if age is None else round(age, 1)}
    if not backlog.count:
        return CheckResult("delivery", True, "every desired version is published", details=details)
    waiting = f"{backlog.count} device(s) wait for desired delivery, the oldest change {age or 0:.0f} s old"
    if limit and age is not None and age > limit:
        return CheckResult("delivery", False, f"{waiting} (limit {limit:g} s)", details=details)
    return CheckResult("delivery", True, waiting, details=details)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
