"""The stock AWS IoT Device SDK v2 for Python, unchanged, against iotcloud (real broker, real database).

Its IotShadowClient and IotJobsClient build the AWS topics and read the answers with their own
models, so these tests check the AWS dialect the way AWS IoT firmware sees it: the topics, the
payload shapes (the SDK hands a callback None when it cannot read a payload), the error codes,
the single document version and the clientToken echo, as the AWS IoT Developer Guide describes
them (Device Shadow service; Jobs device MQTT API). The last test runs examples/aws_sdk_device.py.

The SDK connects as a device does (username and client id `<tenant>/<device>`, the provision
token as password, plain TCP, SDK metrics off so the username stays as written). Skipped when
awscrt cannot be imported (requirements-dev.txt installs it), except with REQUIRE_AWS_SDK=1
(.ci/run): CI must run these.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future
from datetime import datetime

import pytest

from devices.models import Device
from iotcloud.testing import make_operator_client
from jobs.models import Job, JobExecution
from jobs.services import job_create
from mqtt_bridge import topics
from mqtt_bridge.accounts import acl
from mqtt_bridge.tests.conftest import ROOT, TIMEOUT, MqttClient, wait_until
from twin.services import twin_update_desired

if os.environ.get("REQUIRE_AWS_SDK") == "1":
    import awscrt  # noqa: F401  (CI: a missing SDK is a failure, not a skip)
else:
    pytest.importorskip("awscrt", reason="the AWS IoT Device SDK is not installed (requirements-dev.txt has it)")

from awscrt import mqtt
from awsiot import iotjobs, iotshadow

QOS = mqtt.QoS.AT_LEAST_ONCE
QUIET = 1.0  # seconds of silence that count as "nothing was published"


def thing_of(device) -> str:
    """The thing name, as README documents it (and as the SDK takes it): `<tenant>:<device>`."""
    return f"{device.tenant_id}:{device.device_id}"


class Wiretap:
    """The raw payloads on one thing's topics (a privileged test client), to show what the server
    sent when the SDK could not read it."""

    def __init__(self, broker, thing: str):
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.client = MqttClient(broker)
        self.client.client.on_message = lambda client, userdata, message: self.messages[message.topic].append(
            message.payload
        )
        self.client.subscribe(f"$aws/things/{thing}/#")

    def on(self, suffix: str) -> list[bytes]:
        return [payload for topic, payloads in self.messages.items() if topic.endswith(suffix) for payload in payloads]


class SdkDevice:
    """One device on the stock SDK: an MQTT 3.1.1 awscrt connection with IotShadowClient and
    IotJobsClient. Every subscription's events land in an inbox per (shadow name, answer)."""

    def __init__(self, broker, device):
        self.device = device
        self.thing = thing_of(device)
        login = f"{device.tenant_id}/{device.device_id}"
        self.connection = mqtt.Connection(
            client=mqtt.Client(), host_name=broker.host, port=broker.port, client_id=login, username=login,
            password=device.token, clean_session=True, keep_alive_secs=30, disable_metrics=True,
        )  # fmt: skip
        self.connection.connect().result(TIMEOUT)
        self.shadow = iotshadow.IotShadowClient(self.connection)
        self.jobs = iotjobs.IotJobsClient(self.connection)
        self.inbox: dict[tuple[str, str], queue.Queue] = defaultdict(queue.Queue)
        self.wire = Wiretap(broker, self.thing)

    def close(self):
        self.connection.disconnect().result(TIMEOUT)
        self.wire.client.close()

    def _listen(self, key: tuple[str, str], subscribe, request):
        future, _topic = subscribe(request, QOS, lambda event: self.inbox[key].put(event))
        future.result(TIMEOUT)

    # --- shadows ------------------------------------------------------------------------------

    def listen_shadow(self, name: str = ""):
        """Subscribe to every answer and event of a shadow ("" = classic), as AWS asks before any request."""
        s, thing = self.shadow, self.thing
        if name:
            ops = {
                "get": iotshadow.GetNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                "update": iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                "delete": iotshadow.DeleteNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
            }
            delta = iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name=thing, shadow_name=name)
            documents = iotshadow.NamedShadowUpdatedSubscriptionRequest(thing_name=thing, shadow_name=name)
            self._listen((name, "delta"), s.subscribe_to_named_shadow_delta_updated_events, delta)
            self._listen((name, "documents"), s.subscribe_to_named_shadow_updated_events, documents)
            for op, request in ops.items():
                for outcome in ("accepted", "rejected"):
                    method = getattr(s, f"subscribe_to_{op}_named_shadow_{outcome}")
                    self._listen((name, f"{op}/{outcome}"), method, request)
        else:
            ops = {
                "get": iotshadow.GetShadowSubscriptionRequest(thing_name=thing),
                "update": iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing),
                "delete": iotshadow.DeleteShadowSubscriptionRequest(thing_name=thing),
            }
            delta = iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing)
            documents = iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing)
            self._listen((name, "delta"), s.subscribe_to_shadow_delta_updated_events, delta)
            self._listen((name, "documents"), s.subscribe_to_shadow_updated_events, documents)
            for op, request in ops.items():
                for outcome in ("accepted", "rejected"):
                    self._listen((name, f"{op}/{outcome}"), getattr(s, f"subscribe_to_{op}_shadow_{outcome}"), request)
        return self

    def get(self, name: str = "", token: str | None = None):
        if name:
            request = iotshadow.GetNamedShadowRequest(thing_name=self.thing, shadow_name=name, client_token=token)
            self.shadow.publish_get_named_shadow(request, QOS).result(TIMEOUT)
        else:
            request = iotshadow.GetShadowRequest(thing_name=self.thing, client_token=token)
            self.shadow.publish_get_shadow(request, QOS).result(TIMEOUT)

    def update(self, name: str = "", *, reported=None, desired=None, version=None, token=None):
        state = iotshadow.ShadowState(reported=reported, desired=desired)
        fields = {"thing_name": self.thing, "state": state, "version": version, "client_token": token}
        if name:
            request = iotshadow.UpdateNamedShadowRequest(shadow_name=name, **fields)
            self.shadow.publish_update_named_shadow(request, QOS).result(TIMEOUT)
        else:
            self.shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(**fields), QOS).result(TIMEOUT)

    def delete(self, name: str = "", token: str | None = None):
        if name:
            request = iotshadow.DeleteNamedShadowRequest(thing_name=self.thing, shadow_name=name, client_token=token)
            self.shadow.publish_delete_named_shadow(request, QOS).result(TIMEOUT)
        else:
            request = iotshadow.DeleteShadowRequest(thing_name=self.thing, client_token=token)
            self.shadow.publish_delete_shadow(request, QOS).result(TIMEOUT)

    # --- jobs ---------------------------------------------------------------------------------

    def listen_jobs(self):
        j, thing = self.jobs, self.thing
        self._listen(("jobs", "notify-next"), j.subscribe_to_next_job_execution_changed_events,
                     iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing))  # fmt: skip
        self._listen(("jobs", "notify"), j.subscribe_to_job_executions_changed_events,
                     iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing))  # fmt: skip
        pending = iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name=thing)
        start = iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing)
        update = iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+")
        describe = iotjobs.DescribeJobExecutionSubscriptionRequest(thing_name=thing, job_id="+")
        for outcome in ("accepted", "rejected"):
            self._listen(("jobs", f"get/{outcome}"),
                         getattr(j, f"subscribe_to_get_pending_job_executions_{outcome}"), pending)  # fmt: skip
            self._listen(("jobs", f"start-next/{outcome}"),
                         getattr(j, f"subscribe_to_start_next_pending_job_execution_{outcome}"), start)  # fmt: skip
            self._listen(("jobs", f"update/{outcome}"),
                         getattr(j, f"subscribe_to_update_job_execution_{outcome}"), update)  # fmt: skip
            self._listen(("jobs", f"describe/{outcome}"),
                         getattr(j, f"subscribe_to_describe_job_execution_{outcome}"), describe)  # fmt: skip
        return self

    def get_pending(self, token=None):
        request = iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing, client_token=token)
        self.jobs.publish_get_pending_job_executions(request, QOS).result(TIMEOUT)

    def start_next(self, *, status_details=None, step_timeout=None, token=None):
        request = iotjobs.StartNextPendingJobExecutionRequest(
            thing_name=self.thing, status_details=status_details, step_timeout_in_minutes=step_timeout,
            client_token=token,
        )  # fmt: skip
        self.jobs.publish_start_next_pending_job_execution(request, QOS).result(TIMEOUT)

    def update_job(self, job_id: str, status: str, **fields):
        request = iotjobs.UpdateJobExecutionRequest(thing_name=self.thing, job_id=job_id, status=status, **fields)
        self.jobs.publish_update_job_execution(request, QOS).result(TIMEOUT)

    def describe(self, job_id: str, **fields):
        request = iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id=job_id, **fields)
        self.jobs.publish_describe_job_execution(request, QOS).result(TIMEOUT)

    # --- answers ------------------------------------------------------------------------------

    def next(self, scope: str, kind: str, timeout: float = TIMEOUT):
        """The next event of (scope, kind), as the SDK parsed it; scope is a shadow name or "jobs"."""
        try:
            event = self.inbox[(scope, kind)].get(timeout=timeout)
        except queue.Empty:
            others = {f"{s}:{k}": q.qsize() for (s, k), q in self.inbox.items() if q.qsize()}
            raise AssertionError(
                f"nothing on {scope or 'classic'} {kind} within {timeout}s; waiting elsewhere: {others}; "
                f"raw: {dict(self.wire.messages)}"
            ) from None
        assert event is not None, f"the SDK could not parse {kind}: {self.wire.on(kind)}"
        return event

    def until(self, scope: str, kind: str, predicate, timeout: float = TIMEOUT):
        """The first event of (scope, kind) that satisfies predicate (earlier ones are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(scope, kind, timeout=max(0.01, deadline - time.monotonic()))
            if predicate(event):
                return event

    def nothing(self, scope: str, kind: str, wait: float = QUIET):
        try:
            event = self.inbox[(scope, kind)].get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {scope or 'classic'} {kind}: {event}")


@pytest.fixture
def sdk_device(mqtt_broker, provision):
    made: list[SdkDevice] = []

    def make(device=None) -> SdkDevice:
        device = device or provision(1, prefix=f"aws-{uuid.uuid4().hex[:6]}")[0]
        made.append(SdkDevice(mqtt_broker, device))
        return made[-1]

    yield make
    for device in made:
        device.close()


def fresh(device) -> Device:
    return Device.objects.get(pk=device.pk)


def is_epoch_seconds(value) -> bool:
    """A metadata timestamp: an integer of seconds since the epoch (not milliseconds, not a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1_500_000_000 < value < 4_000_000_000


# --- the thing name through the SDK's own topic builders (no broker) ---------------------------------


class RecordingConnection(mqtt.Connection):
    """An awscrt connection that never connects: it records what the SDK would publish and subscribe."""

    def __init__(self):
        super().__init__(client=mqtt.Client(), host_name="unused.invalid", port=1, client_id="recorder")
        self.published, self.subscribed = [], []

    def publish(self, topic, payload, qos, retain=False):
        self.published.append(topic)
        future = Future()
        future.set_result({"packet_id": 1})
        return future, 1

    def subscribe(self, topic, qos, callback=None):
        self.subscribed.append(topic)
        future = Future()
        future.set_result({"packet_id": 1, "topic": topic, "qos": qos})
        return future, 1


def test_the_sdks_topics_for_a_thing_name_are_the_devices_own_request_topics():
    tenant_id, device_id = "acme-eu", "pump:7.a"  # a device id may hold ":", a tenant id never does
    thing = topics.thing_name(tenant_id, device_id)
    assert thing == "acme-eu:pump:7.a"  # the documented form, what firmware is given
    recorder = RecordingConnection()
    shadow, jobs = iotshadow.IotShadowClient(recorder), iotjobs.IotJobsClient(recorder)
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing), QOS)
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(thing_name=thing, state=iotshadow.ShadowState()), QOS)
    shadow.publish_delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing), QOS)
    shadow.publish_get_named_shadow(iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name="fw"), QOS)
    shadow.publish_update_named_shadow(
        iotshadow.UpdateNamedShadowRequest(thing_name=thing, shadow_name="fw", state=iotshadow.ShadowState()), QOS
    )
    shadow.publish_delete_named_shadow(iotshadow.DeleteNamedShadowRequest(thing_name=thing, shadow_name="fw"), QOS)
    jobs.publish_get_pending_job_executions(iotjobs.GetPendingJobExecutionsRequest(thing_name=thing), QOS)
    jobs.publish_start_next_pending_job_execution(iotjobs.StartNextPendingJobExecutionRequest(thing_name=thing), QOS)
    jobs.publish_describe_job_execution(iotjobs.DescribeJobExecutionRequest(thing_name=thing, job_id="$next"), QOS)
    jobs.publish_update_job_execution(
        iotjobs.UpdateJobExecutionRequest(thing_name=thing, job_id="job-1", status="IN_PROGRESS"), QOS
    )

    parsed = [topics.parse_request(topic) for topic in recorder.published]
    assert all(p is not None for p in parsed), recorder.published
    assert {(p.dialect, p.tenant_id, p.device_id, p.thing_name) for p in parsed} == {
        (topics.AWS, tenant_id, device_id, thing)
    }
    assert [(p.service, p.operation, p.shadow_name, p.job_id) for p in parsed] == [
        (topics.SHADOW, topics.GET, "", ""), (topics.SHADOW, topics.UPDATE, "", ""),
        (topics.SHADOW, topics.DELETE, "", ""), (topics.SHADOW, topics.GET, "fw", ""),
        (topics.SHADOW, topics.UPDATE, "fw", ""), (topics.SHADOW, topics.DELETE, "fw", ""),
        (topics.JOBS, topics.GET_PENDING, "", ""), (topics.JOBS, topics.START_NEXT, "", ""),
        (topics.JOBS, topics.DESCRIBE, "", topics.NEXT_JOB), (topics.JOBS, topics.UPDATE, "", "job-1"),
    ]  # fmt: skip
    # What the platform builds for a device is what the SDK publishes to.
    assert recorder.published[:3] == [
        topics.shadow_topic(topics.AWS, tenant_id, device_id, "", op) for op in ("get", "update", "delete")
    ]
    assert recorder.published[3] == topics.shadow_topic(topics.AWS, tenant_id, device_id, "fw", "get")
    assert recorder.published[6:8] == [
        topics.jobs_topic(topics.AWS, tenant_id, device_id, op) for op in ("get", "start-next")
    ]
    patterns = topics.device_request_patterns(topics.AWS, tenant_id, device_id)
    assert all(any(acl.topic_matches(p, t) for p in patterns) for t in recorder.published)

    # Every answer and event the SDK subscribes to is under the device's own thing, and each
    # request's answers are the request topic + /accepted or /rejected (Request.reply_topic).
    shadow.subscribe_to_get_shadow_accepted(iotshadow.GetShadowSubscriptionRequest(thing_name=thing), QOS, print)
    shadow.subscribe_to_update_named_shadow_rejected(
        iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name="fw"), QOS, print
    )
    shadow.subscribe_to_shadow_delta_updated_events(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), QOS, print
    )
    jobs.subscribe_to_next_job_execution_changed_events(
        iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS, print
    )
    jobs.subscribe_to_update_job_execution_accepted(
        iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="job-1"), QOS, print
    )
    own = topics.device_own(topics.AWS, tenant_id, device_id).removesuffix("#")
    assert all(topic.startswith(own) for topic in recorder.subscribed), recorder.subscribed
    assert recorder.subscribed[0] == parsed[0].reply_topic(topics.ACCEPTED)
    assert recorder.subscribed[1] == parsed[4].reply_topic(topics.REJECTED)
    assert recorder.subscribed[2] == topics.shadow_topic(topics.AWS, tenant_id, device_id, "", "update/delta")
    assert recorder.subscribed[3] == topics.jobs_topic(topics.AWS, tenant_id, device_id, "notify-next")
    assert recorder.subscribed[4] == parsed[9].reply_topic(topics.ACCEPTED)


