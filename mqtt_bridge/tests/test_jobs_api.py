"""The MQTT jobs API's handler, called as the bridge's ingest calls it (no broker): every operation in
both dialects, every bad input refused with a reason and the database unchanged, and the retained
notifications' payloads."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from jobs.models import Job, JobExecution
from jobs.services import execution_update, job_create
from mqtt_bridge import jobs_api, topics
from mqtt_bridge.jobs_api import handle_jobs_requests, notify_replies

pytestmark = pytest.mark.django_db

NATIVE, AWS = topics.NATIVE, topics.AWS
BOTH = pytest.mark.parametrize("dialect", [NATIVE, AWS])


def request_of(device, dialect: str, suffix: str) -> topics.Request:
    request = topics.parse_request(topics.jobs_topic(dialect, device.tenant_id, device.device_id, suffix))
    assert request is not None and request.service == topics.JOBS
    return request


def ask(device, dialect: str, suffix: str, body=None) -> tuple[str, dict]:
    """One request through handle_jobs_requests, in a batch transaction as the ingest runs it."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    with transaction.atomic():
        (reply,) = handle_jobs_requests([(request_of(device, dialect, suffix), device, payload)])
    assert not reply.retain
    return reply.topic, json.loads(reply.payload)


def accepted(device, dialect, suffix, body=None) -> dict:
    topic, answer = ask(device, dialect, suffix, body)
    assert topic == topics.jobs_topic(dialect, device.tenant_id, device.device_id, f"{suffix}/accepted"), answer
    assert isinstance(answer.pop("timestamp"), int)
    return answer


def make_jobs(tenant, device, *job_ids, **kwargs):
    now = timezone.now()
    for n, job_id in enumerate(job_ids):
        job_create(tenant=tenant, document_type="fw", document_params={"v": n}, job_id=job_id,
                   device_ids=[device.device_id], **kwargs)  # fmt: skip
        JobExecution.objects.filter(job__job_id=job_id).update(queued_at=now - timedelta(minutes=60 - n))


def snapshot():
    return list(JobExecution.objects.order_by("pk").values()), list(Job.objects.order_by("pk").values())


# --- every operation ---------------------------------------------------------------------------------------


@BOTH
def test_the_whole_flow(tenant, make_device, dialect):
    device = make_device(tenant)
    thing = topics.thing_name(tenant.id, device.device_id)
    make_jobs(tenant, device, "a", "b")

    pending = accepted(device, dialect, "get", {"clientToken": "t-1"})
    assert pending["clientToken"] == "t-1" and pending["inProgressJobs"] == []
    assert [(j["jobId"], j["versionNumber"], j["executionNumber"]) for j in pending["queuedJobs"]] == [
        ("a", 1, 1), ("b", 1, 1)
    ]  # fmt: skip
    assert set(pending["queuedJobs"][0]) == {"jobId", "queuedAt", "lastUpdatedAt", "versionNumber", "executionNumber"}

    started = accepted(device, dialect, "start-next", {"statusDetails": {"step": "1/2"}, "stepTimeoutInMinutes": 5})
    execution = started["execution"]
    assert execution["jobId"] == "a" and execution["thingName"] == thing
    assert execution["jobDocument"] == {"type": "fw", "params": {"v": 0}}
    assert (execution["status"], execution["statusDetails"]) == ("IN_PROGRESS", {"step": "1/2"})
    assert (execution["versionNumber"], execution["executionNumber"]) == (2, 1)
    assert all(isinstance(execution[k], int) for k in ("queuedAt", "startedAt", "lastUpdatedAt"))

    described = accepted(device, dialect, "$next/get", {"includeJobDocument": False})["execution"]
    assert described["jobId"] == "a" and "jobDocument" not in described
    assert accepted(device, dialect, "b/get")["execution"]["status"] == "QUEUED"

    progress = accepted(device, dialect, "a/update", {"status": "IN_PROGRESS", "statusDetails": {"step": "2/2"},
                                                      "expectedVersion": 2, "executionNumber": 1,
                                                      "includeJobExecutionState": True})  # fmt: skip
    assert progress == {"executionState": {"status": "IN_PROGRESS", "statusDetails": {"step": "2/2"},
                                           "versionNumber": 3}}  # fmt: skip
    done = accepted(device, dialect, "a/update", {"status": "SUCCEEDED", "expectedVersion": 3,
                                                  "includeJobDocument": True, "clientToken": "t-2"})  # fmt: skip
    assert done == {"jobDocument": {"type": "fw", "params": {"v": 0}}, "clientToken": "t-2"}
    assert Job.objects.get(job_id="a").status == "COMPLETED"

    pending = accepted(device, dialect, "get")
    assert (pending["inProgressJobs"], [j["jobId"] for j in pending["queuedJobs"]]) == ([], ["b"])
    accepted(device, dialect, "b/update", {"status": "REJECTED", "statusDetails": {"why": "too old"}})
    assert accepted(device, dialect, "start-next") == {}  # nothing pending: no execution
    assert accepted(device, dialect, "$next/get") == {}
    assert accepted(device, dialect, "a/get")["execution"]["status"] == "SUCCEEDED"  # terminal: still described


