"""Rollouts and abort criteria: executions released at the configured pace (the scheduler driven by
a controlled clock), devices that never see what is not released, jobs canceled when failures cross
a threshold, and every bad configuration refused naming its field."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from devices.models import Device
from iotcloud.errors import InvalidInput
from iotcloud.testing import device_client
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution
from jobs.release import rollout_tick
from jobs.rollout import Rollout, parse_abort, parse_rollout
from jobs.services import execution_update, job_create

pytestmark = pytest.mark.django_db


def fleet(tenant, make_device, count: int) -> list[str]:
    """`count` devices d0000, d0001, ...; their ids (FLEET[id]: the device, with its token)."""
    FLEET.clear()
    FLEET.update({f"d{n:04}": make_device(tenant, f"d{n:04}") for n in range(count)})
    return list(FLEET)


FLEET: dict = {}


def exponential(base: int, factor: float, criterion: str, every: int) -> dict:
    return {"exponential": {"base_rate_per_minute": base, "increment_factor": factor,
                            "rate_increase_criteria": {criterion: every}}}  # fmt: skip


def paced_job(tenant, ids, rollout, **extra) -> Job:
    return job_create(tenant=tenant, document_type="reboot", device_ids=ids, rollout=rollout, **extra)


def released(job: Job) -> int:
    return JobExecution.objects.filter(job=job, released_at__isnull=False).count()


def run(job: Job, seconds: float, *, tick: float = 1.0, jitter: float = 0.0, seed: int = 1) -> list[int]:
    """Tick the scheduler over `seconds` of a controlled clock from the job's creation; the count of
    released executions after each tick."""
    rng = random.Random(seed)
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    now, counts = 0.0, []
    while now <= seconds:
        rollout_tick(now=start + timedelta(seconds=now))
        counts.append(released(job))
        now += tick * (1 + rng.uniform(-jitter, jitter))
    return counts


# --- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"maximum_per_minute": 0}, "rollout.maximum_per_minute"),
        ({"maximum_per_minute": -5}, "rollout.maximum_per_minute"),
        ({"maximum_per_minute": "10"}, "rollout.maximum_per_minute"),
        ({"maximum_per_minute": 1.5}, "rollout.maximum_per_minute"),
        ({"per_minute": 10}, "rollout"),
        ([], "rollout"),
        ({"exponential": {"base_rate_per_minute": 10, "increment_factor": 2}}, "rate_increase_criteria"),
        ({"exponential": {"base_rate_per_minute": 10, "increment_factor": 9,
                          "rate_increase_criteria": {"number_of_notified_things": 5}}}, "increment_factor"),
        ({"exponential": {"base_rate_per_minute": 10, "increment_factor": 2,
                          "rate_increase_criteria": {"number_of_failed_things": 5}}}, "rate_increase_criteria"),
        ({"exponential": {"base_rate_per_minute": 10, "increment_factor": 2,
                          "rate_increase_criteria": {"number_of_notified_things": 0}}}, "number_of_notified_things"),
        ({"maximum_per_minute": 5, "exponential": {"base_rate_per_minute": 10, "increment_factor": 2,
          "rate_increase_criteria": {"number_of_notified_things": 5}}}, "rollout.maximum_per_minute"),
    ],
)  # fmt: skip
def test_bad_rollouts_are_refused_naming_the_field(config, field):
    with pytest.raises(InvalidInput) as refused:
        parse_rollout(config)
    assert field in refused.value.message and refused.value.code == "invalid_rollout"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"criteria": [{"failure_type": "FAILED", "threshold_percentage": 0, "min_executed": 1}]},
         "threshold_percentage"),
        ({"criteria": [{"failure_type": "FAILED", "threshold_percentage": 101, "min_executed": 1}]},
         "threshold_percentage"),
        ({"criteria": [{"failure_type": "BROKEN", "threshold_percentage": 5, "min_executed": 1}]}, "failure_type"),
        ({"criteria": [{"failure_type": "FAILED", "threshold_percentage": 5}]}, "min_executed"),
        ({"criteria": [{"failure_type": "FAILED", "threshold_percentage": 5, "min_executed": -1}]}, "min_executed"),
        ({"criteria": []}, "abort_config.criteria"),
        ({"criteria": [{"failure_type": "ALL", "threshold_percentage": 5, "min_executed": 1}], "force": "yes"},
         "abort_config.force"),
        ({"criteria": [{"failure_type": "ALL", "threshold_percentage": 5, "min_executed": 1}] * 2}, "given twice"),
    ],
)  # fmt: skip
def test_bad_abort_configurations_are_refused_naming_the_field(config, field):
    with pytest.raises(InvalidInput) as refused:
        parse_abort(config)
    assert field in refused.value.message and refused.value.code == "invalid_abort"


def test_the_exponential_rate_steps_up_per_criterion_count_as_aws_describes():
    """AWS's example: base 50/min, factor 2, every 1,000 notified: 50, 100, 200, 400."""
    rollout = parse_rollout(exponential(50, 2, "number_of_notified_things", 1000))
    rates = [rollout.rate_per_minute(notified=n, succeeded=0) for n in (0, 999, 1000, 2000, 3000)]
    assert rates == [50, 50, 100, 200, 400]
    capped = Rollout(base_per_minute=50, factor=2, criterion="number_of_notified_things", every=1000,
                     maximum_per_minute=150)  # fmt: skip
    assert capped.rate_per_minute(notified=5000, succeeded=0) == 150


