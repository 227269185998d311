"""AWS IoT Jobs' device rules in the services: start-next, the next execution, progress updates,
statusDetails, step timers; and start-next over HTTP."""

from datetime import timedelta

import pytest
from django.utils import timezone

from iotcloud.errors import Conflict, DomainError, InvalidInput, PayloadTooLarge
from iotcloud.testing import device_client
from jobs.choices import ExecutionStatus, JobStatus, TransitionRules
from jobs.models import Job, JobExecution
from jobs.selectors import next_execution, pending_jobs, pending_jobs_for_devices
from jobs.services import execution_start_next, execution_update, job_create, job_sweep

pytestmark = pytest.mark.django_db

AWS = TransitionRules.AWS


def make_jobs(tenant, device, *job_ids, **kwargs):
    """One job per id for `device`, queued a minute apart in the order given (oldest first)."""
    now = timezone.now()
    for n, job_id in enumerate(job_ids):
        job_create(tenant=tenant, document_type="reboot", job_id=job_id, device_ids=[device.device_id], **kwargs)
        JobExecution.objects.filter(job__job_id=job_id).update(queued_at=now - timedelta(minutes=60 - n))


def execution(job_id) -> JobExecution:
    return JobExecution.objects.get(job__job_id=job_id)


# --- start-next and the next execution ------------------------------------------------------------------


def test_start_next_claims_the_oldest_queued_then_returns_it_while_in_progress(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a", "b")
    assert next_execution(device).job.job_id == "a"

    started = execution_start_next(device=device, status_details={"step": "download"}, step_timeout_minutes=5)
    assert (started.job.job_id, started.status, started.execution_number) == ("a", "IN_PROGRESS", 2)
    assert started.status_details == {"step": "download"} and started.started_at is not None
    assert started.step_timeout_at == pytest.approx(started.started_at + timedelta(minutes=5), abs=timedelta(seconds=1))
    assert started.job.document_type == "reboot"

    # Already IN_PROGRESS: returned as it is (details, version and step timer unchanged), b stays QUEUED.
    again = execution_start_next(device=device, status_details={"step": "other"}, step_timeout_minutes=60)
    assert (again.pk, again.execution_number, again.status_details) == (started.pk, 2, {"step": "download"})
    assert again.step_timeout_at == started.step_timeout_at
    assert execution("b").status == "QUEUED"


def test_in_progress_comes_first_even_when_queued_later(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "old", "new")
    execution_update(device=device, job_id="new", status="IN_PROGRESS")
    assert next_execution(device).job.job_id == "new"
    assert execution_start_next(device=device).job.job_id == "new"
    assert [(j["job_id"], j["status"]) for j in pending_jobs(device)] == [("new", "IN_PROGRESS"), ("old", "QUEUED")]


def test_start_next_with_nothing_pending_is_none(tenant, make_device):
    device, other = make_device(tenant, "d"), make_device(tenant, "other")
    make_jobs(tenant, other, "theirs")
    assert execution_start_next(device=device) is None
    assert next_execution(device) is None
    assert execution("theirs").status == "QUEUED"


def test_start_next_skips_expired_jobs(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "expired", "fresh", expires_at=timezone.now() + timedelta(hours=1))
    Job.objects.filter(job_id="expired").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert execution_start_next(device=device).job.job_id == "fresh"
    assert execution("expired").status == "QUEUED"  # the sweeper's to close


def test_start_next_after_the_last_job_finished_is_none_and_the_job_completes(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "only")
    execution_start_next(device=device)
    execution_update(device=device, job_id="only", status="SUCCEEDED", rules=AWS)
    assert execution_start_next(device=device) is None
    assert Job.objects.get(job_id="only").status == JobStatus.COMPLETED


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"status_details": {"n": 1}}, "invalid_status_details"),
        ({"status_details": "text"}, "not_an_object"),
        ({"step_timeout_minutes": 0}, "invalid_step_timeout"),
        ({"step_timeout_minutes": -1}, "invalid_step_timeout"),  # -1 cancels a timer on update only
        ({"step_timeout_minutes": 10081}, "invalid_step_timeout"),
        ({"step_timeout_minutes": "5"}, "invalid_step_timeout"),
    ],
)
def test_start_next_refuses_bad_input_and_changes_nothing(tenant, make_device, kwargs, code):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    before = list(JobExecution.objects.values())
    with pytest.raises(DomainError) as error:
        execution_start_next(device=device, rules=AWS, **kwargs)
    assert error.value.code == code
    assert list(JobExecution.objects.values()) == before


# --- AWS rules: progress updates, statusDetails, versions ---------------------------------------------------


