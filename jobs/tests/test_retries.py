"""Retries: FAILED and TIMED_OUT executions queued again as their next attempt, counted per failure
type, each attempt in the history; the AWS executionNumber is the attempt."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from iotcloud.errors import InvalidInput
from iotcloud.testing import device_client
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution
from jobs.retry import parse_retry
from jobs.services import execution_update, job_create, job_sweep

pytestmark = pytest.mark.django_db


def retrying(tenant, device, criteria, **extra) -> Job:
    return job_create(tenant=tenant, document_type="fw", device_ids=[device.device_id],
                      retry_config={"criteria": criteria}, **extra)  # fmt: skip


def execution(job) -> JobExecution:
    return JobExecution.objects.get(job=job)


def run_and(device, job, status):
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    return execution_update(device=device, job_id=job.job_id, status=status, status_details={"error": "disk"})


def time_out(job):
    JobExecution.objects.filter(job=job).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"criteria": [{"failure_type": "REJECTED", "number_of_retries": 1}]}, "failure_type"),
        ({"criteria": [{"failure_type": "FAILED", "number_of_retries": 11}]}, "number_of_retries"),
        ({"criteria": [{"failure_type": "FAILED", "number_of_retries": -1}]}, "number_of_retries"),
        ({"criteria": [{"failure_type": "FAILED", "number_of_retries": 6},
                       {"failure_type": "TIMED_OUT", "number_of_retries": 5}]}, "at most 10 retries in all"),
        ({"criteria": [{"failure_type": "ALL", "number_of_retries": 1},
                       {"failure_type": "FAILED", "number_of_retries": 1}]}, "ALL cannot be combined"),
        ({"criteria": [{"failure_type": "FAILED"}]}, "number_of_retries"),
        ({"retries": 3}, "retry_config"),
    ],
)  # fmt: skip
def test_bad_retry_configurations_are_refused_naming_the_field(config, field):
    with pytest.raises(InvalidInput) as refused:
        parse_retry(config)
    assert field in refused.value.message and refused.value.code == "invalid_retry"


def test_a_failed_execution_is_retried_until_its_retries_run_out(tenant, device):
    job = retrying(tenant, device, [{"failure_type": "FAILED", "number_of_retries": 2}])
    for attempt in (1, 2):
        answer = run_and(device, job, ExecutionStatus.FAILED)
        assert (answer.status, answer.attempt, answer.failed_retries) == ("QUEUED", attempt + 1, attempt)
        assert Job.objects.get(pk=job.pk).remaining == 1  # not terminal: the job waits for the retry
        (pending,) = device_client(device).get("/device/v1/jobs/pending", expect=200).json()["jobs"]
        assert pending["status"] == "QUEUED" and pending["job_id"] == job.job_id
    final = run_and(device, job, ExecutionStatus.FAILED)
    assert (final.status, final.attempt) == ("FAILED", 3)
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED
    history = list(execution(job).history.order_by("id").values_list("status", "actor"))
    assert history == [("IN_PROGRESS", "device"), ("FAILED", "device"), ("QUEUED", "platform")] * 2 + [
        ("IN_PROGRESS", "device"), ("FAILED", "device")
    ]  # fmt: skip
    retries = execution(job).history.filter(status="QUEUED").values_list("status_details", flat=True)
    assert list(retries) == [{"retry": 1, "after": "FAILED"}, {"retry": 2, "after": "FAILED"}]


def test_timed_out_and_failed_count_separately(tenant, device):
    job = retrying(tenant, device, [{"failure_type": "TIMED_OUT", "number_of_retries": 1},
                                    {"failure_type": "FAILED", "number_of_retries": 1}],
                   in_progress_timeout_seconds=60)  # fmt: skip
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    time_out(job)
    assert (execution(job).status, execution(job).attempt, execution(job).timed_out_retries) == ("QUEUED", 2, 1)
    assert run_and(device, job, ExecutionStatus.FAILED).status == "QUEUED"  # its FAILED retry is still there
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    time_out(job)
    assert (execution(job).status, execution(job).attempt) == ("TIMED_OUT", 3)
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED


def test_all_counts_both_failure_types_together(tenant, device):
    job = retrying(tenant, device, [{"failure_type": "ALL", "number_of_retries": 1}], in_progress_timeout_seconds=60)
    assert run_and(device, job, ExecutionStatus.FAILED).status == "QUEUED"
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    time_out(job)
    assert execution(job).status == "TIMED_OUT"


def test_rejected_and_no_configuration_are_never_retried(tenant, device, make_device):
    job = retrying(tenant, device, [{"failure_type": "ALL", "number_of_retries": 3}])
    assert run_and(device, job, ExecutionStatus.REJECTED).status == "REJECTED"
    plain = job_create(tenant=tenant, document_type="fw", device_ids=[device.device_id])
    assert run_and(device, plain, ExecutionStatus.FAILED).status == "FAILED"


def test_the_api_takes_a_retry_configuration_and_shows_attempts(operator, tenant, device):
    body = {"document_type": "fw", "targets": {"device_ids": [device.device_id]}}
    refused = operator.post("/customer/jobs", {**body, "retry_config": {"criteria": [
        {"failure_type": "FAILED", "number_of_retries": 20}]}}, expect=400).json()  # fmt: skip
    assert "number_of_retries" in str(refused) and not Job.objects.exists()
    config = {"criteria": [{"failure_type": "FAILED", "number_of_retries": 1}]}
    created = operator.post("/customer/jobs", {**body, "retry_config": config}, expect=201).json()
    assert created["retry_config"] == config
    run_and(device, Job.objects.get(job_id=created["job_id"]), ExecutionStatus.FAILED)
    (listed,) = operator.get(f"/customer/jobs/{created['job_id']}/executions", expect=200).json()["results"]
    assert (listed["status"], listed["attempt"]) == ("QUEUED", 2)


def test_a_canceled_jobs_running_execution_is_not_retried(tenant, device):
    """Cancel leaves an IN_PROGRESS execution to finish; its failure (or timeout) must not queue it again."""
    from jobs.services import job_cancel

    job = retrying(tenant, device, [{"failure_type": "ALL", "number_of_retries": 3}], in_progress_timeout_seconds=60)
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    job_cancel(job=job)
    assert execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.FAILED).status == "FAILED"
    assert device_client(device).get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}

    other = retrying(tenant, device, [{"failure_type": "TIMED_OUT", "number_of_retries": 3}],
                     in_progress_timeout_seconds=60)  # fmt: skip
    execution_update(device=device, job_id=other.job_id, status=ExecutionStatus.IN_PROGRESS,
                     step_timeout_minutes=1)  # fmt: skip
    job_cancel(job=other)
    JobExecution.objects.filter(job=other).update(step_timeout_at=timezone.now() - timedelta(seconds=1))
    job_sweep()
    assert execution(other).status == "TIMED_OUT"