@BOTH
def test_in_progress_jobs_are_listed_first(tenant, make_device, dialect):
    device = make_device(tenant)
    make_jobs(tenant, device, "a", "b")
    accepted(device, dialect, "b/update", {"status": "IN_PROGRESS"})
    pending = accepted(device, dialect, "get")
    assert [j["jobId"] for j in pending["inProgressJobs"]] == ["b"]
    assert "startedAt" in pending["inProgressJobs"][0]
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["a"]
    assert accepted(device, dialect, "start-next")["execution"]["jobId"] == "b"


# --- bad input ---------------------------------------------------------------------------------------------------

BAD = [
    # (suffix, payload, AWS code, native code, native status)
    ("a/update", b"{nope", "InvalidJson", "parse_error", 400),
    ("a/update", b"\xff\xfe", "InvalidJson", "parse_error", 400),
    ("a/update", b"[1, 2]", "InvalidRequest", "invalid", 400),
    ("get", b'"text"', "InvalidRequest", "invalid", 400),
    ("a/update", {}, "InvalidRequest", "missing_status", 400),
    ("a/update", {"status": 1}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "DONE"}, "InvalidRequest", "invalid_status", 400),
    ("a/update", {"status": "NONSENSE"}, "InvalidRequest", "invalid_status", 400),
    ("a/update", {"status": "IN_PROGRESS", "statusDetails": "50%"}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "statusDetails": {"p": 50}}, "InvalidRequest", "invalid_status_details",
     400),
    ("a/update", {"status": "IN_PROGRESS", "statusDetails": {"bad key": "x"}}, "InvalidRequest",
     "invalid_status_details", 400),
    ("a/update", {"status": "IN_PROGRESS", "statusDetails": {f"k{n}": "x" * 1000 for n in range(5)}},
     "InvalidRequest", "too_large", 413),
    ("a/update", {"status": "IN_PROGRESS", "expectedVersion": "1"}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "expectedVersion": 1.5}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "expectedVersion": 2**40}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "executionNumber": True}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "includeJobDocument": "yes"}, "InvalidRequest", "invalid_field", 400),
    ("a/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0}, "InvalidRequest", "invalid_step_timeout", 400),
    ("a/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 10081}, "InvalidRequest", "invalid_step_timeout",
     400),
    ("a/update", {"status": "IN_PROGRESS", "expectedVerison": 1}, "InvalidRequest", "unknown_fields", 400),
    ("a/update", {"status": "IN_PROGRESS", "clientToken": "x" * 65}, "InvalidRequest", "invalid_client_token", 400),
    ("a/update", {"status": "IN_PROGRESS", "clientToken": 7}, "InvalidRequest", "invalid_client_token", 400),
    ("a/update", {"status": "IN_PROGRESS", "executionNumber": 2}, "ResourceNotFound", "execution_not_found", 404),
    ("nope/update", {"status": "IN_PROGRESS"}, "ResourceNotFound", "execution_not_found", 404),
    ("bad%id/update", {"status": "IN_PROGRESS"}, "ResourceNotFound", "job_not_found", 404),
    ("$next/update", {"status": "IN_PROGRESS"}, "ResourceNotFound", "job_not_found", 404),
    ("nope/get", {}, "ResourceNotFound", "execution_not_found", 404),
    ("a/get", {"executionNumber": 7}, "ResourceNotFound", "execution_not_found", 404),
    ("a/get", {"includeJobDocument": 1}, "InvalidRequest", "invalid_field", 400),
    ("start-next", {"stepTimeoutInMinutes": -1}, "InvalidRequest", "invalid_step_timeout", 400),
    ("start-next", {"statusDetails": {"n": None}}, "InvalidRequest", "invalid_status_details", 400),
    ("start-next", {"jobId": "a"}, "InvalidRequest", "unknown_fields", 400),
    ("get", {"thingName": "x"}, "InvalidRequest", "unknown_fields", 400),
]  # fmt: skip


