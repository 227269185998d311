"""Continuous jobs: a tag-selector job that stays open; devices that gain the tag or are provisioned
with it get an execution, a device that loses it before starting has its execution REMOVED."""

from __future__ import annotations

import pytest

from devices.services import device_set_tags
from iotcloud.testing import device_client
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution
from jobs.release import rollout_tick
from jobs.services import execution_update, job_cancel, job_create

pytestmark = pytest.mark.django_db


def statuses(job) -> dict[str, str]:
    return dict(JobExecution.objects.filter(job=job).values_list("device__device_id", "status"))


def test_devices_join_and_leave_a_continuous_job(tenant, make_device):
    berlin = make_device(tenant, "b1", tags={"site": "berlin"})
    make_device(tenant, "p1", tags={"site": "paris"})
    job = job_create(tenant=tenant, document_type="reboot", tags={"site": "berlin"}, continuous=True)
    assert statuses(job) == {"b1": "QUEUED"}
    execution_update(device=berlin, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    execution_update(device=berlin, job_id=job.job_id, status=ExecutionStatus.SUCCEEDED)
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS  # stays open with nothing left

    newcomer = make_device(tenant, "b2", tags={"site": "berlin"})  # provisioned with the tag
    moved = make_device(tenant, "p2", tags={"site": "paris"})
    device_set_tags(device=moved, tags={"site": "berlin"})  # gains it
    rollout_tick()
    assert statuses(job) == {"b1": "SUCCEEDED", "b2": "QUEUED", "p2": "QUEUED"}
    (pending,) = device_client(newcomer).get("/device/v1/jobs/pending", expect=200).json()["jobs"]
    assert pending["job_id"] == job.job_id  # released at once

    device_set_tags(device=moved, tags={"site": "paris"})  # loses it before starting
    rollout_tick()
    assert statuses(job)["p2"] == ExecutionStatus.REMOVED
    assert JobExecution.objects.get(job=job, device=moved).history.last().status_details == {
        "reason": "the device no longer matches the job's tags"
    }
    device_set_tags(device=moved, tags={"site": "berlin"})  # back again: queued again
    rollout_tick()
    assert statuses(job)["p2"] == ExecutionStatus.QUEUED
    reloaded = Job.objects.get(pk=job.pk)
    assert (reloaded.total, reloaded.remaining) == (3, 2)
    rollout_tick()
    assert JobExecution.objects.filter(job=job).count() == 3  # nothing added twice


def test_a_started_execution_is_not_removed_and_a_cancel_closes_the_job(tenant, make_device):
    device = make_device(tenant, "b1", tags={"site": "berlin"})
    job = job_create(tenant=tenant, document_type="reboot", tags={"site": "berlin"}, continuous=True)
    execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    device_set_tags(device=device, tags={})
    rollout_tick()
    assert statuses(job) == {"b1": "IN_PROGRESS"}  # already running: left to finish
    job_cancel(job=job)
    make_device(tenant, "b2", tags={"site": "berlin"})
    rollout_tick()
    assert "b2" not in statuses(job) and Job.objects.get(pk=job.pk).status == JobStatus.CANCELED


def test_a_continuous_job_may_start_empty_but_takes_tags_only(operator, tenant, make_device):
    make_device(tenant, "d1")
    created = operator.post("/customer/jobs", {"document_type": "reboot", "targets": {"tags": {"site": "rome"}},
                                               "continuous": True}, expect=201).json()  # fmt: skip
    assert created["continuous"] is True and created["progress"]["total"] == 0
    refused = operator.post("/customer/jobs", {"document_type": "reboot", "continuous": True,
                                               "targets": {"device_ids": ["d1"]}}, expect=400).json()  # fmt: skip
    assert "tag selector only" in refused["detail"]
    operator.post("/customer/jobs", {"document_type": "reboot", "targets": {"tags": {"site": "rome"}},
                                     "continuous": "yes"}, expect=400)  # fmt: skip
    assert Job.objects.count() == 1
