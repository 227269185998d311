"""The execution state machines (the seed's and AWS's), completion, cancel, timeouts and expiry (services)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from iotcloud.errors import Conflict, DomainError, InvalidInput, NotFound
from jobs.choices import AWS_DEVICE_TRANSITIONS, DEVICE_TRANSITIONS, ExecutionStatus, JobStatus, TransitionRules
from jobs.models import Job, JobExecution
from jobs.services import execution_update, job_cancel, job_create, job_sweep

pytestmark = pytest.mark.django_db

ALL = list(ExecutionStatus.values)
ALLOWED = {(src, dst) for src, targets in DEVICE_TRANSITIONS.items() for dst in targets}
AWS_ALLOWED = {(src, dst) for src, targets in AWS_DEVICE_TRANSITIONS.items() for dst in targets}


def make_job(tenant, devices, **kwargs):
    return job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices], **kwargs)


def force_status(execution, status):
    JobExecution.objects.filter(pk=execution.pk).update(status=status)


def test_the_table_is_exactly_the_one_in_the_contract():
    assert {
        ("QUEUED", "IN_PROGRESS"),
        ("IN_PROGRESS", "SUCCEEDED"),
        ("IN_PROGRESS", "FAILED"),
        ("IN_PROGRESS", "REJECTED"),
    } == ALLOWED


def test_the_aws_table_is_the_lifecycle_pages():
    """A device sets IN_PROGRESS, SUCCEEDED, FAILED or REJECTED on any execution that is not terminal
    (IN_PROGRESS -> IN_PROGRESS is a progress update); QUEUED, TIMED_OUT and CANCELED are the platform's."""
    device_sets = {"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}
    assert {(src, dst) for src in ("QUEUED", "IN_PROGRESS") for dst in device_sets} == AWS_ALLOWED
    assert ALLOWED < AWS_ALLOWED


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_every_aws_transition_pair(tenant, make_device, src, dst):
    device = make_device(tenant)
    job = make_job(tenant, [device])
    execution = JobExecution.objects.get(job=job)
    force_status(execution, src)
    before = JobExecution.objects.filter(pk=execution.pk).values().get()
    if (src, dst) in AWS_ALLOWED:
        updated = execution_update(device=device, job_id=job.job_id, status=dst, status_details={"step": "1"},
                                   rules=TransitionRules.AWS)  # fmt: skip
        assert (updated.status, updated.status_details) == (dst, {"step": "1"})
        assert updated.execution_number == before["execution_number"] + 1
        if dst == "IN_PROGRESS":
            assert updated.started_at is not None
    else:
        with pytest.raises(InvalidInput) as error:
            execution_update(device=device, job_id=job.job_id, status=dst, rules=TransitionRules.AWS)
        assert error.value.code == "invalid_transition"
        assert error.value.execution == {"status": src, "status_details": {}, "execution_number": 1}
        assert JobExecution.objects.filter(pk=execution.pk).values().get() == before


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_every_transition_pair(tenant, make_device, src, dst):
    device = make_device(tenant)
    job = make_job(tenant, [device])
    execution = JobExecution.objects.get(job=job)
    force_status(execution, src)
    before = JobExecution.objects.filter(pk=execution.pk).values().get()
    if (src, dst) in ALLOWED:
        updated = execution_update(device=device, job_id=job.job_id, status=dst, status_details={"step": 1})
        assert updated.status == dst
        assert updated.execution_number == before["execution_number"] + 1
        assert updated.status_details == {"step": 1}
        if dst == "IN_PROGRESS":
            assert updated.started_at is not None
    else:
        with pytest.raises(InvalidInput) as error:
            execution_update(device=device, job_id=job.job_id, status=dst)
        assert error.value.message == f"Cannot transition from {src} to {dst}"
        assert JobExecution.objects.filter(pk=execution.pk).values().get() == before


def test_stale_execution_number_is_a_conflict(tenant, make_device):
    device = make_device(tenant)
    job = make_job(tenant, [device])
    claimed = execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS", execution_number=1)
    assert claimed.execution_number == 2
    with pytest.raises(Conflict) as error:
        execution_update(device=device, job_id=job.job_id, status="SUCCEEDED", execution_number=1)
    assert error.value.extra["execution_number"] == 2
    assert JobExecution.objects.get(pk=claimed.pk).status == "IN_PROGRESS"
    execution_update(device=device, job_id=job.job_id, status="SUCCEEDED", execution_number=2)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"status": "DONE"}, "invalid_status"),
        ({"status": 3}, "invalid_status"),
        ({"status": "IN_PROGRESS", "status_details": [1]}, "not_an_object"),
        ({"status": "IN_PROGRESS", "status_details": {"log": "x" * 5000}}, "too_large"),
        ({"status": "IN_PROGRESS", "execution_number": "1"}, "invalid_execution_number"),
    ],
)
def test_bad_updates_change_nothing(tenant, make_device, kwargs, code):
    device = make_device(tenant)
    job = make_job(tenant, [device])
    before = list(JobExecution.objects.values())
    with pytest.raises(DomainError) as error:
        execution_update(device=device, job_id=job.job_id, **kwargs)
    assert error.value.code == code
    assert list(JobExecution.objects.values()) == before