@BOTH
@pytest.mark.parametrize(("suffix", "body", "aws_code", "code", "status"), BAD)
def test_bad_requests_are_rejected_with_a_reason_and_change_nothing(
    tenant, make_device, dialect, suffix, body, aws_code, code, status
):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    before = snapshot()
    topic, answer = ask(device, dialect, suffix, body)
    assert topic == topics.jobs_topic(dialect, tenant.id, device.device_id, f"{suffix}/rejected")
    if dialect == AWS:
        assert answer["code"] == aws_code and answer["message"]
        assert "executionState" not in answer
    else:
        assert (answer["code"], answer["status"]) == (code, status) and answer["detail"]
    assert isinstance(answer["timestamp"], int) and "clientToken" not in answer
    assert snapshot() == before


@BOTH
def test_an_oversize_payload_is_rejected(tenant, make_device, dialect, settings):
    settings.MQTT_MAX_PAYLOAD_BYTES = 100
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    before = snapshot()
    _, answer = ask(device, dialect, "a/update", {"status": "IN_PROGRESS", "statusDetails": {"log": "x" * 200}})
    assert answer["code"] == ("InvalidRequest" if dialect == AWS else "too_large")
    assert "MQTT_MAX_PAYLOAD_BYTES" in answer.get("message", answer.get("detail"))
    assert snapshot() == before


@BOTH
def test_an_illegal_transition_carries_the_execution_state(tenant, make_device, dialect):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    accepted(device, dialect, "a/update", {"status": "IN_PROGRESS", "statusDetails": {"step": "1"}})
    accepted(device, dialect, "a/update", {"status": "FAILED"})
    before = snapshot()
    topic, answer = ask(device, dialect, "a/update", {"status": "IN_PROGRESS", "clientToken": "c"})
    assert topic.endswith("/a/update/rejected") and answer["clientToken"] == "c"
    if dialect == AWS:
        assert answer["code"] == "InvalidStateTransition"
        assert answer["executionState"] == {"status": "FAILED", "statusDetails": {"step": "1"}, "versionNumber": 3}
        assert answer["message"] == "Cannot transition from FAILED to IN_PROGRESS"
    else:
        assert (answer["code"], answer["current_status"], answer["execution_number"]) == (
            "invalid_transition", "FAILED", 3
        )  # fmt: skip
    assert snapshot() == before


@BOTH
def test_a_stale_expected_version_is_a_version_mismatch_with_the_state(tenant, make_device, dialect):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    accepted(device, dialect, "start-next")
    before = snapshot()
    _, answer = ask(device, dialect, "a/update", {"status": "SUCCEEDED", "expectedVersion": 1})
    if dialect == AWS:
        assert answer["code"] == "VersionMismatch"
        assert answer["executionState"] == {"status": "IN_PROGRESS", "versionNumber": 2}
        assert "expectedVersion" in answer["message"] and "versionNumber 2" in answer["message"]
    else:
        assert (answer["code"], answer["status"], answer["execution_number"]) == ("stale_execution_number", 409, 2)
    assert snapshot() == before


@BOTH
def test_queued_jobs_of_an_expired_job_cannot_start(tenant, make_device, dialect):
    device = make_device(tenant)
    make_jobs(tenant, device, "a", expires_at=timezone.now() + timedelta(hours=1))
    Job.objects.filter(job_id="a").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert accepted(device, dialect, "start-next") == {}
    _, answer = ask(device, dialect, "a/update", {"status": "IN_PROGRESS"})
    assert answer["code"] == ("InvalidStateTransition" if dialect == AWS else "job_expired")


