"""Jobs over MQTT end to end with a plain paho device, native topics and the AWS IoT dialect.

Real broker (MQTT_URL's, else the embedded one) and the real bridge: notify-next -> start-next ->
a progress update -> SUCCEEDED -> the job is COMPLETED in the operator API; one device cannot read
or change another's jobs; bad requests are refused and the bridge keeps answering.
"""

from __future__ import annotations

import json

import pytest

from iotcloud.testing import make_operator_client
from jobs.models import Job, JobExecution
from jobs.services import job_create
from mqtt_bridge import topics
from mqtt_bridge.tests.conftest import MqttClient, wait_until

NATIVE, AWS = topics.NATIVE, topics.AWS
BOTH = pytest.mark.parametrize("dialect", [NATIVE, AWS])


class JobsDevice:
    """A device on one dialect, subscribed to all of its own topics: jobs requests and notifications."""

    def __init__(self, mqtt_client, device, dialect: str):
        self.device, self.dialect = device, dialect
        self.client = mqtt_client()
        self.client.subscribe(topics.device_own(dialect, device.tenant_id, device.device_id))
        self.seen: list = []  # every message this device received

    def topic(self, suffix: str) -> str:
        return topics.jobs_topic(self.dialect, self.device.tenant_id, self.device.device_id, suffix)

    def _next(self, timeout: float = 10):
        (message,) = self.client.collect(count=1, timeout=timeout) or [None]
        if message is not None:
            self.seen.append(message)
        return message

    def ask(self, suffix: str, body=None, *, raw: bytes | None = None) -> tuple[str, dict]:
        """(outcome, payload) of the answer to one request."""
        request = self.topic(suffix)
        self.client.publish(request, raw if raw is not None else json.dumps(body or {}).encode())
        while True:
            message = self._next()
            assert message is not None, f"no answer to {request}"
            if message.topic in (f"{request}/accepted", f"{request}/rejected"):
                return message.topic.rsplit("/", 1)[1], json.loads(message.payload)

    def notified_next(self, predicate, timeout: float = 10) -> dict:
        """The next notify-next payload that satisfies `predicate` (the retained one counts)."""
        wanted = self.topic("notify-next")
        while True:
            message = self._next(timeout)
            assert message is not None, f"nothing suitable on {wanted}"
            if message.topic == wanted and message.payload:
                payload = json.loads(message.payload)
                if predicate(payload):
                    return payload


@pytest.fixture
def jobs_devices(provision, mqtt_broker, mqtt_tenant):
    """Two provisioned devices; their notify-next and AWS notify retained messages cleared afterwards."""
    devices = provision(2)
    yield devices
    with MqttClient(mqtt_broker) as client:
        for device in devices:
            for dialect, suffix in ((NATIVE, "notify-next"), (AWS, "notify"), (AWS, "notify-next")):
                client.publish(topics.jobs_topic(dialect, mqtt_tenant.id, device.device_id, suffix), b"", retain=True)


@BOTH
def test_notify_next_start_next_progress_succeeded_completes_the_job(
    dialect, start_bridge, jobs_devices, mqtt_client, mqtt_tenant
):
    start_bridge()
    one, _ = jobs_devices
    operator = make_operator_client(mqtt_tenant, f"op-{dialect}")
    operator.post("/customer/jobs", {"job_id": "fw-9", "document_type": "firmware_update",
                                     "document_params": {"version": "9"},
                                     "targets": {"device_ids": [one.device_id]}}, expect=201)  # fmt: skip
    device = JobsDevice(mqtt_client, one, dialect)

    notice = device.notified_next(lambda p: "execution" in p)["execution"]
    assert (notice["jobId"], notice["status"]) == ("fw-9", "QUEUED")
    assert notice["jobDocument"] == {"type": "firmware_update", "params": {"version": "9"}}

    outcome, started = device.ask("start-next", {"clientToken": "s", "statusDetails": {"step": "download"},
                                                 "stepTimeoutInMinutes": 30})  # fmt: skip
    assert outcome == "accepted" and started["clientToken"] == "s"
    execution = started["execution"]
    assert (execution["jobId"], execution["status"], execution["versionNumber"]) == ("fw-9", "IN_PROGRESS", 2)
    assert execution["statusDetails"] == {"step": "download"}

    outcome, progress = device.ask("fw-9/update", {"status": "IN_PROGRESS", "statusDetails": {"step": "install"},
                                                   "expectedVersion": 2, "includeJobExecutionState": True})  # fmt: skip
    assert outcome == "accepted", progress
    assert progress["executionState"] == {"status": "IN_PROGRESS", "statusDetails": {"step": "install"},
                                          "versionNumber": 3}  # fmt: skip
    outcome, done = device.ask("fw-9/update", {"status": "SUCCEEDED", "expectedVersion": 3, "clientToken": "d"})
    assert (outcome, done["clientToken"]) == ("accepted", "d")

    job = operator.get("/customer/jobs/fw-9", expect=200).json()
    assert job["status"] == "COMPLETED" and job["progress"]["counts"]["SUCCEEDED"] == 1
    assert set(device.notified_next(lambda p: "execution" not in p)) == {"timestamp"}  # nothing pending
    outcome, pending = device.ask("get")
    assert (outcome, pending["inProgressJobs"], pending["queuedJobs"]) == ("accepted", [], [])


