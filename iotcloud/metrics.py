"""Prometheus metrics: per-request HTTP metrics (middleware) and database gauges read at scrape time.

HTTP counters live in this process. Under gunicorn with several workers, set
PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped at each start) before the
workers start: prometheus_client then keeps the values in per-process files
and a scrape of any worker sums every worker's, so totals are right whichever
worker Prometheus reaches. Without it each process reports its own counters
(fine for one process: `manage.py web`, runserver, tests).

Fleet figures (devices, job executions, delivery backlog, the bridges'
counters from their heartbeat rows) are read from the database at scrape
time by DatabaseCollector, so they are the same from every worker and cost
nothing between scrapes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from asgiref.sync import iscoroutinefunction
from django.urls import Resolver404, resolve
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from jobs.selectors import execution_counts
from mqtt_bridge import selectors as delivery_selectors
from twin.selectors import fleet_device_counts

logger = logging.getLogger(__name__)

# Anything else (a scanner's invented verbs) is counted as "other": labels must stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"

HTTP_REQUESTS = Counter(
    "iotcloud_http_requests",
    "HTTP responses by method, route (URL pattern, not path) and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "iotcloud_http_request_duration_seconds",
    "Time from the request entering Django to the response leaving it, by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


# --- per-request --------------------------------------------------------------------


def route_label(request, status: int) -> str:
    """The URL pattern that served the request ("/customer/devices/<str:device_id>/twin"), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None and status != 404:
        # Answered by a middleware before URL resolution (a redirect, a 429): resolve now.
        # 404s are skipped: resolving an unknown path again only costs time.
        try:
            match = resolve(request.path_info)
        except Resolver404:
            match = None
    if match is None:
        return UNMATCHED
    return "/" + (match.route or match.view_name or "")


def observe(request, status: int, seconds: float) -> None:
    route = route_label(request, status)
    method = request.method if request.method in METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(route).observe(seconds)


@sync_and_async_middleware
def metrics_middleware(get_response):
    """Count and time every response (first in MIDDLEWARE); works under WSGI and ASGI without a thread hop."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            start = time.perf_counter()
            response = await get_response(request)
            observe(request, response.status_code, time.perf_counter() - start)
            return response

    else:

        def middleware(request):
            start = time.perf_counter()
            response = get_response(request)
            observe(request, response.status_code, time.perf_counter() - start)
            return response

    return middleware


# --- scrape time ----------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _ProcessRegistry:
    """This process's own metrics (the default registry), as one collector of the scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class DatabaseCollector:
    """Fleet gauges and the bridges' counters, read with a handful of aggregate queries per scrape.

    client_ids=False (an unauthenticated scrape, METRICS_PUBLIC): each bridge is labelled with a
    pseudonym instead of its MQTT client id.
    """

    def __init__(self, client_ids: bool = True):
        self.client_ids = client_ids

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            snapshot = fleet_snapshot()
        except Exception as exc:  # a database outage must not turn the whole scrape into a 500
            logger.warning("metrics: database figures unavailable: %s", exc)
            yield _gauge("iotcloud_metrics_database_up", "1 when the database figures below could be read.", 0)
            return
        yield _gauge("iotcloud_metrics_database_up", "1 when the database figures below could be read.", 1)
        yield from _fleet_metrics(snapshot, self.client_ids)
        yield _gauge(
            "iotcloud_metrics_database_seconds", "Time the database figures of this scrape took.",
            time.perf_counter() - start,
        )  # fmt: skip


@dataclass(frozen=True)
class FleetSnapshot:
    devices_by_status: dict[str, int]
    devices_by_sync_status: dict[str, int]  # active devices only
    executions_by_status: dict[str, int]
    backlog: delivery_selectors.Backlog
    bridges: list


