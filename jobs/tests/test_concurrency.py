"""Concurrent device updates against PostgreSQL: one winner per claim, one completion per job."""

import logging

import pytest

from iotcloud.testing import device_client
from jobs.choices import JobStatus
from jobs.models import Job, JobExecution
from jobs.services import job_create
from twin.tests.test_concurrency import run_in_threads


@pytest.mark.postgres
def test_ten_concurrent_claims_exactly_one_wins(postgres_only, tenant, make_device):
    device = make_device(tenant)
    job = job_create(tenant=tenant, document_type="reboot", device_ids=[device.device_id])
    client = device_client(device)
    url = f"/device/v1/jobs/{job.job_id}/execution"

    statuses = run_in_threads(
        lambda n: client.put(url, {"status": "IN_PROGRESS", "execution_number": 1}).status_code, 10
    )

    assert statuses.count(200) == 1
    assert all(s in (400, 409) for s in statuses if s != 200)
    execution = JobExecution.objects.get(job=job)
    assert execution.status == "IN_PROGRESS" and execution.execution_number == 2


@pytest.mark.postgres
def test_concurrent_last_executions_complete_the_job_once(postgres_only, tenant, make_device, caplog):
    devices = [make_device(tenant, f"d{n}") for n in range(12)]
    job = job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
    clients = [device_client(d) for d in devices]
    url = f"/device/v1/jobs/{job.job_id}/execution"
    for client in clients:
        client.put(url, {"status": "IN_PROGRESS"}, expect=200)

    with caplog.at_level(logging.INFO, logger="jobs.services"):
        statuses = run_in_threads(lambda n: clients[n].put(url, {"status": "SUCCEEDED"}).status_code, len(clients))

    assert statuses == [200] * len(clients)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.remaining == 0
    completions = [r for r in caplog.records if r.getMessage().startswith("job completed")]
    assert len(completions) == 1
    assert Job.objects.filter(status=JobStatus.COMPLETED).count() == 1


@pytest.mark.postgres
def test_concurrent_start_next_claims_one_execution_and_all_get_it(postgres_only, tenant, make_device):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.services import execution_start_next

    device = make_device(tenant)
    for n, job_id in enumerate(["first", "second"]):
        job_create(tenant=tenant, document_type="reboot", job_id=job_id, device_ids=[device.device_id])
        JobExecution.objects.filter(job__job_id=job_id).update(queued_at=timezone.now() - timedelta(minutes=10 - n))

    started = run_in_threads(lambda n: execution_start_next(device=device, status_details={"by": str(n)}).pk, 10)

    first = JobExecution.objects.get(job__job_id="first")
    assert started == [first.pk] * 10  # the losers found the winner's execution IN_PROGRESS
    assert first.status == "IN_PROGRESS" and first.execution_number == 2  # claimed exactly once
    assert JobExecution.objects.get(job__job_id="second").status == "QUEUED"


@pytest.mark.postgres
def test_concurrent_http_start_next_claims_once(postgres_only, tenant, make_device):
    device = make_device(tenant)
    job = job_create(tenant=tenant, document_type="reboot", device_ids=[device.device_id])
    client = device_client(device)

    bodies = run_in_threads(lambda n: client.post("/device/v1/jobs/start-next", {}, expect=200).json(), 10)

    assert {(b["execution"]["job_id"], b["execution"]["execution_number"]) for b in bodies} == {(job.job_id, 2)}
    assert JobExecution.objects.get(job=job).execution_number == 2


@pytest.mark.postgres
def test_concurrent_progress_updates_with_one_expected_version_one_wins(postgres_only, tenant, make_device):
    from iotcloud.errors import Conflict
    from jobs.choices import TransitionRules
    from jobs.services import execution_update

    device = make_device(tenant)
    job = job_create(tenant=tenant, document_type="reboot", device_ids=[device.device_id])
    execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")  # execution_number 2

    def progress(n):
        try:
            execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS", status_details={"by": str(n)},
                             execution_number=2, rules=TransitionRules.AWS)  # fmt: skip
        except Conflict as error:
            return error.code, error.execution["execution_number"]
        return "ok", None

    outcomes = run_in_threads(progress, 10)

    assert outcomes.count(("ok", None)) == 1
    assert all(o in (("stale_execution_number", 3), ("concurrent_update", 3)) for o in outcomes if o[0] != "ok")
    execution = JobExecution.objects.get(job=job)
    assert execution.execution_number == 3 and execution.status == "IN_PROGRESS"
