"""Per-execution control: an execution's full history (every change: when, status, details, number,
by whom) and cancelling one device's execution, with force for a running one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from iotcloud.testing import device_client
from jobs.models import Job, JobExecution
from jobs.services import job_sweep

pytestmark = pytest.mark.django_db


def create(operator, device_ids, **extra) -> dict:
    body = {"document_type": "reboot", "targets": {"device_ids": device_ids}, **extra}
    return operator.post("/customer/jobs", body, expect=201).json()


def test_history_records_every_change_and_who_made_it(operator, tenant, make_device):
    pump, fan = make_device(tenant, "pump"), make_device(tenant, "fan")
    job = create(operator, ["pump", "fan"], in_progress_timeout_seconds=60)["job_id"]
    dev = device_client(pump)
    dev.put(f"/device/v1/jobs/{job}/execution", {"status": "IN_PROGRESS", "status_details": {"step": "dl"}},
            expect=200)  # fmt: skip
    dev.put(f"/device/v1/jobs/{job}/execution", {"status": "SUCCEEDED"}, expect=200)
    device_client(fan).put(f"/device/v1/jobs/{job}/execution", {"status": "IN_PROGRESS"}, expect=200)
    JobExecution.objects.filter(device=fan).update(started_at=timezone.now() - timedelta(minutes=5))
    job_sweep()

    history = operator.get(f"/customer/jobs/{job}/executions/pump", expect=200).json()["history"]
    assert [(h["status"], h["execution_number"], h["actor"]) for h in history] == [
        ("IN_PROGRESS", 2, "device"),
        ("SUCCEEDED", 3, "device"),
    ]
    assert history[0]["status_details"] == {"step": "dl"} and history[0]["at"] <= history[1]["at"]
    (claimed, timed_out) = operator.get(f"/customer/jobs/{job}/executions/fan", expect=200).json()["history"]
    assert (claimed["status"], timed_out["status"], timed_out["actor"]) == ("IN_PROGRESS", "TIMED_OUT", "platform")
    assert "in-progress timeout" in timed_out["status_details"]["reason"]


def test_cancel_one_execution_queued_or_with_force(operator, tenant, make_device):
    for name in ("a", "b", "c"):
        make_device(tenant, name)
    job = create(operator, ["a", "b", "c"])["job_id"]
    canceled = operator.post(f"/customer/jobs/{job}/executions/a/cancel", {"reason": "wrong model"}, expect=200)
    assert canceled.json()["status"] == "CANCELED" and canceled.json()["history"][-1]["actor"] == "operator:alice"
    assert canceled.json()["status_details"] == {"reason": "wrong model"}
    operator.post(f"/customer/jobs/{job}/executions/a/cancel", {}, expect=409)  # already CANCELED

    b = JobExecution.objects.get(job__job_id=job, device__device_id="b")
    JobExecution.objects.filter(pk=b.pk).update(status="IN_PROGRESS", started_at=timezone.now())
    refused = operator.post(f"/customer/jobs/{job}/executions/b/cancel", {}, expect=409).json()
    assert refused["code"] == "execution_in_progress" and "force" in refused["detail"]
    operator.post(f"/customer/jobs/{job}/executions/b/cancel", {"force": True}, expect=200)
    operator.post(f"/customer/jobs/{job}/executions/nobody/cancel", {}, expect=404)
    operator.get(f"/customer/jobs/{job}/executions/a%00b", expect=404)  # cannot exist: never reaches the database
    operator.post(f"/customer/jobs/{job}/executions/c/cancel", {"force": "yes"}, expect=400)

    operator.post(f"/customer/jobs/{job}/executions/c/cancel", {}, expect=200)
    assert Job.objects.get(job_id=job).status == "COMPLETED"  # every execution terminal


def test_other_tenants_cannot_see_or_cancel_an_execution(operator, other_operator, tenant, make_device):
    make_device(tenant, "a")
    job = create(operator, ["a"])["job_id"]
    other_operator.get(f"/customer/jobs/{job}/executions/a", expect=404)
    other_operator.post(f"/customer/jobs/{job}/executions/a/cancel", {}, expect=404)
    assert JobExecution.objects.get(job__job_id=job).status == "QUEUED"


def test_deleting_a_job_needs_force_while_it_runs_and_takes_its_executions(operator, tenant, make_device):
    from jobs.models import ExecutionHistory

    pump = make_device(tenant, "pump")
    job = create(operator, ["pump"])["job_id"]
    device_client(pump).put(f"/device/v1/jobs/{job}/execution", {"status": "IN_PROGRESS"}, expect=200)
    refused = operator.delete(f"/customer/jobs/{job}", expect=409).json()
    assert refused["code"] == "job_in_progress" and Job.objects.filter(job_id=job).exists()
    operator.delete(f"/customer/jobs/{job}?force=maybe", expect=400)
    operator.delete(f"/customer/jobs/{job}?force=true", expect=204)
    assert not Job.objects.exists() and not JobExecution.objects.exists() and not ExecutionHistory.objects.exists()
    assert device_client(pump).get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}
    operator.delete(f"/customer/jobs/{job}", expect=404)


def test_finished_jobs_are_pruned_after_the_retention(settings, operator, tenant, make_device):
    from jobs.services import jobs_prune

    make_device(tenant, "pump")
    old, recent, running = (create(operator, ["pump"])["job_id"] for _ in range(3))
    for job_id in (old, recent):
        operator.post(f"/customer/jobs/{job_id}/cancel", {}, expect=200)
    Job.objects.filter(job_id=old).update(canceled_at=timezone.now() - timedelta(days=40))
    settings.JOBS_RETENTION_DAYS = 0
    assert jobs_prune() == 0  # 0 keeps everything
    settings.JOBS_RETENTION_DAYS = 30
    assert jobs_prune() == 1
    assert set(Job.objects.values_list("job_id", flat=True)) == {recent, running}
