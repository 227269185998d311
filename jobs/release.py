"""The rollout scheduler: starts scheduled jobs, releases jobs' executions at their configured pace
(inside their maintenance windows), ends them at their end time, and aborts jobs whose failures
cross an abort criterion (the rules: jobs.rollout, jobs.schedule).

`rollout_tick()` runs in every bridge (its rollout thread, every JOBS_ROLLOUT_TICK_SECONDS) and is
safe to run in several at once: each job is handled under its row lock, taken with SKIP LOCKED, so
a job is ticked by one bridge at a time and its allowance is spent once. `now` is a parameter so
that tests drive the clock.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from devices.audit import acting
from iotcloud import outbox
from jobs.choices import DESIRED_PATCH, ExecutionStatus, JobStatus
from jobs.desired import apply_released, converge, is_desired_job, revert_step, start_revert
from jobs.models import Job, JobExecution
from jobs.rollout import parse_abort, parse_rollout
from jobs.schedule import parse_schedule
from jobs.services import close_executions, complete_if_done, continuous_reconcile, job_cancel

logger = logging.getLogger(__name__)

LIVE = (JobStatus.SCHEDULED, JobStatus.IN_PROGRESS)
FAILURES = (ExecutionStatus.FAILED, ExecutionStatus.REJECTED, ExecutionStatus.TIMED_OUT)
RELEASE_ALL = 10_000_000  # a job without a pace releases everything at once (jobs hold at most this many)
TURN_SECONDS = 5.0  # one job's turn in a tick, batch after batch, before the next job's


def rollout_tick(*, now: datetime | None = None) -> dict[str, int]:
    """One pass over the jobs in progress that have a rollout, a schedule or abort criteria (and the
    desired-state jobs being reverted); returns how many executions were released and how many jobs
    were aborted."""
    now = now or timezone.now()
    released = aborted = 0
    due = Q(status__in=LIVE) | Q(reverting=True)
    paced = Job.objects.filter(due).filter(
        ~Q(rollout={}) | ~Q(abort_config={}) | ~Q(scheduling={}) | Q(continuous=True) | Q(document_type=DESIRED_PATCH)
    )
    for pk in paced.order_by("pk").values_list("pk", flat=True):
        # A transaction releases (or reverts) at most JOBS_RELEASE_BATCH; a job with more due goes on
        # in the next one (its allowance was saved), for up to TURN_SECONDS, then the next job's turn.
        turn_ends = time.monotonic() + TURN_SECONDS
        while True:
            with transaction.atomic():
                job = Job.objects.select_for_update(skip_locked=True).filter(due, pk=pk).first()
                if job is None:  # another bridge has it, or it finished meanwhile
                    break
                turn = _turn(job, now)
            released += turn.released
            aborted += turn.aborted
            if not turn.more or time.monotonic() > turn_ends:
                break
    if released or aborted:
        logger.info("rollout tick: released=%d aborted=%d", released, aborted)
    return {"released": released, "aborted": aborted}


class Turn(NamedTuple):
    released: int = 0
    aborted: bool = False
    more: bool = False  # a full batch was done: there may be more due now


def _turn(job: Job, now: datetime) -> Turn:
    """One job's turn, under its row lock, acting for the job (the audit trail's actor of its writes),
    or, reverting, for whoever asked for the revert."""
    if job.reverting:
        with acting(job.revert_summary.get("by") or f"job:{job.job_id}", job.revert_summary.get("channel", "job")):
            return Turn(more=revert_step(job, now) >= settings.JOBS_RELEASE_BATCH)
    with acting(f"job:{job.job_id}", "job"):
        return _tick(job, now)


def _tick(job: Job, now: datetime) -> Turn:
    schedule = parse_schedule(job.scheduling)
    if job.status == JobStatus.SCHEDULED:
        if schedule is not None and not schedule.started(now):
            return Turn()
        _start(job, now)
    if schedule is not None and schedule.ended(now):
        _end(job, schedule.end_behavior)
        return Turn()
    if job.continuous:
        continuous_reconcile(job, now)
        job.refresh_from_db()
    if is_desired_job(job):
        converge(job, now)
    if (aborted := _abort_if_tripped(job, now)) is not None:
        return aborted
    if job.abort_config and complete_if_done(job.pk):  # its executions all ended, none tripped it
        return Turn()
    if schedule is not None and not schedule.open(now):  # outside its maintenance windows
        Job.objects.filter(pk=job.pk).update(rollout_ticked_at=now)  # nothing accrues meanwhile
        return Turn()
    released = _release_due(job, now)
    return Turn(released=released, more=released >= settings.JOBS_RELEASE_BATCH)


def _start(job: Job, now: datetime) -> None:
    """A scheduled job's start time came: IN_PROGRESS, its rollout starting from now."""
    Job.objects.filter(pk=job.pk).update(status=JobStatus.IN_PROGRESS, rollout_allowance=1.0, rollout_ticked_at=now)
    job.status, job.rollout_allowance, job.rollout_ticked_at = JobStatus.IN_PROGRESS, 1.0, now
    outbox.jobs_changed(job.tenant_id, [job.job_id])
    logger.info("job %s started (scheduled)", job)