def test_the_sdk_connects_with_username_password_over_plain_tcp_and_round_trips(mqtt_broker, provision):
    (device,) = provision(1)
    sdk = SdkDevice(mqtt_broker, device)
    try:
        got, topic = threading.Event(), f"tenant/{device.tenant_id}/device/{device.device_id}/shadow/desired"
        future, _ = sdk.connection.subscribe(topic, QOS, lambda topic, payload, **kw: got.set())
        future.result(TIMEOUT)
        with MqttClient(mqtt_broker) as platform:
            platform.publish(topic, b'{"desired": {}, "version": 0}')
        assert got.wait(TIMEOUT), "the SDK's connection received nothing"
    finally:
        sdk.close()


# --- shadows -------------------------------------------------------------------------------------


def test_get_returns_the_full_document(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    twin_update_desired(device=sdk.device, document={"interval": 30, "led": "on"})
    sdk.update(reported={"led": "on", "temp": 21.5})
    sdk.next("", "update/accepted")

    sdk.get(token="get-1")
    got = sdk.next("", "get/accepted")
    assert got.state.desired == {"interval": 30, "led": "on"}
    assert got.state.reported == {"led": "on", "temp": 21.5}
    assert got.state.delta == {"interval": 30}  # AWS: the desired keys reported differs from or lacks
    assert set(got.metadata.desired) == {"interval", "led"} and set(got.metadata.reported) == {"led", "temp"}
    assert all(is_epoch_seconds(leaf["timestamp"]) for leaf in got.metadata.reported.values())
    assert got.version == fresh(sdk.device).shadow_version == 2  # one desired write, one report
    assert got.client_token == "get-1" and isinstance(got.timestamp, datetime)


def test_get_of_a_named_shadow_that_does_not_exist_is_rejected_404(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow("nope")
    sdk.get("nope", token="t-404")
    rejected = sdk.next("nope", "get/rejected")
    assert rejected.code == 404 and rejected.client_token == "t-404" and rejected.message
    sdk.nothing("nope", "get/accepted")


def test_a_provisioned_devices_classic_shadow_exists_from_the_start(start_bridge, sdk_device):
    """iotcloud: every device has its classic shadow (the seed's device_state row), so get is
    accepted before any write, with version 0 (AWS IoT answers 404 until the first update)."""
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.get()
    got = sdk.next("", "get/accepted")
    assert got.version == 0 and not got.state.desired and not got.state.reported and got.state.delta is None


def test_update_reported_is_a_merge_and_is_answered_with_what_was_asked(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.update(reported={"temp": 21, "mode": "eco", "net": {"ssid": "home", "rssi": -60}}, token="u1")
    accepted = sdk.next("", "update/accepted")
    assert accepted.state.reported == {"temp": 21, "mode": "eco", "net": {"ssid": "home", "rssi": -60}}
    assert accepted.client_token == "u1" and accepted.version == 1
    assert is_epoch_seconds(accepted.metadata.reported["net"]["rssi"]["timestamp"])  # a timestamp per leaf

    sdk.update(reported={"mode": None, "fan": 2, "net": {"rssi": -70}}, token="u2")  # partial: null deletes
    accepted = sdk.next("", "update/accepted")
    assert accepted.state.reported == {"mode": None, "fan": 2, "net": {"rssi": -70}}  # as requested
    assert accepted.client_token == "u2" and accepted.version == 2
    device = fresh(sdk.device)
    assert device.reported_state == {"temp": 21, "fan": 2, "net": {"ssid": "home", "rssi": -70}}
    assert device.shadow_version == 2
    sdk.nothing("", "update/rejected")


def test_delta_after_an_operator_write_then_the_report_closes_it(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.update(reported={"led": "on"})
    sdk.next("", "update/accepted")
    sdk.next("", "documents")

    twin_update_desired(device=sdk.device, document={"led": "on", "interval": 30, "cfg": {"a": 1}})
    delta = sdk.next("", "delta")
    assert delta.state == {"interval": 30, "cfg": {"a": 1}}  # led is already as desired
    assert set(delta.metadata) == {"interval", "cfg"} and is_epoch_seconds(delta.metadata["interval"]["timestamp"])
    assert delta.version == fresh(sdk.device).shadow_version == 2
    assert isinstance(delta.timestamp, datetime)

    sdk.update(reported=delta.state)  # the device applies the delta and reports it
    assert sdk.next("", "update/accepted").version == 3
    sdk.nothing("", "delta")  # in sync: no delta
    sdk.get()
    got = sdk.next("", "get/accepted")
    assert got.state.delta is None and got.state.reported == {"led": "on", "interval": 30, "cfg": {"a": 1}}
    device = fresh(sdk.device)
    assert device.reported_version == device.desired_version  # the operator's twin shows it in sync


def test_documents_carry_previous_and_current_after_every_accepted_change(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.update(reported={"a": 1})
    sdk.next("", "update/accepted")
    sdk.next("", "documents")

    sdk.update(reported={"b": 2}, token="doc-2")
    documents = sdk.next("", "documents")
    assert documents.previous.state.reported == {"a": 1} and documents.current.state.reported == {"a": 1, "b": 2}
    assert (documents.previous.version, documents.current.version) == (1, 2)
    assert set(documents.current.metadata.reported) == {"a", "b"}
    assert isinstance(documents.timestamp, datetime)
    wait_until(lambda: len(sdk.wire.on("update/documents")) == 2, message="the raw documents message")
    raw = json.loads(sdk.wire.on("update/documents")[-1])
    assert raw.get("clientToken") == "doc-2"  # AWS: the documents message echoes the request's token too

    twin_update_desired(device=sdk.device, document={"c": 3})  # an operator's change is a change too
    documents = sdk.next("", "documents")
    assert documents.previous.state.desired in (None, {}) and documents.current.state.desired == {"c": 3}
    assert documents.current.version == 3


def test_a_stale_version_is_refused_409_and_the_current_one_is_accepted(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.update(reported={"a": 1})
    sdk.next("", "update/accepted")
    sdk.update(reported={"a": 2})
    assert sdk.next("", "update/accepted").version == 2

    sdk.update(reported={"a": 99}, version=1, token="stale")
    rejected = sdk.next("", "update/rejected")
    assert rejected.code == 409 and rejected.client_token == "stale" and rejected.message
    device = fresh(sdk.device)
    assert device.reported_state == {"a": 2} and device.shadow_version == 2  # unchanged

    sdk.update(reported={"a": 3}, version=2, token="current")
    accepted = sdk.next("", "update/accepted")
    assert accepted.version == 3 and accepted.client_token == "current"


def test_an_oversize_update_is_rejected_413(start_bridge, sdk_device, settings):
    start_bridge()
    sdk = sdk_device().listen_shadow()
    too_big_state = "x" * (settings.TWIN_MAX_DOCUMENT_BYTES + 100)  # a valid message, a state over the limit
    sdk.update(reported={"blob": too_big_state}, token="big")
    rejected = sdk.next("", "update/rejected")
    assert rejected.code == 413 and rejected.client_token == "big" and rejected.message

    too_big_message = "x" * (settings.MQTT_MAX_PAYLOAD_BYTES + 100)  # over the bridge's payload limit
    sdk.update(reported={"blob": too_big_message})
    assert sdk.next("", "update/rejected").code == 413
    device = fresh(sdk.device)
    assert device.reported_state == {} and device.shadow_version == 0


def test_an_array_holding_null_is_rejected_400(start_bridge, sdk_device):
    """AWS IoT: "Arrays can't have null values" (device-shadow-document, Array values): rejected."""
    start_bridge()
    sdk = sdk_device().listen_shadow()
    sdk.update(reported={"colors": [None, "RED"]}, token="null-in-array")
    rejected = sdk.next("", "update/rejected", timeout=5)
    assert rejected.code == 400 and rejected.client_token == "null-in-array"
    assert fresh(sdk.device).reported_state == {}


def test_a_named_shadow_end_to_end(start_bridge, sdk_device):
    from twin.engine import ShadowChange, shadow_apply

    start_bridge()
    sdk = sdk_device().listen_shadow().listen_shadow("firmware")
    sdk.update("firmware", reported={"version": "1.0", "slot": "a"}, token="n1")  # creates it
    accepted = sdk.next("firmware", "update/accepted")
    assert accepted.state.reported == {"version": "1.0", "slot": "a"} and accepted.version == 1
    assert accepted.client_token == "n1"
    sdk.next("firmware", "documents")

    # An operator's desired write on the named shadow: the delta goes to the named shadow's topic only.
    (result,) = shadow_apply([ShadowChange(sdk.device.tenant_id, sdk.device.device_id, shadow_name="firmware",
                                           desired={"version": "2.0", "slot": "a"})])  # fmt: skip
    assert result.error is None, result.error
    delta = sdk.next("firmware", "delta")
    assert delta.state == {"version": "2.0"} and delta.version == 2
    sdk.nothing("", "delta")

    sdk.update("firmware", reported={"version": "2.0"})
    assert sdk.next("firmware", "update/accepted").version == 3
    sdk.get("firmware", token="n-get")
    got = sdk.next("firmware", "get/accepted")
    assert got.state.desired == got.state.reported == {"version": "2.0", "slot": "a"}
    assert got.state.delta is None and got.version == 3 and got.client_token == "n-get"
    assert set(got.metadata.reported) == {"version", "slot"}

    sdk.delete("firmware", token="n-del")
    deleted = sdk.next("firmware", "delete/accepted")
    assert deleted.version == 4 and deleted.client_token == "n-del"  # AWS: the version goes on
    sdk.get("firmware")
    assert sdk.next("firmware", "get/rejected").code == 404
    sdk.delete("firmware")
    assert sdk.next("firmware", "delete/rejected").code == 404

    sdk.get()  # the classic shadow never saw any of it
    classic = sdk.next("", "get/accepted")
    assert classic.version == 0 and not classic.state.reported


# --- jobs ----------------------------------------------------------------------------------------


def test_jobs_notify_next_start_next_progress_succeeded_completes_the_job(start_bridge, sdk_device, mqtt_tenant):
    start_bridge()
    sdk = sdk_device().listen_jobs()
    job = job_create(tenant=mqtt_tenant, document_type="firmware_update", document_params={"version": "2.1"},
                     device_ids=[sdk.device.device_id])  # fmt: skip

    notified = sdk.next("jobs", "notify-next")
    assert notified.execution.job_id == job.job_id and notified.execution.status == iotjobs.JobStatus.QUEUED
    assert notified.execution.job_document  # notify-next carries the document
    assert isinstance(notified.execution.queued_at, datetime)

    sdk.get_pending(token="p1")
    pending = sdk.next("jobs", "get/accepted")
    assert [s.job_id for s in pending.queued_jobs] == [job.job_id] and pending.in_progress_jobs == []
    assert pending.client_token == "p1"

    sdk.start_next(status_details={"step": "download"}, step_timeout=10, token="s1")
    started = sdk.next("jobs", "start-next/accepted")
    execution = started.execution
    assert execution.job_id == job.job_id and execution.thing_name == sdk.thing
    assert execution.status == iotjobs.JobStatus.IN_PROGRESS and execution.status_details == {"step": "download"}
    assert execution.job_document == notified.execution.job_document and started.client_token == "s1"
    assert isinstance(execution.started_at, datetime) and isinstance(execution.version_number, int)
    version, number = execution.version_number, execution.execution_number

    sdk.get_pending()  # a device that rebooted mid-job finds it: pending lists include IN_PROGRESS
    pending = sdk.next("jobs", "get/accepted")
    assert [s.job_id for s in pending.in_progress_jobs] == [job.job_id] and pending.queued_jobs == []

    # A progress update: IN_PROGRESS again, with new status details (AWS's rules on MQTT).
    sdk.update_job(job.job_id, iotjobs.JobStatus.IN_PROGRESS, status_details={"progress": "50%"},
                   expected_version=version, include_job_execution_state=True, client_token="u1")  # fmt: skip
    progressed = sdk.next("jobs", "update/accepted")
    state = progressed.execution_state
    assert state.status == iotjobs.JobStatus.IN_PROGRESS and state.status_details == {"progress": "50%"}
    assert state.version_number == version + 1 and progressed.client_token == "u1"
    row = JobExecution.objects.get(job=job)
    assert row.status == "IN_PROGRESS" and row.status_details == {"progress": "50%"}

    # A stale expectedVersion: VersionMismatch, with the current state so no describe is needed.
    sdk.update_job(job.job_id, iotjobs.JobStatus.SUCCEEDED, expected_version=version, client_token="stale")
    mismatch = sdk.next("jobs", "update/rejected")
    assert mismatch.code == iotjobs.RejectedErrorCode.VERSION_MISMATCH and mismatch.client_token == "stale"
    assert mismatch.execution_state.status == iotjobs.JobStatus.IN_PROGRESS
    assert mismatch.execution_state.version_number == version + 1
    assert JobExecution.objects.get(job=job).status == "IN_PROGRESS"

    sdk.update_job(job.job_id, iotjobs.JobStatus.SUCCEEDED, status_details={"progress": "100%"},
                   expected_version=version + 1, execution_number=number, include_job_document=True)  # fmt: skip
    done = sdk.next("jobs", "update/accepted")
    assert done.job_document == execution.job_document  # includeJobDocument

    operator = make_operator_client(mqtt_tenant, f"op-{uuid.uuid4().hex[:6]}")
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "COMPLETED", message="the job to complete")
    detail = operator.get(f"/customer/jobs/{job.job_id}", expect=200).json()
    assert detail["status"] == "COMPLETED" and detail["progress"]["counts"]["SUCCEEDED"] == 1
    sdk.until("jobs", "notify-next", lambda event: event.execution is None)  # AWS: none left, none in it

    sdk.describe(job.job_id, include_job_document=False)
    described = sdk.next("jobs", "describe/accepted").execution
    assert described.status == iotjobs.JobStatus.SUCCEEDED and described.status_details == {"progress": "100%"}
    assert described.execution_number == number  # AWS: the execution's number does not change with updates
    assert described.version_number == version + 2


def test_notify_next_is_sent_only_when_the_next_job_changes(start_bridge, sdk_device, mqtt_tenant):
    """AWS IoT (NextJobExecutionChanged): "not sent when the next job's execution details change, only
    when the next job ... has changed": a second queued job, or the next one starting, is no news."""
    start_bridge()
    sdk = sdk_device().listen_jobs()
    first = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[sdk.device.device_id])
    assert sdk.next("jobs", "notify-next").execution.job_id == first.job_id
    job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[sdk.device.device_id])
    sdk.start_next()
    assert sdk.next("jobs", "start-next/accepted").execution.job_id == first.job_id
    sdk.nothing("jobs", "notify-next", wait=2 * QUIET)


def test_start_next_with_nothing_pending_has_no_execution(start_bridge, sdk_device):
    start_bridge()
    sdk = sdk_device().listen_jobs()
    sdk.start_next(token="empty")
    answer = sdk.next("jobs", "start-next/accepted")
    assert answer.execution is None and answer.client_token == "empty"


def test_the_sdk_v2_request_response_clients_correlate_by_client_token(start_bridge, sdk_device, mqtt_tenant):
    """IotShadowClientV2 / IotJobsClientV2 (the SDK's current samples): they subscribe to `.../+`,
    send their own clientToken and match the answer by it."""
    from awscrt import mqtt_request_response

    start_bridge()
    sdk = sdk_device()
    options = mqtt_request_response.ClientOptions(max_request_response_subscriptions=4, max_streaming_subscriptions=2,
                                                  operation_timeout_in_seconds=TIMEOUT)  # fmt: skip
    shadow = iotshadow.IotShadowClientV2(sdk.connection, options)
    jobs = iotjobs.IotJobsClientV2(sdk.connection, options)
    state = iotshadow.ShadowState(reported={"v2": True})
    updated = shadow.update_shadow(iotshadow.UpdateShadowRequest(thing_name=sdk.thing, state=state)).result(TIMEOUT)
    assert updated.version == 1 and updated.state.reported == {"v2": True}
    got = shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=sdk.thing)).result(TIMEOUT)
    assert got.state.reported == {"v2": True} and got.version == 1

    job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[sdk.device.device_id])
    started = jobs.start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name=sdk.thing)
    ).result(TIMEOUT)
    assert started.execution.job_id == job.job_id
    jobs.update_job_execution(
        iotjobs.UpdateJobExecutionRequest(thing_name=sdk.thing, job_id=job.job_id, status="SUCCEEDED")
    ).result(TIMEOUT)
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "COMPLETED", message="the job to complete")