# --- the scheduler ------------------------------------------------------------------------------


def test_a_constant_rollout_releases_at_its_rate_and_devices_see_only_what_is_released(tenant, make_device):
    ids = fleet(tenant, make_device, 40)
    job = paced_job(tenant, ids, {"maximum_per_minute": 12})  # one every 5 s
    assert released(job) == 0 and JobExecution.objects.filter(job=job, notify_pending=True).count() == 0
    first, second = ids[0], ids[1]
    client = device_client(FLEET[first])
    assert client.get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}
    client.get(f"/device/v1/jobs/{job.job_id}/execution", expect=404)
    client.put(f"/device/v1/jobs/{job.job_id}/execution", {"status": "IN_PROGRESS"}, expect=404)

    counts = run(job, 60, tick=1.0)
    assert counts[0] == 1  # the first at once
    assert counts[-1] == 13  # then one every 5 s: 1 + 60 / 5
    (entry,) = client.get("/device/v1/jobs/pending", expect=200).json()["jobs"]  # released first, in id order
    assert entry["job_id"] == job.job_id
    assert JobExecution.objects.get(job=job, device__device_id=second).released_at is not None
    assert Job.objects.get(pk=job.pk).released == 13
    unreleased = JobExecution.objects.filter(job=job, released_at__isnull=True)
    assert unreleased.count() == 27 and not unreleased.filter(notify_pending=True).exists()


@pytest.mark.parametrize("per_minute", [60, 600, 6000])
def test_the_achieved_rate_stays_within_ten_percent_whatever_the_ticks_jitter(tenant, make_device, per_minute):
    ids = fleet(tenant, make_device, min(per_minute * 2 + 50, 1200))
    job = paced_job(tenant, ids, {"maximum_per_minute": per_minute})
    seconds = 60 if per_minute < 6000 else 10
    counts = run(job, seconds, tick=1.0, jitter=0.6, seed=per_minute)
    expected = per_minute * seconds / 60
    assert abs(counts[-1] - expected) <= max(2, 0.1 * expected), counts[-1]
    # never a burst: no tick released much more than 2 s' worth
    steps = [b - a for a, b in itertools.pairwise(counts)]
    assert max(steps) <= per_minute / 60 * 2 + 1


def test_a_scheduler_that_was_away_does_not_release_a_burst(tenant, make_device):
    ids = fleet(tenant, make_device, 100)
    job = paced_job(tenant, ids, {"maximum_per_minute": 60})
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    rollout_tick(now=start)
    rollout_tick(now=start + timedelta(minutes=30))  # thirty minutes without a tick
    assert released(job) <= 1 + 5  # the first, then at most BURST_SECONDS' worth


def test_an_exponential_rollout_steps_up_on_notified_devices(tenant, make_device):
    ids = fleet(tenant, make_device, 200)
    job = paced_job(tenant, ids, exponential(60, 2, "number_of_notified_things", 20))
    counts = run(job, 40, tick=0.5)
    # 60/min (1/s) until 20 notified (~19 s), then 120/min until 40, then 240/min...
    at = {round(i * 0.5, 1): c for i, c in enumerate(counts)}
    assert 18 <= at[18.0] <= 20
    assert 38 <= at[28.0] <= 42  # 20 more at 2/s took ~10 s
    assert at[40.0] >= 80  # 4/s after 40


