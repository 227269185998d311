"""Per-device rate limit on the device HTTP API (DEVICE_RATE_LIMIT / DEVICE_RATE_BURST)."""

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from devices import throttling
from devices.throttling import DeviceRateThrottle, parse_rate, reset_device_rate_limits
from iotcloud.testing import device_client

SHADOW = "/device/v1/shadow"


@pytest.fixture(autouse=True)
def fresh_limits():
    """Every test starts and ends with empty buckets (conftest.py also clears them before each test)."""
    reset_device_rate_limits()
    yield
    reset_device_rate_limits()


class Clock:
    """Replaces the throttle's timer: time stands still unless the test moves it."""

    def __init__(self, monkeypatch, start=1_800_000_000.0):
        self.now = start
        monkeypatch.setattr(DeviceRateThrottle, "timer", staticmethod(lambda: self.now))

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


def hit(api, n):
    return [api.get(SHADOW).status_code for _ in range(n)]


@override_settings(DEVICE_RATE_LIMIT="5/s", DEVICE_RATE_BURST=0)
def test_429_after_the_limit_with_retry_after_and_error_body(device_api, clock):
    assert hit(device_api, 5) == [200] * 5
    response = device_api.get(SHADOW, expect=429)
    retry_after = response["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    body = response.json()
    assert body["code"] == "rate_limited"
    assert "5 requests per second per device" in body["detail"]
    assert body["limit"] == "5/s" and body["burst"] == 5 and body["retry_after"] == int(retry_after)
    # The report and jobs endpoints share the device's bucket.
    device_api.post("/device/v1/shadow/reported", {"reported": {}, "version": 0}, expect=429)
    device_api.get("/device/v1/jobs/pending", expect=429)


@override_settings(DEVICE_RATE_LIMIT="5/s")
def test_another_device_is_not_affected(tenant, make_device, clock):
    noisy = device_client(make_device(tenant, "noisy"))
    quiet = device_client(make_device(tenant, "quiet"))
    hit(noisy, 5)
    noisy.get(SHADOW, expect=429)
    assert hit(quiet, 5) == [200] * 5
    noisy.get(SHADOW, expect=429)


@override_settings(DEVICE_RATE_LIMIT="5/s")
def test_tokens_come_back_with_time(device_api, clock):
    hit(device_api, 5)
    device_api.get(SHADOW, expect=429)
    clock.advance(0.2)  # one request's worth (1/5 s)
    device_api.get(SHADOW, expect=200)
    device_api.get(SHADOW, expect=429)
    clock.advance(1.0)  # a whole window: the full burst again
    assert hit(device_api, 5) == [200] * 5
    device_api.get(SHADOW, expect=429)


@override_settings(DEVICE_RATE_LIMIT="5/s")
def test_requests_at_the_rate_are_never_limited(device_api, clock):
    for _ in range(30):
        device_api.get(SHADOW, expect=200)
        clock.advance(0.2)


@override_settings(DEVICE_RATE_LIMIT="2/m", DEVICE_RATE_BURST=3)
def test_burst_and_retry_after_in_whole_seconds(device_api, clock):
    assert hit(device_api, 4) == [200, 200, 200, 429]
    response = device_api.get(SHADOW, expect=429)
    assert response["Retry-After"] == "30"  # one token every 30 s
    assert "2 requests per minute per device (burst 3)" in response.json()["detail"]
    clock.advance(29.5)
    assert device_api.get(SHADOW, expect=429)["Retry-After"] == "1"
    clock.advance(0.5)
    device_api.get(SHADOW, expect=200)


@pytest.mark.parametrize("setting", ["", "0", "0/s"])
def test_disabled(device_api, clock, setting):
    with override_settings(DEVICE_RATE_LIMIT=setting):
        assert hit(device_api, 50) == [200] * 50


@override_settings(DEVICE_RATE_LIMIT="1/s")
def test_unauthenticated_and_operator_requests_are_not_counted(device_api, operator, device, clock):
    for _ in range(5):
        operator.get(f"/customer/devices/{device.device_id}/twin", expect=200)
    device_api.client.credentials(HTTP_X_PROVISION_TOKEN="wrong")
    for _ in range(3):
        device_api.get(SHADOW, expect=401)
    device_api.client.credentials(HTTP_X_PROVISION_TOKEN=device.token)
    device_api.get(SHADOW, expect=200)
    device_api.get(SHADOW, expect=429)


@override_settings(DEVICE_RATE_LIMIT="1/s")
def test_cache_down_lets_requests_through(device_api, clock, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(throttling, "_take", broken)
    assert hit(device_api, 3) == [200] * 3


def test_parse_rate():
    assert parse_rate("20/s").interval_us == 50_000
    assert parse_rate("20/s").burst == 20
    assert parse_rate("600/m", 50).burst == 50
    assert parse_rate("100/10s").period_seconds == 10
    assert parse_rate("3/hour").describe() == "3 requests per hour per device (burst 3)"
    assert parse_rate("5/2m").describe() == "5 requests per 2 minutes per device (burst 5)"
    assert parse_rate("") is None and parse_rate(None) is None and parse_rate("0") is None
    with pytest.raises(ImproperlyConfigured, match="DEVICE_RATE_LIMIT"):
        parse_rate("fast")


@override_settings(DEVICE_RATE_LIMIT="1/s")
def test_reset_forgets_the_buckets_and_nothing_else(device_api, clock):
    cache = caches["default"]
    cache.set("unrelated", 1)
    device_api.get(SHADOW, expect=200)
    device_api.get(SHADOW, expect=429)
    reset_device_rate_limits()
    device_api.get(SHADOW, expect=200)
    if isinstance(cache, RedisCache):  # the local-memory cache holds nothing else and is cleared whole
        assert cache.get("unrelated") == 1
    cache.delete("unrelated")


def test_local_buckets_keep_each_keys_order_and_refill():
    """The bridge's batch form of the bucket (MQTT reports)."""
    rate, buckets = parse_rate("3/m"), throttling.LocalBuckets()
    now = 1_800_000_000 * throttling.MICROS
    keys = ["a", "b", "a", "a", "a", "b"]
    assert buckets.take_many(keys, rate, now=now) == [True, True, True, True, False, True]
    assert buckets.take_many(["a", "b", "b"], rate, now=now) == [False, True, False]
    later = now + 20 * throttling.MICROS  # one token back per 20 s
    assert buckets.take_many(["a", "a"], rate, now=later) == [True, False]
    assert buckets.take_many([], rate) == []
