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
