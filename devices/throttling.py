"""Per-device request limits on the device HTTP API (AWS IoT allows 20 requests/s per thing).

`DEVICE_RATE_LIMIT` ("20/s", "600/m", "100/10s"; empty or "0" turns it off) with a burst of
`DEVICE_RATE_BURST` requests (0: as many as the rate's count). A token bucket kept as one number
per device (GCRA: the time at which the device's bucket is next empty), whatever the rate. With
REDIS_URL the default cache is Redis and the check is one atomic Lua script (one round trip; the
limit holds across workers and hosts); otherwise it is a get and a set in the local-memory cache,
so each worker process counts on its own.

Over the limit: 429 with Retry-After (whole seconds, at least 1) and the usual error body naming
the limit. If the cache is unreachable the request is let through (logged): a rate limit is not a
reason to take the device API down.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from iotcloud.rules import RATE_RE

logger = logging.getLogger(__name__)

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

    def describe(self, noun: str = "request") -> str:
        unit = next(u for u in ("d", "h", "m", "s") if self.period_seconds % UNIT_SECONDS[u] == 0)
        count = self.period_seconds // UNIT_SECONDS[unit]
        per = UNIT_WORDS[unit] if count == 1 else f"{count} {UNIT_WORDS[unit]}s"
        requests = f"{self.requests} {noun}{'' if self.requests == 1 else 's'}"
        return f"{requests} per {per} per device (burst {self.burst})"


@lru_cache(maxsize=16)
def parse_rate(
    text: str | None, burst: int = 0, name: str = "DEVICE_RATE_LIMIT", burst_name: str = "DEVICE_RATE_BURST"
) -> Rate | None:
    """ "20/s" -> Rate; None, "" or "0" -> None (no limit). `name`, `burst_name`: the settings, for the errors."""
    text = (text or "").strip().replace(" ", "")
    if text in ("", "0"):
        return None
    match = RATE_RE.match(text)
    if not match:
        raise ImproperlyConfigured(
            f'{name} must look like "20/s", "600/m" or "100/10s" (empty or "0": no limit), got {text!r}'
        )
    requests = int(match[1])
    if requests == 0:
        return None
    period = int(match[2] or 1) * UNIT_SECONDS[match[3][0].lower()]
    if period == 0:
        raise ImproperlyConfigured(f"{name} has a zero period: {text!r}")
    if burst < 0:
        raise ImproperlyConfigured(f"{burst_name} must be 0 (the rate's count) or more, got {burst}")
    return Rate(text=text, requests=requests, period_seconds=period, burst=burst or requests)


def device_rate() -> Rate | None:
    return parse_rate(settings.DEVICE_RATE_LIMIT, settings.DEVICE_RATE_BURST)


def mqtt_report_rate() -> Rate | None:
    return parse_rate(
        settings.MQTT_REPORT_RATE_LIMIT,
        settings.MQTT_REPORT_RATE_BURST,
        name="MQTT_REPORT_RATE_LIMIT",
        burst_name="MQTT_REPORT_RATE_BURST",
    )


def cache_key(device_pk) -> str:
    return f"throttle:device:{device_pk}"


# KEYS[1] the device's key; ARGV: now, interval, allowance (microseconds). Returns 0 when the
# request is admitted (and recorded), else how far over the allowance it is (microseconds).
TAKE_LUA = """
local now, interval, allowance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local empty_at = tonumber(redis.call('GET', KEYS[1]) or now)
if empty_at < now then empty_at = now end
local arrival = empty_at + interval
if arrival - now > allowance then return string.format('%.0f', arrival - now - allowance) end
redis.call('SET', KEYS[1], string.format('%.0f', arrival), 'PX', math.ceil((arrival - now) / 1000) + 1000)
return 0
"""


@lru_cache(maxsize=4)
def _redis_take(location: str):
    """The Lua script on a client of the cache's (first) Redis server; one per process."""
    server = re.split("[;,]", location)[0]
    client = redis.Redis.from_url(server, socket_connect_timeout=1, socket_timeout=1)
    return client.register_script(TAKE_LUA)


def _take(cache, alias: str, key: str, now: int, rate: Rate) -> int:
    """Record a request at `now` unless over the limit; returns microseconds over (0: admitted)."""
    interval, allowance = rate.interval_us, rate.interval_us * rate.burst
    if isinstance(cache, RedisCache):
        location = settings.CACHES[alias]["LOCATION"]
        take = _redis_take(location if isinstance(location, str) else ",".join(location))
        return int(take(keys=[cache.make_key(key)], args=[now, interval, allowance]))
    arrival = max(cache.get(key) or now, now) + interval  # when the bucket is next empty
    if arrival - now > allowance:
        return arrival - now - allowance
    cache.set(key, arrival, timeout=math.ceil((arrival - now) / MICROS) + 1)
    return 0