def fleet_snapshot() -> FleetSnapshot:
    """Four aggregate queries: devices (by status and sync status at once), executions, backlog, heartbeats."""
    now = timezone.now()
    devices_by_status, devices_by_sync_status = fleet_device_counts(now=now)
    return FleetSnapshot(
        devices_by_status=devices_by_status,
        devices_by_sync_status=devices_by_sync_status,
        executions_by_status=execution_counts(),
        backlog=delivery_selectors.delivery_backlog(now),
        bridges=delivery_selectors.bridge_heartbeats(),
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _fleet_metrics(snapshot, client_ids: bool = True) -> Iterator[Metric]:
    devices = GaugeMetricFamily("iotcloud_devices", "Devices by status.", labels=["status"])
    for status, count in sorted(snapshot.devices_by_status.items()):
        devices.add_metric([status], count)
    yield devices
    sync = GaugeMetricFamily("iotcloud_devices_sync", "Active devices by twin sync status.", labels=["sync_status"])
    for status, count in sorted(snapshot.devices_by_sync_status.items()):
        sync.add_metric([status], count)
    yield sync
    executions = GaugeMetricFamily("iotcloud_job_executions", "Job executions by status.", labels=["status"])
    for status, count in sorted(snapshot.executions_by_status.items()):
        executions.add_metric([status], count)
    yield executions
    backlog = snapshot.backlog
    yield _gauge(
        "iotcloud_desired_backlog", "Active devices whose desired version is not yet published to the broker.",
        backlog.count,
    )  # fmt: skip
    yield _gauge(
        "iotcloud_desired_oldest_undelivered_seconds",
        "Age of the oldest desired change not yet published (0 when none).",
        backlog.oldest_age_seconds or 0.0,
    )
    yield from _bridge_metrics(snapshot.bridges, client_ids)


# Heartbeat stats key -> (metric name, help).
BRIDGE_COUNTERS = {
    "received": ("iotcloud_bridge_reports_received", "MQTT reports the bridge received since it started."),
    "accepted": ("iotcloud_bridge_reports_ingested", "Reports the bridge wrote to the database since it started."),
    "rejected": ("iotcloud_bridge_reports_rejected", "Reports the bridge rejected since it started."),
    "published": ("iotcloud_bridge_desired_published", "Desired/jobs publications the broker acknowledged."),
    "events": (
        "iotcloud_bridge_shadow_events_published",
        "Shadow update/documents and update/delta messages the broker acknowledged.",
    ),
    "rate_limited": (
        "iotcloud_bridge_reports_rate_limited",
        "Reports dropped over a device's MQTT_REPORT_RATE_LIMIT (in rejected).",
    ),
    "retained": (
        "iotcloud_bridge_reports_retained",
        "Retained reports refused and cleared from the broker (in rejected).",
    ),
    "full_republishes": (
        "iotcloud_bridge_full_republishes",
        "Times the broker had lost state (no session, canary missing or gone back) and every device's "
        "retained state was marked for republishing.",
    ),
    "anti_entropy": (
        "iotcloud_bridge_anti_entropy_resent",
        "Retained desired messages re-sent by the periodic anti-entropy pass.",
    ),
}


def bridge_pseudonym(client_id: str) -> str:
    """A stable label for a bridge that does not reveal its client id (HMAC keyed by SECRET_KEY)."""
    return "bridge-" + salted_hmac("iotcloud.metrics.bridge", client_id, algorithm="sha256").hexdigest()[:12]


def _bridge_metrics(bridges, client_ids: bool = True) -> Iterator[Metric]:
    now = timezone.now()
    counters = {
        key: CounterMetricFamily(name, text, labels=["client_id"]) for key, (name, text) in BRIDGE_COUNTERS.items()
    }
    age = GaugeMetricFamily(
        "iotcloud_bridge_heartbeat_age_seconds", "Seconds since the bridge's last heartbeat.", labels=["client_id"]
    )
    connected = GaugeMetricFamily(
        "iotcloud_bridge_connected", "1 when the bridge was connected to the broker at its last beat.",
        labels=["client_id"],
    )  # fmt: skip
    started = GaugeMetricFamily(
        "iotcloud_bridge_start_time_seconds", "When the bridge started (counters reset then).", labels=["client_id"]
    )
    for bridge in bridges:
        labels = [bridge.client_id if client_ids else bridge_pseudonym(bridge.client_id)]
        for key, family in counters.items():
            family.add_metric(labels, float((bridge.stats or {}).get(key, 0)))
        age.add_metric(labels, (now - bridge.last_beat_at).total_seconds())
        connected.add_metric(labels, 1.0 if bridge.connected else 0.0)
        started.add_metric(labels, bridge.started_at.timestamp())
    yield from counters.values()
    yield from (age, connected, started)


def scrape_registry(client_ids: bool = True) -> CollectorRegistry:
    """A registry for one scrape: every worker's HTTP metrics (or this process's) plus the database figures."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessRegistry())
    registry.register(DatabaseCollector(client_ids))
    return registry


def render(client_ids: bool = True) -> bytes:
    """The Prometheus text exposition of all metrics (client_ids=False: bridges under pseudonyms)."""
    return generate_latest(scrape_registry(client_ids))