def test_unknown_job_and_other_devices_execution_are_not_found(tenant, make_device):
    mine, other = make_device(tenant, "mine"), make_device(tenant, "other")
    job = make_job(tenant, [other])
    with pytest.raises(NotFound):
        execution_update(device=mine, job_id=job.job_id, status="IN_PROGRESS")
    with pytest.raises(NotFound):
        execution_update(device=mine, job_id="nope", status="IN_PROGRESS")


def run_to(device, job, final):
    execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")
    execution_update(device=device, job_id=job.job_id, status=final)


def test_job_completes_when_the_last_execution_is_terminal(tenant, make_device):
    devices = [make_device(tenant, f"d{n}") for n in range(3)]
    job = make_job(tenant, devices)
    assert (job.total, job.remaining) == (3, 3)
    run_to(devices[0], job, "SUCCEEDED")
    run_to(devices[1], job, "FAILED")
    job.refresh_from_db()
    assert job.status == JobStatus.IN_PROGRESS and job.remaining == 1
    run_to(devices[2], job, "REJECTED")
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.completed_at is not None and job.remaining == 0


def test_cancel_closes_queued_only_and_force_closes_in_progress(tenant, make_device):
    queued, running = make_device(tenant, "queued"), make_device(tenant, "running")
    job = make_job(tenant, [queued, running])
    execution_update(device=running, job_id=job.job_id, status="IN_PROGRESS")
    job = job_cancel(job=job, reason="wrong firmware")
    statuses = dict(JobExecution.objects.filter(job=job).values_list("device__device_id", "status"))
    assert statuses == {"queued": "CANCELED", "running": "IN_PROGRESS"}
    assert job.status == JobStatus.CANCELED and job.cancel_reason == "wrong firmware"
    # The running device may still finish; the job stays CANCELED.
    with pytest.raises(InvalidInput, match="Cannot transition from CANCELED to IN_PROGRESS"):
        execution_update(device=queued, job_id=job.job_id, status="IN_PROGRESS")
    job = job_cancel(job=job, force=True)
    assert JobExecution.objects.get(job=job, device=running).status == "CANCELED"
    assert job.remaining == 0 and job.status == JobStatus.CANCELED


def test_a_completed_job_cannot_be_canceled(tenant, make_device):
    device = make_device(tenant)
    job = make_job(tenant, [device])
    run_to(device, job, "SUCCEEDED")
    with pytest.raises(Conflict):
        job_cancel(job=Job.objects.get(pk=job.pk), force=True)


def test_sweeper_times_out_stuck_executions_and_completes_the_job(tenant, make_device):
    slow, fast = make_device(tenant, "slow"), make_device(tenant, "fast")
    job = make_job(tenant, [slow, fast], in_progress_timeout_seconds=60)
    execution_update(device=slow, job_id=job.job_id, status="IN_PROGRESS")
    run_to(fast, job, "SUCCEEDED")
    assert job_sweep()["timed_out"] == 0  # not yet
    result = job_sweep(now=timezone.now() + timedelta(seconds=61))
    assert result["timed_out"] == 1
    execution = JobExecution.objects.get(job=job, device=slow)
    assert execution.status == "TIMED_OUT" and "timeout" in execution.status_details["reason"]
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job_sweep(now=timezone.now() + timedelta(seconds=120))["timed_out"] == 0  # idempotent


