"""Per-device request limits on the device HTTP API (AWS IoT allows 20 requests/s per thing).

`DEVICE_RATE_LIMIT` ("20/s", "600/m", "100/10s"; empty or "0" turns it off) with a burst of
`DEVICE_RATE_BURST` requests (0: as many as the rate's count). A token bucket kept as one number
per device in the Django cache (GCRA: the "theoretical arrival time" of the next request), so a
request costs one cache get and one set, whatever the rate. The cache is Redis when REDIS_URL is
set (limits hold across workers and hosts), else local memory (each worker process counts on its
own). Two workers reading a device's entry at the same instant may both admit a request: the limit
can be exceeded by the number of concurrent requests of one device, never more.

Over the limit: 429 with Retry-After (whole seconds, at least 1) and the usual error body naming
the limit. If the cache is unreachable the request is let through (logged): a rate limit is not a
reason to take the device API down.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

RATE_RE = re.compile(r"^(\d+)/(\d*)(s|sec|second|m|min|minute|h|hour|d|day)s?$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
MICROS = 1_000_000


@dataclass(frozen=True)
class Rate:
    text: str  # as configured, e.g. "20/s"
    requests: int
    period_seconds: int
    burst: int

    @property
    def interval_us(self) -> int:
        """Time one request's token takes to come back (microseconds)."""
        return max(1, self.period_seconds * MICROS // self.requests)

    def describe(self) -> str:
        unit = next(u for u in ("d", "h", "m", "s") if self.period_seconds % UNIT_SECONDS[u] == 0)
        count = self.period_seconds // UNIT_SECONDS[unit]
        per = UNIT_WORDS[unit] if count == 1 else f"{count} {UNIT_WORDS[unit]}s"
        return f"{self.requests} requests per {per} per device (burst {self.burst})"


@lru_cache(maxsize=16)
def parse_rate(text: str | None, burst: int = 0) -> Rate | None:
    """ "20/s" -> Rate; None, "" or "0" -> None (no limit)."""
    text = (text or "").strip().replace(" ", "")
    if text in ("", "0"):
        return None
    match = RATE_RE.match(text)
    if not match:
        raise ImproperlyConfigured(
            f'DEVICE_RATE_LIMIT must look like "20/s", "600/m" or "100/10s" (empty or "0": no limit), got {text!r}'
        )
    requests = int(match[1])
    if requests == 0:
        return None
    period = int(match[2] or 1) * UNIT_SECONDS[match[3][0].lower()]
    if period == 0:
        raise ImproperlyConfigured(f"DEVICE_RATE_LIMIT has a zero period: {text!r}")
    if burst < 0:
        raise ImproperlyConfigured(f"DEVICE_RATE_BURST must be 0 (the rate's count) or more, got {burst}")
    return Rate(text=text, requests=requests, period_seconds=period, burst=burst or requests)


def device_rate() -> Rate | None:
    return parse_rate(settings.DEVICE_RATE_LIMIT, settings.DEVICE_RATE_BURST)


def cache_key(device_pk) -> str:
    return f"throttle:device:{device_pk}"


class RateLimited(exceptions.Throttled):
    default_code = "rate_limited"
    extra_detail_singular = "Retry in {wait} second."
    extra_detail_plural = "Retry in {wait} seconds."

    def __init__(self, rate: Rate, wait: int):
        super().__init__(wait=wait, detail=f"Rate limit exceeded: {rate.describe()}.")
        # Added to the error body by RateLimitedViewMixin (the handler keeps only detail and code).
        self.extra = {"limit": rate.text, "burst": rate.burst, "retry_after": self.wait}


class DeviceRateThrottle(BaseThrottle):
    """Token bucket per authenticated device (request.user.device), in the default cache."""

    cache_alias = "default"
    timer = staticmethod(time.time)

    def allow_request(self, request, view) -> bool:
        rate = device_rate()
        device = getattr(request.user, "device", None)
        if rate is None or device is None:
            return True
        key = cache_key(device.pk)
        now = int(self.timer() * MICROS)
        interval, allowance = rate.interval_us, rate.interval_us * rate.burst
        try:
            cache = caches[self.cache_alias]
            arrival = max(cache.get(key) or now, now) + interval  # when the bucket is next empty
            if arrival - now <= allowance:
                cache.set(key, arrival, timeout=math.ceil((arrival - now) / MICROS) + 1)
                return True
        except Exception:  # the cache is down: let the request through, say so
            logger.warning("device rate limit skipped: cache unavailable", exc_info=True)
            return True
        wait = max(1, math.ceil((arrival - now - allowance) / MICROS))
        raise RateLimited(rate, wait)

    def wait(self):  # allow_request raises instead of returning False
        return None


class RateLimitedViewMixin:
    """For device views: the per-device limit, and its details ("limit", "burst", "retry_after") in the 429 body."""

    throttle_classes = [DeviceRateThrottle]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(exc, RateLimited) and isinstance(response.data, dict):
            response.data.update(exc.extra)
        return response
