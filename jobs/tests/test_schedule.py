"""Schedules: a start time (SCHEDULED until then), an end time with its end behaviour, and
maintenance windows outside which nothing is released; the scheduler driven by a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from iotcloud.errors import InvalidInput
from iotcloud.testing import device_client
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution
from jobs.release import rollout_tick
from jobs.schedule import parse_schedule
from jobs.services import execution_update, job_create

pytestmark = pytest.mark.django_db

FUTURE = datetime(2031, 3, 10, tzinfo=UTC)  # a Monday; every moment below is after the tests' real now


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def devices(tenant, make_device):
    return [make_device(tenant, f"d{n}") for n in range(20)]


def create(tenant, devices, **extra) -> Job:
    return job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices], **extra)


def released(job) -> int:
    return JobExecution.objects.filter(job=job, released_at__isnull=False).count()


def status(job) -> str:
    return Job.objects.get(pk=job.pk).status


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"start_time": "tomorrow"}, "scheduling.start_time"),
        ({"start_time": "2031-01-01T00:00:00"}, "needs a time zone offset"),
        ({"start_time": "2031-01-02T00:00:00Z", "end_time": "2031-01-01T00:00:00Z"}, "must be after"),
        ({"end_time": "2001-01-01T00:00:00Z"}, "scheduling.end_time must be in the future"),
        ({"end_behavior": "CANCEL"}, "needs scheduling.end_time"),
        ({"end_time": "2031-01-01T00:00:00Z", "end_behavior": "PAUSE"}, "scheduling.end_behavior"),
        ({"maintenance_windows": [{"cron": "61 * * * *", "duration_minutes": 5}]}, "cron"),
        ({"maintenance_windows": [{"cron": "0 2 * *", "duration_minutes": 5}]}, "cron"),
        ({"maintenance_windows": [{"cron": "0 2 * * *", "duration_minutes": 0}]}, "duration_minutes"),
        ({"maintenance_windows": [{"cron": "0 2 * * *"}]}, "maintenance_windows[0]"),
        ({"timezone": "Mars/Olympus"}, "scheduling.timezone"),
        ({"start": "2031-01-01T00:00:00Z"}, "unknown field"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(config, field):
    with pytest.raises(InvalidInput) as refused:
        parse_schedule(config, now=timezone.now())
    assert field in refused.value.message and refused.value.code == "invalid_scheduling"


def test_a_scheduled_job_waits_then_releases_everything_at_its_start(tenant, devices):
    start = timezone.now() + timedelta(hours=1)
    job = create(tenant, devices, scheduling={"start_time": iso(start)})
    assert job.status == JobStatus.SCHEDULED and released(job) == 0
    assert device_client(devices[0]).get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}
    rollout_tick(now=start - timedelta(seconds=1))
    assert status(job) == JobStatus.SCHEDULED and released(job) == 0
    rollout_tick(now=start)
    assert status(job) == JobStatus.IN_PROGRESS and released(job) == 20
    assert device_client(devices[0]).get("/device/v1/jobs/pending", expect=200).json()["jobs"][0]["job_id"] == (
        job.job_id
    )


def test_maintenance_windows_in_a_time_zone_gate_the_rollout(tenant, devices):
    """02:00-03:00 in Paris (UTC+1 in March): 01:00-02:00 UTC. 60/min: one a second inside the window."""
    window = {"maintenance_windows": [{"cron": "0 2 * * *", "duration_minutes": 60}], "timezone": "Europe/Paris"}
    job = create(tenant, devices, rollout={"maximum_per_minute": 60}, scheduling=window)
    before = FUTURE.replace(hour=0, minute=59, second=58)
    rollout_tick(now=before)
    rollout_tick(now=before + timedelta(seconds=1))
    assert released(job) == 0  # 01:59:59 in Paris: closed
    opening = FUTURE.replace(hour=1)
    for second in range(3):
        rollout_tick(now=opening + timedelta(seconds=second))
    inside = released(job)
    assert 3 <= inside <= 4  # one a second from 02:00:00 (at most the last closed tick's second counts)
    closing = FUTURE.replace(hour=2)
    rollout_tick(now=closing - timedelta(seconds=1))
    assert released(job) == inside + 5  # 02:59:59, an hour without a tick: at most 5 s' worth saved up
    for second in range(5):
        rollout_tick(now=closing + timedelta(seconds=second))
    assert released(job) == inside + 5  # 03:00 in Paris: closed again, nothing accrues
    next_night = opening + timedelta(days=1)
    rollout_tick(now=next_night - timedelta(seconds=1))  # the scheduler ticks through the closed hours
    assert released(job) == inside + 5
    rollout_tick(now=next_night)
    assert released(job) == inside + 6  # open again: one more, no burst for the closed hours


def test_stop_rollout_at_the_end_time_cancels_what_was_never_released(tenant, devices):
    end = timezone.now() + timedelta(hours=1)
    job = create(tenant, devices, rollout={"maximum_per_minute": 1},
                 scheduling={"end_time": iso(end), "end_behavior": "STOP_ROLLOUT"})  # fmt: skip
    rollout_tick(now=end - timedelta(minutes=2))
    first = JobExecution.objects.get(job=job, released_at__isnull=False)
    execution_update(device=first.device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    rollout_tick(now=end)
    assert status(job) == JobStatus.IN_PROGRESS  # the released one runs on
    assert JobExecution.objects.filter(job=job, status=ExecutionStatus.CANCELED, released_at__isnull=True).count() == 19
    execution_update(device=first.device, job_id=job.job_id, status=ExecutionStatus.SUCCEEDED)
    assert status(job) == JobStatus.COMPLETED
    rollout_tick(now=end + timedelta(minutes=5))
    assert released(job) == 1


@pytest.mark.parametrize(("behavior", "running_after"), [("CANCEL", 1), ("FORCE_CANCEL", 0)])
def test_cancel_and_force_cancel_at_the_end_time(tenant, devices, behavior, running_after):
    end = timezone.now() + timedelta(hours=1)
    job = create(tenant, devices, scheduling={"end_time": iso(end), "end_behavior": behavior})
    rollout_tick(now=end - timedelta(minutes=1))
    assert released(job) == 20
    execution_update(device=devices[0], job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
    rollout_tick(now=end)
    ended = Job.objects.get(pk=job.pk)
    assert ended.status == JobStatus.CANCELED and behavior in ended.cancel_reason
    assert JobExecution.objects.filter(job=job, status=ExecutionStatus.IN_PROGRESS).count() == running_after


def test_the_api_shows_scheduled_jobs_and_refuses_bad_schedules(operator, tenant, devices):
    body = {"document_type": "reboot", "targets": {"device_ids": ["d0"]}}
    refused = operator.post("/customer/jobs", {**body, "scheduling": {"maintenance_windows": [
        {"cron": "every night", "duration_minutes": 60}]}}, expect=400).json()  # fmt: skip
    assert "maintenance_windows[0].cron" in str(refused) and not Job.objects.exists()
    start = iso(timezone.now() + timedelta(days=1))
    created = operator.post("/customer/jobs", {**body, "scheduling": {"start_time": start}}, expect=201).json()
    assert created["status"] == "SCHEDULED" and created["scheduling"] == {"start_time": start}
    listed = operator.get("/customer/jobs?status=SCHEDULED", expect=200).json()["results"]
    assert [j["job_id"] for j in listed] == [created["job_id"]]


def test_a_scheduled_job_whose_executions_all_end_is_completed(operator, tenant, devices):
    start = timezone.now() + timedelta(hours=1)
    job = create(tenant, devices[:2], scheduling={"start_time": iso(start)})
    for device in devices[:2]:
        operator.post(f"/customer/jobs/{job.job_id}/executions/{device.device_id}/cancel", {}, expect=200)
    assert status(job) == JobStatus.COMPLETED
    rollout_tick(now=start)
    assert status(job) == JobStatus.COMPLETED and released(job) == 0