def test_expired_job_stops_being_offered_and_is_closed(tenant, make_device):
    device = make_device(tenant)
    job = make_job(tenant, [device], expires_at=timezone.now() + timedelta(seconds=30))
    later = timezone.now() + timedelta(seconds=31)
    from jobs.selectors import pending_jobs

    assert [j["job_id"] for j in pending_jobs(device)] == [job.job_id]
    assert pending_jobs(device, now=later) == []
    assert job_sweep(now=later)["expired"] == 1
    execution = JobExecution.objects.get(job=job)
    assert execution.status == "TIMED_OUT" and "expired" in execution.status_details["reason"]
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED


def test_an_expired_job_cannot_be_claimed(tenant, make_device):
    device = make_device(tenant)
    job = make_job(tenant, [device], expires_at=timezone.now() + timedelta(seconds=30))
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Conflict) as error:
        execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")
    assert error.value.code == "job_expired"


def test_create_targets_ids_and_tags_and_flags_notify(tenant, other_tenant, make_device):
    make_device(tenant, "a", tags={"site": "paris"})
    make_device(tenant, "b", tags={"site": "lyon"})
    make_device(tenant, "c", tags={"site": "paris", "kind": "gw"})
    make_device(other_tenant, "x", tags={"site": "paris"})
    job = job_create(tenant=tenant, document_type="reboot", device_ids=["b"], tags={"site": "paris"})
    targeted = set(JobExecution.objects.filter(job=job).values_list("device__device_id", flat=True))
    assert targeted == {"a", "b", "c"}
    assert all(JobExecution.objects.filter(job=job).values_list("notify_pending", flat=True))


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"device_ids": ["ghost"]}, "unknown_targets"),
        ({"device_ids": ["theirs"]}, "unknown_targets"),
        ({"tags": {"site": "mars"}}, "no_targets"),
        ({}, "no_targets"),
        ({"device_ids": ["d"], "job_id": "bad/id"}, "invalid_job_id"),
        ({"device_ids": ["d"], "document_type": ""}, "invalid_document_type"),
        ({"device_ids": ["d"], "document_params": [1]}, "not_an_object"),
        ({"device_ids": ["d"], "expires_at": timezone.now() - timedelta(seconds=1)}, "invalid_expiry"),
        ({"device_ids": ["d"], "in_progress_timeout_seconds": 0}, "invalid_timeout"),
    ],
)
def test_create_refuses_bad_input(tenant, other_tenant, make_device, kwargs, code):
    make_device(tenant, "d")
    make_device(other_tenant, "theirs")
    kwargs.setdefault("document_type", "reboot")
    with pytest.raises(InvalidInput) as error:
        job_create(tenant=tenant, **kwargs)
    assert error.value.code == code
    assert not Job.objects.exists() and not JobExecution.objects.exists()


def test_decommissioning_a_device_closes_its_executions_so_the_job_completes(tenant, make_device):
    from devices.services import device_decommission

    done, gone = make_device(tenant, "done"), make_device(tenant, "gone")
    job = make_job(tenant, [done, gone])
    run_to(done, job, "SUCCEEDED")
    device_decommission(device=gone)
    execution = JobExecution.objects.get(job=job, device=gone)
    assert execution.status == "CANCELED" and execution.status_details == {"reason": "device decommissioned"}
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED


def test_a_long_device_id_list_is_one_parameter(tenant):
    """35,000 ids: more than SQLite's 32,766 variables if each id were its own placeholder."""
    from devices.models import Device

    ids = [f"bulk-{n:05}" for n in range(35_000)]
    Device.objects.bulk_create(
        [Device(tenant=tenant, device_id=i, provision_token_hash=f"{n:064x}") for n, i in enumerate(ids)],
        batch_size=5000,
    )
    job = job_create(tenant=tenant, document_type="reboot", device_ids=ids)
    assert job.total == 35_000 == JobExecution.objects.filter(job=job).count()
    with pytest.raises(InvalidInput, match="ghost"):
        job_create(tenant=tenant, document_type="reboot", device_ids=[*ids, "ghost"])