class LocalBuckets:
    """The same token bucket, for many keys at once, in this process's memory.

    For the MQTT bridge's report limit: a batch of 2,000 reports is checked in 1.3 ms, where one
    Redis script over the batch took 45 ms (both measured here, Redis on the same host): too
    much for the ingest path. Each bridge process counts on its own.
    """

    PRUNE_AT = 100_000  # keys; idle ones (bucket full again) are dropped past this

    def __init__(self):
        self._empty_at: dict[str, int] = {}
        self._lock = threading.Lock()

    def take_many(self, keys: Sequence[str], rate: Rate, *, now: int | None = None) -> list[bool]:
        """One verdict per entry of `keys` (a key may repeat: each entry is one request, in order):
        True if admitted (and recorded), False if over the limit."""
        now = int(time.time() * MICROS) if now is None else now
        interval, allowance = rate.interval_us, rate.interval_us * rate.burst
        verdicts = []
        with self._lock:
            empty_at = self._empty_at
            for key in keys:
                arrival = max(empty_at.get(key, now), now) + interval
                if arrival - now > allowance:
                    verdicts.append(False)
                else:
                    empty_at[key] = arrival
                    verdicts.append(True)
            if len(empty_at) > self.PRUNE_AT:
                self._empty_at = {k: v for k, v in empty_at.items() if v > now}
        return verdicts

    def clear(self) -> None:
        with self._lock:
            self._empty_at = {}


MQTT_REPORT_BUCKETS = LocalBuckets()


_last_warning = 0.0


def _warn_cache_down() -> None:
    global _last_warning
    if time.monotonic() - _last_warning > 60:
        _last_warning = time.monotonic()
        logger.warning("device rate limit skipped: cache unavailable", exc_info=True)


def reset_device_rate_limits() -> None:
    """Forget every device's bucket (tests; an operator after changing the limit). Other cache keys stay."""
    MQTT_REPORT_BUCKETS.clear()
    CLAIM_MQTT_BUCKETS.clear()
    cache = caches[DeviceRateThrottle.cache_alias]
    if not isinstance(cache, RedisCache):
        cache.clear()
        return
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=cache.make_key(cache_key("*")), count=1000))
    if keys:
        client.delete(*keys)


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
        now = int(self.timer() * MICROS)
        try:
            over = _take(caches[self.cache_alias], self.cache_alias, cache_key(device.pk), now, rate)
        except Exception:  # the cache is down: let the request through (logged once a minute)
            _warn_cache_down()
            return True
        if over <= 0:
            return True
        raise RateLimited(rate, max(1, math.ceil(over / MICROS)))

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


# --- claim tokens (fleet provisioning by claim) -------------------------------------------------------


def claim_rate() -> Rate | None:
    return parse_rate(
        settings.CLAIM_RATE_LIMIT, settings.CLAIM_RATE_BURST, name="CLAIM_RATE_LIMIT", burst_name="CLAIM_RATE_BURST"
    )


def claim_cache_key(token_digest: str) -> str:
    return f"throttle:claim:{token_digest}"


CLAIM_MQTT_BUCKETS = LocalBuckets()  # the bridge's registrations, per claim token, in this process


class ClaimRegistrationLimited(RateLimited):
    def __init__(self, rate: Rate, wait: int):
        super().__init__(rate, wait)
        self.detail = exceptions.ErrorDetail(
            f"Rate limit exceeded: {rate.describe('registration').replace('per device', 'per claim')} "
            f"(CLAIM_RATE_LIMIT). Retry in {self.wait} second{'' if self.wait == 1 else 's'}.",
            code=self.default_code,
        )


class ClaimRateThrottle(DeviceRateThrottle):
    """Token bucket per claim token, or per forwarded claim certificate (their digest: the same bucket
    whatever the claim's state), before any lookup."""

    def allow_request(self, request, view) -> bool:
        from devices.authentication import forwarded_certificate
        from devices.tokens import hash_token

        rate = claim_rate()
        token = request.META.get("HTTP_X_CLAIM_TOKEN", "") or forwarded_certificate(request) or ""
        if rate is None or not token or len(token) > 256 * 1024:
            return True
        now = int(self.timer() * MICROS)
        try:
            over = _take(caches[self.cache_alias], self.cache_alias, claim_cache_key(hash_token(token)), now, rate)
        except Exception:  # the cache is down: let the request through (logged once a minute)
            _warn_cache_down()
            return True
        if over <= 0:
            return True
        raise ClaimRegistrationLimited(rate, max(1, math.ceil(over / MICROS)))