def _end(job: Job, behavior: str) -> None:
    """Its end time came: STOP_ROLLOUT cancels what was not released; CANCEL / FORCE_CANCEL the job."""
    reason = f"end time reached ({behavior})"
    if behavior != "STOP_ROLLOUT":
        job_cancel(job=job, force=behavior == "FORCE_CANCEL", reason=reason)
        return
    held_back = JobExecution.objects.filter(job=job, released_at__isnull=True, status=ExecutionStatus.QUEUED)
    if held_back.exists():
        canceled = close_executions(held_back, ExecutionStatus.CANCELED, {"reason": reason}, timezone.now(),
                                    job_pk=job.pk)  # fmt: skip
        outbox.jobs_changed(job.tenant_id, [job.job_id])
        logger.info("job %s: rollout stopped at its end time, %d execution(s) never released", job, canceled)


def _release_due(job: Job, now: datetime) -> int:
    rollout = parse_rollout(job.rollout)
    if rollout is None:  # scheduled, windowed or a desired-state job, no pace: everything at once
        return _released(job, _release(job, RELEASE_ALL, now), now, allowance=0.0)
    elapsed = (now - job.rollout_ticked_at).total_seconds() if job.rollout_ticked_at else 0.0
    succeeded = 0
    if rollout.criterion == "number_of_succeeded_things":
        succeeded = JobExecution.objects.filter(job=job, status=ExecutionStatus.SUCCEEDED).count()
    allowance = rollout.accrue(job.rollout_allowance, elapsed, notified=job.released, succeeded=succeeded)
    count = _release(job, math.floor(allowance), now) if allowance >= 1 else 0
    return _released(job, count, now, allowance=allowance - count)


def _released(job: Job, count: int, now: datetime, *, allowance: float) -> int:
    Job.objects.filter(pk=job.pk).update(rollout_allowance=allowance, rollout_ticked_at=now,
                                         released=job.released + count)  # fmt: skip
    if count:
        outbox.wake_delivery()  # their devices' pending lists and notify messages
        outbox.jobs_changed(job.tenant_id, [job.job_id])
        logger.info("job %s released %d execution(s) (%d of %d)", job, count, job.released + count, job.total)
    return count


def _release(job: Job, limit: int, now: datetime) -> int:
    """Release up to `limit` of the job's unreleased QUEUED executions, in id order (targets' order);
    a desired-state job's are applied to their twins at once (jobs.desired)."""
    desired = is_desired_job(job)
    limit = min(limit, settings.JOBS_RELEASE_BATCH)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE job_executions SET released_at = %s, notify_pending = %s
            WHERE id IN (
                SELECT id FROM job_executions
                WHERE job_id = %s AND released_at IS NULL AND status = %s
                ORDER BY id LIMIT %s
            )
            RETURNING id
            """,
            [now, not desired, job.pk, ExecutionStatus.QUEUED, limit],  # devices never list a desired one
        )
        released = [pk for (pk,) in cursor.fetchall()]
    if desired and released:
        apply_released(job, released, now)
    return len(released)


def _abort_if_tripped(job: Job, now: datetime) -> Turn | None:
    abort = parse_abort(job.abort_config)
    if abort is None or not job.released:
        return None
    counts = dict(
        JobExecution.objects.filter(job=job, status__in=FAILURES, released_at__isnull=False)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    criterion = abort.tripped(released=job.released, failures=counts)
    if criterion is None:
        return None
    reason = criterion.describe(released=job.released, failures=counts)
    logger.warning("job %s aborted: %s", job, reason)
    if is_desired_job(job):  # put back what it changed, a batch at a time (the first one now)
        reverting = start_revert(job, reason=reason)
        return Turn(aborted=True, more=revert_step(reverting, now) >= settings.JOBS_RELEASE_BATCH)
    job_cancel(job=job, force=abort.force, reason=reason)
    return Turn(aborted=True)