def test_an_exponential_rollout_on_succeeded_devices_waits_for_successes(tenant, make_device):
    ids = fleet(tenant, make_device, 60)
    job = paced_job(tenant, ids, exponential(60, 3, "number_of_succeeded_things", 5))
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    for second in range(11):
        rollout_tick(now=start + timedelta(seconds=second))
    assert released(job) == 11  # nobody succeeded: still 1/s
    for execution in JobExecution.objects.filter(job=job, released_at__isnull=False)[:5]:
        device = Device.objects.get(pk=execution.device_id)
        execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
        execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.SUCCEEDED)
    for second in range(11, 21):
        rollout_tick(now=start + timedelta(seconds=second))
    assert 11 + 27 <= released(job) <= 11 + 31  # 3/s for 10 s


def test_parallel_schedulers_release_each_allowance_once(postgres_only, transactional_db, tenant, make_device):
    """Every bridge runs the scheduler: the job row lock (SKIP LOCKED) has one of them spend it."""
    ids = fleet(tenant, make_device, 300)
    job = paced_job(tenant, ids, {"maximum_per_minute": 600})  # 10/s
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    barrier = threading.Barrier(8)

    def scheduler(second):
        try:
            barrier.wait()
            rollout_tick(now=start + timedelta(seconds=second))
        finally:
            connection.close()

    for second in range(1, 11):
        threads = [threading.Thread(target=scheduler, args=(second,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        barrier.reset()
    close_old_connections()
    assert 1 + 99 <= released(job) <= 1 + 101  # 10 s at 10/s, not 8 times that
    assert Job.objects.get(pk=job.pk).released == released(job)


# --- abort ------------------------------------------------------------------------------------


def fail(job: Job, count: int, status=ExecutionStatus.FAILED):
    """`count` released, queued executions run by their devices to `status` (IN_PROGRESS: left running)."""
    queued = JobExecution.objects.filter(job=job, released_at__isnull=False, status=ExecutionStatus.QUEUED)
    for execution in list(queued.order_by("id")[:count]):
        device = Device.objects.get(pk=execution.device_id)
        execution_update(device=device, job_id=job.job_id, status=ExecutionStatus.IN_PROGRESS)
        if status != ExecutionStatus.IN_PROGRESS:
            execution_update(device=device, job_id=job.job_id, status=status)


def test_abort_trips_at_the_threshold_and_not_before_the_minimum(tenant, make_device):
    ids = fleet(tenant, make_device, 30)
    job = paced_job(tenant, ids, {"maximum_per_minute": 60},
                    abort_config={"criteria": [{"failure_type": "FAILED", "threshold_percentage": 50,
                                                "min_executed": 4}]})  # fmt: skip
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    rollout_tick(now=start)
    fail(job, 1)  # 1 of 1 released failed: 100%, but fewer than 4 executed
    rollout_tick(now=start + timedelta(seconds=3))  # 4 released now, 1 failed: 25%
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS
    fail(job, 1)  # 2 of 4: 50%
    fail(job, 1, status=ExecutionStatus.IN_PROGRESS)  # one running: left to finish
    rollout_tick(now=start + timedelta(seconds=3.5))
    aborted = Job.objects.get(pk=job.pk)
    assert aborted.status == JobStatus.CANCELED and "2 of 4 released executions FAILED" in aborted.cancel_reason
    statuses = dict(JobExecution.objects.filter(job=job).values_list("device__device_id", "status"))
    assert list(statuses.values()).count(ExecutionStatus.IN_PROGRESS) == 1
    assert list(statuses.values()).count(ExecutionStatus.CANCELED) == 30 - 3  # queued and unreleased alike
    rollout_tick(now=start + timedelta(seconds=60))  # a canceled job releases nothing more
    assert released(job) == 4


def test_abort_with_force_cancels_the_running_ones_too_and_all_counts_every_failure(tenant, make_device):
    ids = fleet(tenant, make_device, 10)
    job = job_create(tenant=tenant, document_type="reboot", device_ids=ids,  # no rollout: all released
                     abort_config={"criteria": [{"failure_type": "ALL", "threshold_percentage": 20,
                                                 "min_executed": 5}], "force": True})  # fmt: skip
    fail(job, 1, status=ExecutionStatus.REJECTED)
    fail(job, 1, status=ExecutionStatus.IN_PROGRESS)
    rollout_tick()
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS  # 1 of 10
    fail(job, 1, status=ExecutionStatus.FAILED)
    rollout_tick()
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELED
    assert not JobExecution.objects.filter(job=job, status=ExecutionStatus.IN_PROGRESS).exists()


# --- the API ----------------------------------------------------------------------------------


def test_the_api_refuses_bad_rollouts_naming_the_field_and_creates_nothing(operator, tenant, make_device):
    make_device(tenant, "d1")
    body = {"document_type": "reboot", "targets": {"device_ids": ["d1"]}}
    refused = operator.post("/customer/jobs", {**body, "rollout": {"maximum_per_minute": -1}}, expect=400).json()
    assert "rollout.maximum_per_minute" in str(refused)
    refused = operator.post("/customer/jobs", {**body, "abort_config": {"criteria": [
        {"failure_type": "FAILED", "threshold_percentage": 150, "min_executed": 1}]}}, expect=400).json()  # fmt: skip
    assert "threshold_percentage" in str(refused)
    assert not Job.objects.exists() and not JobExecution.objects.exists()


def test_operators_see_what_is_not_released_yet(operator, tenant, make_device):
    fleet(tenant, make_device, 5)
    created = operator.post("/customer/jobs", {
        "document_type": "reboot", "targets": {"device_ids": [f"d{n:04}" for n in range(5)]},
        "rollout": {"maximum_per_minute": 1},
        "abort_config": {"criteria": [{"failure_type": "ALL", "threshold_percentage": 10, "min_executed": 2}]},
    }, expect=201).json()  # fmt: skip
    assert created["rollout"] == {"maximum_per_minute": 1} and created["abort_config"]["criteria"][0]["min_executed"]
    rollout_tick(now=timezone.now())
    detail = operator.get(f"/customer/jobs/{created['job_id']}", expect=200).json()
    assert detail["progress"]["released"] == 1 and detail["progress"]["unreleased"] == 4
    waiting = operator.get(f"/customer/jobs/{created['job_id']}/executions?released=false", expect=200).json()
    assert len(waiting["results"]) == 4 and all(e["released_at"] is None for e in waiting["results"])
    out = operator.get(f"/customer/jobs/{created['job_id']}/executions?released=true", expect=200).json()
    assert [e["device_id"] for e in out["results"]] == ["d0000"] and out["results"][0]["released_at"]


def test_the_rollout_series_counts_releases_successes_and_failures_over_time(tenant, make_device):
    from jobs.selectors import rollout_series

    ids = fleet(tenant, make_device, 10)
    job = paced_job(tenant, ids, {"maximum_per_minute": 60}, abort_config={"criteria": [
        {"failure_type": "ALL", "threshold_percentage": 40, "min_executed": 5}]})  # fmt: skip
    counts = run(job, 4)  # 5 released (t = 0..4 s of the controlled clock)
    assert counts[-1] == 5
    fail(job, 1)
    queued = JobExecution.objects.filter(job=job, released_at__isnull=False, status="QUEUED").first()
    execution_update(device=Device.objects.get(pk=queued.device_id), job_id=job.job_id, status="IN_PROGRESS")
    execution_update(device=Device.objects.get(pk=queued.device_id), job_id=job.job_id, status="SUCCEEDED")
    series = rollout_series(Job.objects.get(pk=job.pk), points=10, now=timezone.now() + timedelta(seconds=10))
    assert series["released"][-1] == 5 and series["failed"][-1] == 1 and series["succeeded"][-1] == 1
    assert series["released"] == sorted(series["released"]) and series["released"][0] == 1  # cumulative, from t=0
    assert (series["threshold_percentage"], series["threshold_type"], series["total"]) == (40.0, "ALL", 10)


def test_the_job_page_draws_the_rollout(tenant, make_device):
    from jobs.admin import rollout_chart_svg
    from jobs.selectors import rollout_series

    ids = fleet(tenant, make_device, 3)
    job = paced_job(tenant, ids, {"maximum_per_minute": 60}, abort_config={"criteria": [
        {"failure_type": "FAILED", "threshold_percentage": 50, "min_executed": 2}]})  # fmt: skip
    run(job, 2)
    svg = str(rollout_chart_svg(rollout_series(Job.objects.get(pk=job.pk))))
    assert svg.startswith("<svg") and svg.count("<polyline") == 4 and "abort threshold (50% FAILED)" in svg