@BOTH
def test_another_devices_or_tenants_job_is_not_found(tenant, other_tenant, make_device, dialect):
    mine, neighbour = make_device(tenant, "mine"), make_device(tenant, "neighbour")
    stranger = make_device(other_tenant, "mine")  # same device id, other tenant
    make_jobs(tenant, neighbour, "theirs")
    make_jobs(other_tenant, stranger, "foreign")
    before = snapshot()
    for suffix, body in [("theirs/get", {}), ("theirs/update", {"status": "IN_PROGRESS"}),
                         ("foreign/get", {}), ("foreign/update", {"status": "SUCCEEDED"})]:  # fmt: skip
        _, answer = ask(mine, dialect, suffix, body)
        assert answer["code"] == ("ResourceNotFound" if dialect == AWS else "execution_not_found")
    assert accepted(mine, dialect, "get") == {"inProgressJobs": [], "queuedJobs": []}
    assert accepted(mine, dialect, "start-next") == {}
    assert snapshot() == before


def test_one_refusal_does_not_spoil_the_others_in_the_batch(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a", "b")
    items = [
        (request_of(device, AWS, "a/update"), device, b'{"status": "IN_PROGRESS"}'),
        (request_of(device, AWS, "a/update"), device, b'{"status": "IN_PROGRESS", "expectedVersion": 1}'),  # stale
        (request_of(device, NATIVE, "b/update"), device, b'{"status": "SUCCEEDED"}'),  # QUEUED -> SUCCEEDED: AWS rules
        (request_of(device, NATIVE, "b/update"), device, b"{broken"),
        (request_of(device, AWS, "a/update"), device, b'{"status": "SUCCEEDED", "expectedVersion": 2}'),
    ]
    with transaction.atomic():
        replies = handle_jobs_requests(items)
    assert [r.topic.rsplit("/", 1)[1] for r in replies] == ["accepted", "rejected", "accepted", "rejected", "accepted"]
    statuses = dict(JobExecution.objects.values_list("job__job_id", "status"))
    assert statuses == {"a": "SUCCEEDED", "b": "SUCCEEDED"}
    assert JobExecution.objects.get(job__job_id="a").execution_number == 3


def test_a_database_error_propagates_so_the_batch_is_retried(tenant, make_device, monkeypatch):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")

    def broken(**kwargs):
        raise OperationalError("connection lost")

    monkeypatch.setattr(jobs_api, "execution_update", broken)
    with pytest.raises(DatabaseError), transaction.atomic():
        handle_jobs_requests([(request_of(device, AWS, "a/update"), device, b'{"status": "IN_PROGRESS"}')])

    def gone(*args, **kwargs):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(jobs_api, "pending_executions", gone)
    with pytest.raises(InterfaceError), transaction.atomic():
        handle_jobs_requests([(request_of(device, NATIVE, "get"), device, b"")])


def test_a_bug_is_an_internal_error_not_a_crash(tenant, make_device, monkeypatch, caplog):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(jobs_api, "pending_executions", broken)
    _, answer = ask(device, AWS, "get", {"clientToken": "k"})
    assert (answer["code"], answer["clientToken"]) == ("InternalError", "k")
    _, answer = ask(device, NATIVE, "get")
    assert (answer["code"], answer["status"]) == ("internal_error", 500)
    assert "jobs request failed" in caplog.text
    assert accepted(device, AWS, "a/get")["execution"]["jobId"] == "a"  # the others still work


# --- notifications ----------------------------------------------------------------------------------------------


def payloads(replies) -> dict[str, dict | None]:
    return {r.topic: json.loads(r.payload) if r.payload else None for r in replies if r.retain}


def test_notify_payloads_of_both_dialects(tenant, make_device):
    from jobs.selectors import pending_executions_for_devices

    device = make_device(tenant)
    thing = topics.thing_name(tenant.id, device.device_id)
    make_jobs(tenant, device, "a", "b")
    execution_update(device=device, job_id="b", status="IN_PROGRESS")
    executions = pending_executions_for_devices([device.pk])[device.pk]
    got = payloads(notify_replies(tenant.id, device.device_id, executions, active=True, dialects=["native", "aws"]))

    seed = got.pop(topics.jobs_notify(tenant.id, device.device_id))
    assert [(j["job_id"], j["status"], j["document"]) for j in seed["jobs"]] == [
        ("b", "IN_PROGRESS", {"type": "fw", "params": {"v": 1}}), ("a", "QUEUED", {"type": "fw", "params": {"v": 0}})
    ]  # fmt: skip
    aws_notify = got.pop(f"$aws/things/{thing}/jobs/notify")
    assert set(aws_notify) == {"jobs", "timestamp"}
    assert [j["jobId"] for j in aws_notify["jobs"]["IN_PROGRESS"]] == ["b"]
    assert [j["jobId"] for j in aws_notify["jobs"]["QUEUED"]] == ["a"]
    for topic in (
        f"$aws/things/{thing}/jobs/notify-next",
        f"tenant/{tenant.id}/device/{device.device_id}/jobs/notify-next",
    ):
        nxt = got.pop(topic)
        assert nxt["execution"]["jobId"] == "b" and nxt["execution"]["jobDocument"] == {
            "type": "fw",
            "params": {"v": 1},
        }
        assert nxt["execution"]["thingName"] == thing and isinstance(nxt["timestamp"], int)
    assert got == {}


def test_notify_with_nothing_pending_and_for_a_decommissioned_device(tenant, make_device):
    device = make_device(tenant)
    thing = topics.thing_name(tenant.id, device.device_id)
    empty = payloads(notify_replies(tenant.id, device.device_id, [], active=True, dialects=["native", "aws"]))
    assert empty[topics.jobs_notify(tenant.id, device.device_id)] == {"jobs": []}
    assert empty[f"$aws/things/{thing}/jobs/notify"]["jobs"] == {}
    assert set(empty[f"$aws/things/{thing}/jobs/notify-next"]) == {"timestamp"}
    cleared = notify_replies(tenant.id, device.device_id, [], active=False, dialects=["native", "aws"])
    assert len(cleared) == 4 and all(r.payload == b"" and r.retain for r in cleared)


@pytest.mark.parametrize(
    ("dialects", "suffixes"),
    [
        ([], {"tenant/notify"}),
        (["native"], {"tenant/notify", "tenant/notify-next"}),
        (["aws"], {"tenant/notify", "$aws/notify", "$aws/notify-next"}),
    ],
)
def test_notify_respects_the_dialects_the_seed_notify_is_always_on(tenant, make_device, dialects, suffixes):
    device = make_device(tenant)
    replies = notify_replies(tenant.id, device.device_id, [], active=True, dialects=dialects)
    assert {f"{r.topic.split('/', 1)[0]}/{r.topic.rsplit('/', 1)[1]}" for r in replies} == suffixes


@pytest.mark.django_db
def test_retained_and_throttled_jobs_requests_get_aws_jobs_codes(tenant, make_device, settings):
    """Refused before the handler (ingest), an AWS jobs request still gets AWS IoT Jobs' error names."""
    import json as json_

    from mqtt_bridge.ingest import Incoming, ingest_batch, request_replies

    make_device(tenant, "d1")
    settings.MQTT_REPORT_RATE_LIMIT = "1/m"
    settings.MQTT_REPORT_RATE_BURST = 1
    topic = topics.jobs_topic(topics.AWS, tenant.id, "d1", "get")
    verdicts = ingest_batch([
        Incoming(topic, b'{"clientToken": "r"}', retained=True),
        Incoming(topic, b'{"clientToken": "a"}'),
        Incoming(topic, b'{"clientToken": "b"}'),
    ])  # fmt: skip
    answers = [json_.loads(payload) for _, payload in request_replies(verdicts)]
    assert [(a.get("code"), a["clientToken"]) for a in answers] == [
        ("InvalidRequest", "r"), (None, "a"), ("RequestThrottled", "b")]  # fmt: skip
    assert "inProgressJobs" in answers[1]  # the one within the rate was answered


def test_the_aws_execution_number_is_the_attempt(tenant, device):
    """A retry queues the execution again as its next attempt: AWS's executionNumber follows it."""
    job = job_create(tenant=tenant, document_type="fw", device_ids=[device.device_id],
                     retry_config={"criteria": [{"failure_type": "FAILED", "number_of_retries": 1}]})  # fmt: skip
    execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")
    execution_update(device=device, job_id=job.job_id, status="FAILED")
    assert accepted(device, AWS, f"{job.job_id}/get", {})["execution"]["executionNumber"] == 2
    topic, refused = ask(device, AWS, f"{job.job_id}/get", {"executionNumber": 1})  # the first attempt is over
    assert topic.endswith("/rejected") and refused["code"] == "ResourceNotFound"
    assert accepted(device, AWS, f"{job.job_id}/get", {"executionNumber": 2})["execution"]["status"] == "QUEUED"