@BOTH
def test_a_device_cannot_read_or_update_another_devices_jobs(
    dialect, start_bridge, jobs_devices, mqtt_client, mqtt_tenant
):
    """With MQTT_DEVICE_AUTH off the topic's device is the actor: A's own topics with B's job id are A's
    requests, and A has no such execution. A's answers never carry B's data; B's job is unchanged."""
    start_bridge()
    a, b = jobs_devices
    job_create(tenant=mqtt_tenant, document_type="secret", document_params={"key": "b-only"}, job_id="b-job",
               device_ids=[b.device_id])  # fmt: skip
    wait_until(lambda: not JobExecution.objects.filter(notify_pending=True).exists(), message="notifications")
    before = list(JobExecution.objects.values()), list(Job.objects.values())
    device = JobsDevice(mqtt_client, a, dialect)

    for suffix, body in [("b-job/get", {}), ("b-job/update", {"status": "IN_PROGRESS"}),
                         ("b-job/update", {"status": "SUCCEEDED"})]:  # fmt: skip
        outcome, answer = device.ask(suffix, body)
        assert outcome == "rejected"
        assert answer["code"] == ("ResourceNotFound" if dialect == AWS else "execution_not_found")
    assert device.ask("get")[1]["queuedJobs"] == []
    assert "execution" not in device.ask("start-next")[1]
    assert "execution" not in device.ask("$next/get")[1]

    device.client.collect(timeout=1, quiet=0.5)  # anything still on its way (A's retained notifications)
    b_data = (b"b-only", b'"jobId":"b-job"', b.device_id.encode())  # B's document, execution, thing
    assert device.seen and not [m.payload for m in device.seen if any(d in m.payload for d in b_data)]
    assert (list(JobExecution.objects.values()), list(Job.objects.values())) == before


@BOTH
def test_bad_requests_are_refused_and_the_bridge_keeps_answering(
    dialect, start_bridge, jobs_devices, mqtt_client, mqtt_tenant
):
    start_bridge()
    one, _ = jobs_devices
    job_create(tenant=mqtt_tenant, document_type="reboot", job_id="r", device_ids=[one.device_id])
    wait_until(lambda: not JobExecution.objects.filter(notify_pending=True).exists(), message="notifications")
    before = list(JobExecution.objects.values())
    device = JobsDevice(mqtt_client, one, dialect)
    cases = [
        ("r/update", None, b"{not json", "InvalidJson", "parse_error"),
        ("r/update", {"status": 7}, None, "InvalidRequest", "invalid_field"),
        ("r/update", {"status": "SUCCEEDED", "expectedVersion": 9}, None, "VersionMismatch", "stale_execution_number"),
        ("r/update", {"status": "QUEUED"}, None, "InvalidStateTransition", "invalid_transition"),
        ("r/update", {"status": "IN_PROGRESS", "statusDetails": {f"k{n}": "x" * 1000 for n in range(5)}}, None,
         "InvalidRequest", "too_large"),
        ("r/update", {"status": "IN_PROGRESS", "clientToken": "x" * 65}, None, "InvalidRequest",
         "invalid_client_token"),
        ("nope/get", {}, None, "ResourceNotFound", "execution_not_found"),
    ]  # fmt: skip
    for suffix, body, raw, aws_code, native_code in cases:
        outcome, answer = device.ask(suffix, body, raw=raw)
        assert outcome == "rejected", (suffix, body, answer)
        assert answer["code"] == (aws_code if dialect == AWS else native_code), answer
    assert list(JobExecution.objects.values()) == before
    outcome, answer = device.ask("r/update", {"status": "IN_PROGRESS"})
    assert outcome == "accepted", answer
    assert JobExecution.objects.get(job__job_id="r").status == "IN_PROGRESS"
