"""Desired-state jobs: a desired-state merge patch rolled out in waves through the twin engine,
success on convergence, failure on refusal or timeout, and on abort a revert of exactly the devices
patched that never undoes an operator's newer value; versions never go backwards."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device
from iotcloud.testing import device_client
from jobs.choices import JobStatus
from jobs.models import Job, JobExecution
from jobs.release import rollout_tick
from jobs.services import job_create, job_sweep
from twin.services import twin_record_reported, twin_update_desired

pytestmark = pytest.mark.django_db

ABORT_ON_TIMEOUTS = {"criteria": [{"failure_type": "TIMED_OUT", "threshold_percentage": 50, "min_executed": 2}]}


@pytest.fixture
def fleet(tenant, make_device):
    devices = [make_device(tenant, f"d{n}") for n in range(6)]
    for device in devices:
        twin_update_desired(device=device, document={"led": "off", "fan": 1})
        twin_record_reported(device=device, reported={"led": "off", "fan": 1}, version=1)  # in step
    return devices


def patch_job(tenant, devices, patch, **extra) -> Job:
    return job_create(tenant=tenant, document_type="desired_state_patch", device_ids=[d.device_id for d in devices],
                      document_params={"patch": patch}, **extra)  # fmt: skip


def row(device) -> Device:
    return Device.objects.get(pk=device.pk)


def statuses(job) -> list[str]:
    return list(JobExecution.objects.filter(job=job).order_by("device__device_id").values_list("status", flat=True))


def test_waves_patch_the_twins_and_succeed_when_devices_report_in_step(tenant, fleet):
    job = patch_job(tenant, fleet, {"led": "on"}, rollout={"maximum_per_minute": 60})
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in fleet)  # nothing before a release
    rollout_tick(now=start)
    rollout_tick(now=start + timedelta(seconds=1))
    assert [row(d).desired_state["led"] for d in fleet] == ["on", "on", "off", "off", "off", "off"]  # a wave of 2
    first = JobExecution.objects.get(job=job, device=fleet[0])
    assert first.status == "IN_PROGRESS" and first.target_version == row(fleet[0]).desired_version == 2
    assert device_client(fleet[0]).get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}  # the platform's

    twin_record_reported(device=fleet[0], reported={"led": "on", "fan": 1}, version=2)  # converged
    rollout_tick(now=start + timedelta(seconds=1.5))
    assert statuses(job)[:2] == ["SUCCEEDED", "IN_PROGRESS"]
    history = list(JobExecution.objects.get(job=job, device=fleet[0]).history.order_by("pk"))
    assert [(h.status, h.actor) for h in history][-2:] == [("IN_PROGRESS", "platform"), ("SUCCEEDED", "platform")]
    assert history[-2].status_details == {"target_version": 2}


def test_a_patch_the_twin_refuses_fails_that_device_only(settings, tenant, fleet):
    twin_update_desired(device=fleet[1], document={"blob": "x" * 7000})  # near TWIN_MAX_DOCUMENT_BYTES
    job = patch_job(tenant, fleet[:2], {"extra": "y" * 2000})
    rollout_tick()
    assert statuses(job) == ["IN_PROGRESS", "REJECTED"]
    rejected = JobExecution.objects.get(job=job, device=fleet[1])
    assert (
        "the twin refused the patch" in rejected.status_details["reason"] and "extra" not in row(fleet[1]).desired_state
    )


def test_no_convergence_within_the_timeout_times_out(tenant, fleet):
    job = patch_job(tenant, fleet[:1], {"led": "on"}, in_progress_timeout_seconds=60)
    rollout_tick()
    JobExecution.objects.filter(job=job).update(started_at=timezone.now() - timedelta(minutes=5))
    job_sweep()
    assert statuses(job) == ["TIMED_OUT"] and Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED


def test_abort_reverts_exactly_the_devices_patched_but_not_an_operators_newer_value(tenant, fleet):
    job = patch_job(tenant, fleet, {"led": "on", "fan": 3}, rollout={"maximum_per_minute": 60},
                    in_progress_timeout_seconds=60, abort_config=ABORT_ON_TIMEOUTS)  # fmt: skip
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    for second in range(4):
        rollout_tick(now=start + timedelta(seconds=second))
    patched, untouched = fleet[:4], fleet[4:]
    versions = {d.pk: row(d).desired_version for d in fleet}
    assert all(row(d).desired_state == {"led": "on", "fan": 3} for d in patched)
    twin_update_desired(device=fleet[3], document={"fan": 9})  # an operator's newer intent for one key
    JobExecution.objects.filter(job=job, device__in=fleet[:2]).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()  # two of four released timed out: 50%
    rollout_tick(now=start + timedelta(seconds=4))

    aborted = Job.objects.get(pk=job.pk)
    assert aborted.status == JobStatus.CANCELED
    assert "reverted 4 device(s), kept 1 key(s) changed since" in aborted.cancel_reason
    assert [row(d).desired_state for d in patched] == [{"led": "off", "fan": 1}] * 3 + [{"led": "off", "fan": 9}]
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in untouched)
    assert all(row(d).desired_version == versions[d.pk] for d in untouched)  # never patched, never reverted
    assert all(row(d).desired_version > versions[d.pk] for d in patched)  # a revert is a newer version
    assert not JobExecution.objects.filter(job=job, status__in=["QUEUED", "IN_PROGRESS"]).exists()


def test_a_last_wave_that_all_times_out_at_once_still_aborts_and_reverts(tenant, fleet):
    # Every execution ends in the same sweep: the job is not COMPLETED before its criteria are judged.
    job = patch_job(tenant, fleet[:3], {"led": "on"}, in_progress_timeout_seconds=60, abort_config=ABORT_ON_TIMEOUTS)
    rollout_tick()
    JobExecution.objects.filter(job=job).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS and statuses(job) == ["TIMED_OUT"] * 3
    rollout_tick()
    aborted = Job.objects.get(pk=job.pk)
    assert aborted.status == JobStatus.CANCELED and "reverted 3 device(s)" in aborted.cancel_reason
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in fleet[:3])


def test_a_job_with_abort_criteria_that_all_succeeded_completes_at_the_next_tick(tenant, fleet):
    job = patch_job(tenant, fleet[:2], {"led": "on"}, abort_config=ABORT_ON_TIMEOUTS)
    rollout_tick()
    for device in fleet[:2]:
        twin_record_reported(device=device, reported={"led": "on", "fan": 1}, version=row(device).desired_version)
    rollout_tick()  # converges both: none left, none failed
    done = Job.objects.get(pk=job.pk)
    assert done.status == JobStatus.COMPLETED and done.completed_at is not None and statuses(job) == ["SUCCEEDED"] * 2


def test_two_jobs_on_the_same_key_the_aborted_one_does_not_undo_the_other(tenant, fleet):
    device, other = fleet[0], fleet[1]
    first = patch_job(tenant, [device, other], {"led": "on"}, in_progress_timeout_seconds=60,
                      abort_config={"criteria": [{"failure_type": "ALL", "threshold_percentage": 50,
                                                  "min_executed": 2}]})  # fmt: skip
    rollout_tick()
    second = patch_job(tenant, [device], {"led": "blue"})
    rollout_tick()
    assert row(device).desired_state["led"] == "blue"
    JobExecution.objects.filter(job=first, device=other).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()  # one of two timed out: 50%
    rollout_tick()
    assert Job.objects.get(pk=first.pk).status == JobStatus.CANCELED
    assert row(device).desired_state["led"] == "blue"  # the second job's value stays
    assert row(other).desired_state["led"] == "off"  # the first job's own change is put back
    assert Job.objects.get(pk=second.pk).status == JobStatus.IN_PROGRESS


def test_bad_desired_state_jobs_are_refused_naming_the_field(operator, tenant, fleet):
    body = {"document_type": "desired_state_patch", "targets": {"device_ids": ["d0"]}}
    for params, text in [({}, "document_params.patch"), ({"patch": []}, "document_params.patch"),
                         ({"patch": {"a": 1}, "shadow": "bad name"}, "Invalid shadow name"),
                         ({"patch": {"a": 1}, "extra": 1}, "unknown field")]:  # fmt: skip
        refused = operator.post("/customer/jobs", {**body, "document_params": params}, expect=400).json()
        assert text in refused["detail"]
    retried = {**body, "document_params": {"patch": {"a": 1}},
               "retry_config": {"criteria": [{"failure_type": "TIMED_OUT", "number_of_retries": 1}]}}  # fmt: skip
    refused = operator.post("/customer/jobs", retried, expect=400).json()
    assert refused["detail"].startswith("retry_config does not apply to a desired-state job")
    assert not Job.objects.exists() and not JobExecution.objects.exists()


def test_devices_are_not_notified_of_the_executions_the_platform_runs(tenant, fleet):
    job = patch_job(tenant, fleet[:2], {"led": "on"}, in_progress_timeout_seconds=60)
    rollout_tick()
    twin_record_reported(device=fleet[0], reported={"led": "on", "fan": 1}, version=row(fleet[0]).desired_version)
    JobExecution.objects.filter(job=job, device=fleet[1]).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()
    rollout_tick()
    assert statuses(job) == ["SUCCEEDED", "TIMED_OUT"]
    assert not JobExecution.objects.filter(job=job, notify_pending=True).exists()  # their lists never held them


def test_a_named_shadow_job_patches_that_shadow_and_converges_on_its_reports(tenant, fleet):
    from twin.engine import ShadowChange, shadow_apply
    from twin.models import NamedShadow

    device = fleet[0]
    job = job_create(tenant=tenant, document_type="desired_state_patch", device_ids=[device.device_id],
                     document_params={"patch": {"interval_s": 30}, "shadow": "config"})  # fmt: skip
    rollout_tick()
    named = NamedShadow.objects.get(device=device, name="config")
    execution = JobExecution.objects.get(job=job)
    assert named.desired_state == {"interval_s": 30} and execution.target_version == named.desired_version
    assert row(device).desired_state == {"led": "off", "fan": 1}  # the classic shadow is not touched
    rollout_tick()
    assert statuses(job) == ["IN_PROGRESS"]
    shadow_apply([ShadowChange(tenant.id, device.device_id, "config", reported={"interval_s": 30}, by_device=True)])
    rollout_tick()
    assert statuses(job) == ["SUCCEEDED"]


def test_an_operator_cancels_and_reverts_over_the_api(operator, tenant, fleet):
    from devices.models import AuditEvent

    job = patch_job(tenant, fleet, {"led": "on"}, job_id="wave", rollout={"maximum_per_minute": 60})
    start = Job.objects.get(pk=job.pk).rollout_ticked_at
    rollout_tick(now=start)
    rollout_tick(now=start + timedelta(seconds=1))  # a wave of 2; 4 never released
    twin_record_reported(device=fleet[0], reported={"led": "on", "fan": 1}, version=row(fleet[0]).desired_version)
    rollout_tick(now=start + timedelta(seconds=1.5))  # the first one succeeded
    body = operator.post("/customer/jobs/wave/cancel", {"revert": True, "reason": "wrong colour"}, expect=200).json()

    assert body["status"] == "CANCELED"
    assert body["cancel_reason"] == "wrong colour; reverted 2 device(s), kept 0 key(s) changed since"
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in fleet)
    assert statuses(job) == ["SUCCEEDED", "CANCELED", "CANCELED", "CANCELED", "CANCELED", "CANCELED"]
    reverts = AuditEvent.objects.filter(action="desired.write", version=3, device__in=fleet[:2])  # v2: the patch
    assert reverts.count() == 2 and {(e.actor, e.channel) for e in reverts} == {("operator:alice", "api")}


def test_revert_is_refused_for_other_jobs_for_bad_input_and_once_completed(operator, tenant, fleet):
    job_create(tenant=tenant, job_id="reboot", document_type="reboot", device_ids=["d0"])
    refused = operator.post("/customer/jobs/reboot/cancel", {"revert": True}, expect=400).json()
    assert refused["detail"].startswith("revert: job 'reboot' is not a desired-state job")
    assert Job.objects.get(job_id="reboot").status == JobStatus.IN_PROGRESS  # nothing done
    bad = operator.post("/customer/jobs/reboot/cancel", {"revert": "yes"}, expect=400).json()
    assert "revert" in str(bad)

    done = patch_job(tenant, fleet[:1], {"led": "on"}, job_id="done")
    rollout_tick()
    twin_record_reported(device=fleet[0], reported={"led": "on", "fan": 1}, version=row(fleet[0]).desired_version)
    rollout_tick()
    assert Job.objects.get(pk=done.pk).status == JobStatus.COMPLETED
    operator.post("/customer/jobs/done/cancel", {"revert": True}, expect=409)
    assert row(fleet[0]).desired_state["led"] == "on"  # a completed job's values stay


def test_a_big_wave_is_released_batch_by_batch_in_one_tick(settings, monkeypatch, tenant, fleet):
    import jobs.desired

    settings.JOBS_RELEASE_BATCH = 4
    waves = []
    real = jobs.desired.shadow_apply
    monkeypatch.setattr(jobs.desired, "shadow_apply", lambda changes: waves.append(len(changes)) or real(changes))
    job = patch_job(tenant, fleet, {"led": "on"})  # no rollout: every device at once
    assert rollout_tick()["released"] == 6
    assert waves == [4, 2]  # a transaction per batch: the device rows are locked a batch at a time
    assert Job.objects.get(pk=job.pk).released == 6 and statuses(job) == ["IN_PROGRESS"] * 6


def test_a_revert_goes_a_batch_per_transaction_and_resumes_where_it_stopped(settings, operator, tenant, fleet):
    from devices.models import AuditEvent

    settings.JOBS_RELEASE_BATCH = 2
    job = patch_job(tenant, fleet[:5], {"led": "on"}, job_id="big")
    rollout_tick()  # released in batches of 2: all five patched
    assert all(row(d).desired_state["led"] == "on" for d in fleet[:5])
    body = operator.post("/customer/jobs/big/cancel", {"revert": True}, expect=200).json()
    assert body["status"] == "CANCELED" and body["reverting"] is True  # the first batch only
    assert body["revert_summary"]["reverted"] == 2 and body["cancel_reason"].endswith("; reverting")
    assert [row(d).desired_state["led"] for d in fleet[:5]] == ["off", "off", "on", "on", "on"]

    rollout_tick()  # the scheduler goes on from there, batch after batch
    done = Job.objects.get(pk=job.pk)
    assert not done.reverting and done.revert_summary["reverted"] == 5
    assert done.cancel_reason == "canceled and reverted; reverted 5 device(s), kept 0 key(s) changed since"
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in fleet[:5])
    assert JobExecution.objects.filter(job=job, reverted_at__isnull=False).count() == 5
    reverts = AuditEvent.objects.filter(action="desired.write", version=3, device__in=fleet[:5])
    assert reverts.count() == 5 and {e.actor for e in reverts} == {"operator:alice"}  # the scheduler's too
    rollout_tick()
    assert all(row(d).desired_version == 3 for d in fleet[:5])  # nothing reverted twice


def test_an_abort_reverts_batch_after_batch_within_its_turn(settings, monkeypatch, tenant, fleet):
    import jobs.desired

    settings.JOBS_RELEASE_BATCH = 2
    job = patch_job(tenant, fleet[:5], {"led": "on"}, in_progress_timeout_seconds=60, abort_config=ABORT_ON_TIMEOUTS)
    rollout_tick()
    JobExecution.objects.filter(job=job).update(started_at=timezone.now() - timedelta(hours=1))
    job_sweep()
    waves = []
    real = jobs.desired.shadow_apply
    monkeypatch.setattr(jobs.desired, "shadow_apply", lambda changes: waves.append(len(changes)) or real(changes))
    assert rollout_tick()["aborted"] == 1
    assert waves == [2, 2, 1]  # three transactions, one tick
    aborted = Job.objects.get(pk=job.pk)
    assert aborted.status == JobStatus.CANCELED and not aborted.reverting
    assert (
        aborted.cancel_reason.startswith("abort criterion tripped") and "reverted 5 device(s)" in aborted.cancel_reason
    )
    assert all(row(d).desired_state == {"led": "off", "fan": 1} for d in fleet[:5])