def test_progress_updates_keep_started_at_and_the_pending_list(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    started = execution_start_next(device=device)
    JobExecution.objects.filter(pk=started.pk).update(notify_pending=False)  # the bridge published the list
    progress = execution_update(device=device, job_id="a", status="IN_PROGRESS", status_details={"progress": "50%"},
                                execution_number=2, rules=AWS)  # fmt: skip
    assert (progress.status, progress.execution_number, progress.started_at) == ("IN_PROGRESS", 3, started.started_at)
    assert progress.status_details == {"progress": "50%"}
    assert not progress.notify_pending  # a progress update changes neither list nor next (as AWS: no notify)
    done = execution_update(device=device, job_id="a", status="SUCCEEDED", rules=AWS)
    assert done.notify_pending and done.step_timeout_at is None


def test_the_seed_table_still_refuses_progress_updates(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    execution_update(device=device, job_id="a", status="IN_PROGRESS")
    with pytest.raises(InvalidInput, match="Cannot transition from IN_PROGRESS to IN_PROGRESS"):
        execution_update(device=device, job_id="a", status="IN_PROGRESS")


def test_a_stale_version_is_refused_with_the_current_state(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    execution_update(device=device, job_id="a", status="IN_PROGRESS", status_details={"step": "1"}, rules=AWS)
    before = list(JobExecution.objects.values())
    with pytest.raises(Conflict) as error:
        execution_update(device=device, job_id="a", status="SUCCEEDED", execution_number=1, rules=AWS)
    assert error.value.code == "stale_execution_number"
    assert error.value.execution == {"status": "IN_PROGRESS", "status_details": {"step": "1"}, "execution_number": 2}
    assert error.value.body()["current_status"] == "IN_PROGRESS" and error.value.body()["execution_number"] == 2
    assert list(JobExecution.objects.values()) == before


def test_a_terminal_execution_is_final_under_aws_rules(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    execution_update(device=device, job_id="a", status="REJECTED", rules=AWS)  # QUEUED -> REJECTED: AWS allows it
    with pytest.raises(InvalidInput) as error:
        execution_update(device=device, job_id="a", status="IN_PROGRESS", rules=AWS)
    assert error.value.code == "invalid_transition" and error.value.execution["status"] == "REJECTED"
    assert Job.objects.get(job_id="a").status == JobStatus.COMPLETED


@pytest.mark.parametrize(
    ("details", "error_class", "code"),
    [
        ({"n": 1}, InvalidInput, "invalid_status_details"),
        ({"n": {"deep": "x"}}, InvalidInput, "invalid_status_details"),
        ({"bad key": "x"}, InvalidInput, "invalid_status_details"),
        ({"k" * 129: "x"}, InvalidInput, "invalid_status_details"),
        ({"empty": ""}, InvalidInput, "invalid_status_details"),
        ({"long": "x" * 1025}, InvalidInput, "invalid_status_details"),
        ({"ctrl": "a\nb"}, InvalidInput, "invalid_status_details"),
        ({f"k{n}": "x" * 1000 for n in range(5)}, PayloadTooLarge, "too_large"),  # JOB_MAX_STATUS_DETAILS_BYTES
        (["x"], InvalidInput, "not_an_object"),
    ],
)
def test_aws_status_details_are_a_map_of_strings_within_the_limits(tenant, make_device, details, error_class, code):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    before = list(JobExecution.objects.values())
    with pytest.raises(error_class) as error:
        execution_update(device=device, job_id="a", status="IN_PROGRESS", status_details=details, rules=AWS)
    assert error.value.code == code
    assert list(JobExecution.objects.values()) == before


def test_aws_status_details_accept_what_aws_accepts(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    details = {"step:1_of-2": "é 50% ✓", "k" * 128: "x" * 1024}
    assert execution_update(device=device, job_id="a", status="IN_PROGRESS", status_details=details,
                            rules=AWS).status_details == details  # fmt: skip


# --- step timers ----------------------------------------------------------------------------------------------


def test_a_step_timer_times_the_execution_out_and_completes_the_job(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    started = execution_start_next(device=device, step_timeout_minutes=2)
    assert job_sweep(now=started.started_at + timedelta(minutes=1))["timed_out"] == 0
    assert job_sweep(now=started.started_at + timedelta(minutes=2, seconds=1))["timed_out"] == 1
    timed_out = execution("a")
    assert timed_out.status == "TIMED_OUT" and timed_out.status_details == {"reason": "step timeout exceeded"}
    assert timed_out.notify_pending
    assert Job.objects.get(job_id="a").status == JobStatus.COMPLETED
    with pytest.raises(InvalidInput, match="Cannot transition from TIMED_OUT to SUCCEEDED"):
        execution_update(device=device, job_id="a", status="SUCCEEDED", rules=AWS)


def test_an_update_resets_or_cancels_the_step_timer(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    started = execution_start_next(device=device, step_timeout_minutes=2)
    reset = execution_update(device=device, job_id="a", status="IN_PROGRESS", step_timeout_minutes=10, rules=AWS)
    assert reset.step_timeout_at > started.step_timeout_at + timedelta(minutes=7)
    assert job_sweep(now=started.started_at + timedelta(minutes=5))["timed_out"] == 0
    kept = execution_update(device=device, job_id="a", status="IN_PROGRESS", status_details={"p": "1"}, rules=AWS)
    assert kept.step_timeout_at == reset.step_timeout_at  # no stepTimeoutInMinutes: the timer stays
    canceled = execution_update(device=device, job_id="a", status="IN_PROGRESS", step_timeout_minutes=-1, rules=AWS)
    assert canceled.step_timeout_at is None
    assert job_sweep(now=timezone.now() + timedelta(days=30))["timed_out"] == 0
    assert execution("a").status == "IN_PROGRESS"


def test_the_jobs_in_progress_timeout_still_bounds_a_longer_step_timer(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a", in_progress_timeout_seconds=60)
    started = execution_start_next(device=device, step_timeout_minutes=30)
    assert job_sweep(now=started.started_at + timedelta(seconds=61))["timed_out"] == 1
    assert "in-progress timeout" in execution("a").status_details["reason"]


# --- pending lists: IN_PROGRESS included ------------------------------------------------------------------------


def test_pending_lists_include_in_progress_executions_first(tenant, make_device):
    device, other = make_device(tenant, "d"), make_device(tenant, "other")
    make_jobs(tenant, device, "a", "b", "c")
    execution_update(device=device, job_id="c", status="IN_PROGRESS")
    execution_update(device=device, job_id="b", status="IN_PROGRESS")
    execution_update(device=device, job_id="b", status="SUCCEEDED")
    expected = [("c", "IN_PROGRESS"), ("a", "QUEUED")]
    assert [(j["job_id"], j["status"]) for j in pending_jobs(device)] == expected
    lists = pending_jobs_for_devices([device.pk, other.pk])
    assert [(j["job_id"], j["status"]) for j in lists[device.pk]] == expected
    assert lists[other.pk] == []
    assert lists[device.pk] == pending_jobs(device)
    assert set(lists[device.pk][0]) == {"job_id", "execution_number", "document", "queued_at", "expires_at", "status"}


# --- start-next over HTTP ------------------------------------------------------------------------------------------


def test_http_start_next(tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    client = device_client(device)
    body = client.post("/device/v1/jobs/start-next", {"status_details": {"step": 1}, "step_timeout_in_minutes": 5},
                       expect=200).json()  # fmt: skip
    started = body["execution"]
    assert (started["job_id"], started["status"], started["execution_number"]) == ("a", "IN_PROGRESS", 2)
    assert started["status_details"] == {"step": 1}  # the native API's details: any JSON object
    assert started["document"] == {"type": "reboot", "params": {}} and started["started_at"]
    assert execution("a").step_timeout_at is not None
    assert client.post("/device/v1/jobs/start-next", {}, expect=200).json()["execution"]["job_id"] == "a"
    client.put("/device/v1/jobs/a/execution", {"status": "SUCCEEDED"}, expect=200)
    assert client.post("/device/v1/jobs/start-next", expect=200).json() == {"execution": None}


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"status_details": "x"}, 400, "status_details"),
        ({"step_timeout_in_minutes": 0}, 400, "step_timeout_in_minutes"),
        ({"step_timeout_in_minutes": "5"}, 400, "step_timeout_in_minutes"),
        ({"status_details": {"log": "x" * 5000}}, 413, "JOB_MAX_STATUS_DETAILS_BYTES"),
        ({"status": "IN_PROGRESS"}, 400, "status"),
    ],
)
def test_http_start_next_refuses_bad_bodies(tenant, make_device, body, status, named):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    before = list(JobExecution.objects.values())
    response = device_client(device).post("/device/v1/jobs/start-next", body, expect=status).json()
    assert named in response["detail"]
    assert list(JobExecution.objects.values()) == before


def test_http_start_next_needs_a_valid_token(api_client_factory, tenant, make_device):
    device = make_device(tenant)
    make_jobs(tenant, device, "a")
    assert api_client_factory().post("/device/v1/jobs/start-next", {}, expect=401).json()["detail"] == (
        "Missing provision token"
    )
    api_client_factory(HTTP_X_PROVISION_TOKEN="iotd_nope").post("/device/v1/jobs/start-next", {}, expect=401)
    device_client(device).get("/device/v1/jobs/start-next", expect=405)
    assert execution("a").status == ExecutionStatus.QUEUED


def test_http_start_next_is_in_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths["/device/v1/jobs/start-next"]["post"]
    assert operation["operationId"] == "device_jobs_start_next"
    assert operation["security"] == [{"ClientCertificate": []}, {"ProvisionToken": []}]  # either device credential
    assert {"200", "400", "401", "409", "413"} <= set(operation["responses"])