def test_the_sdks_mqtt5_client_with_the_v2_clients(start_bridge, provision, mqtt_broker, mqtt_tenant):
    """The SDK's current samples: an awscrt.mqtt5.Client (metrics off, username/password, plain TCP)."""
    from awscrt import mqtt5, mqtt_request_response

    if mqtt_broker.embedded:
        pytest.skip("the embedded broker speaks MQTT 3.1.1 only (README: Bring your AWS IoT devices)")
    start_bridge()
    (device,) = provision(1)
    login, thing = f"{device.tenant_id}/{device.device_id}", thing_of(device)
    connected, stopped = Future(), Future()
    client = mqtt5.Client(mqtt5.ClientOptions(
        host_name=mqtt_broker.host, port=mqtt_broker.port, disable_metrics=True,
        connect_options=mqtt5.ConnectPacket(client_id=login, username=login, password=device.token,
                                            keep_alive_interval_sec=30),
        on_lifecycle_event_connection_success_fn=lambda data: connected.done() or connected.set_result(True),
        on_lifecycle_event_connection_failure_fn=lambda data: connected.done() or connected.set_exception(
            AssertionError(f"MQTT 5 connection refused: {data.exception}")),
        on_lifecycle_event_stopped_fn=lambda data: stopped.set_result(True),
    ))  # fmt: skip
    client.start()
    try:
        connected.result(TIMEOUT)
        options = mqtt_request_response.ClientOptions(max_request_response_subscriptions=2,
                                                      max_streaming_subscriptions=2,
                                                      operation_timeout_in_seconds=TIMEOUT)  # fmt: skip
        shadow, jobs = iotshadow.IotShadowClientV2(client, options), iotjobs.IotJobsClientV2(client, options)
        state = iotshadow.ShadowState(reported={"mqtt": 5})
        updated = shadow.update_shadow(iotshadow.UpdateShadowRequest(thing_name=thing, state=state)).result(TIMEOUT)
        assert updated.version == 1
        got = shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(TIMEOUT)
        assert got.state.reported == {"mqtt": 5} and got.version == 1
        job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[device.device_id])
        started = jobs.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=thing)
        ).result(TIMEOUT)
        assert started.execution.job_id == job.job_id and started.execution.status == iotjobs.JobStatus.IN_PROGRESS
    finally:
        client.stop()
        stopped.result(TIMEOUT)


# --- the example device --------------------------------------------------------------------------


def test_examples_aws_sdk_device_applies_the_delta_and_runs_a_job(start_bridge, provision, mqtt_broker, mqtt_tenant):
    start_bridge()
    (device,) = provision(1, prefix="example")
    twin_update_desired(device=device, document={"interval": 30})
    job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[device.device_id])
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "aws_sdk_device.py"), "--host", mqtt_broker.host,
         "--port", str(mqtt_broker.port), "--tenant", device.tenant_id, "--device", device.device_id,
         "--token", device.token, "--max-jobs", "1", "--seconds", "30", "--job-seconds", "0.1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert 'applying delta {"interval": 30}' in output and f"job {job.job_id}: SUCCEEDED" in output
    device = fresh(device)
    assert device.reported_state == {"interval": 30, "sdk": "aws-iot-device-sdk-python-v2", "firmware": "1.0.0"}
    assert device.reported_version == device.desired_version
    assert Job.objects.get(pk=job.pk).status == "COMPLETED"
    assert JobExecution.objects.get(job=job).status_details == {"step": "2/2", "progress": "100%"}
