"""Desired-state jobs: a job whose document is a desired-state merge patch, rolled out in waves.

document_type DESIRED_PATCH, document_params {"patch": {...}, "shadow": "<name>" (blank: classic)}.
The platform runs these executions, not the devices (devices never see them in job lists):
- releasing one applies the patch to its device's shadow through the twin engine (a new desired
  version, delivered as usual) and records what it wrote over what; the execution is IN_PROGRESS
  with that version as its target (the whole wave in one twin.engine.shadow_apply call);
- it SUCCEEDS once the device reports in step with that version (reported_version caught up);
  it FAILS when the twin refuses the patch (REJECTED: the document rules), and ends TIMED_OUT by
  the in-progress timeout when the device never converges;
- when the job is aborted, every device it patched gets its previous values back (a new desired
  version: nothing goes backwards), except keys whose value changed since the job wrote them
  (an operator's newer intent wins); the cancel reason carries the revert summary.
This module is the one place where the jobs domain writes twins (pyproject's import contracts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from devices.audit import who
from iotcloud import outbox
from iotcloud.errors import Conflict, InvalidInput
from jobs.choices import DESIRED_PATCH, ExecutionStatus, JobStatus
from jobs.models import ExecutionHistory, Job, JobExecution
from jobs.services import PLATFORM, close_executions, job_cancel
from twin.engine import CLASSIC, Mode, ShadowChange, load_shadows, shadow_apply
from twin.models import NamedShadow
from twin.shadow import merge_patch

logger = logging.getLogger(__name__)


def is_desired_job(job: Job) -> bool:
    return job.document_type == DESIRED_PATCH


@dataclass
class _Patched:
    """A released execution being patched (a model instance each costs 20x more to make)."""

    pk: int
    execution_number: int
    target_version: int | None = None
    applied: dict | None = None


def apply_released(job: Job, execution_pks: list[int], now) -> None:
    """Apply the job's patch to the devices of these just-released executions (one shadow_apply)."""
    patch, shadow = job.document_params["patch"], job.document_params.get("shadow", CLASSIC)
    rows = (JobExecution.objects.filter(pk__in=execution_pks).order_by("pk")
            .values_list("pk", "execution_number", "device__tenant_id", "device__device_id"))  # fmt: skip
    executions = [_Patched(pk, number) for pk, number, _, _ in rows]
    if not executions:
        return
    changes = [ShadowChange(tenant_id, device_id, shadow, desired=patch) for _, _, tenant_id, device_id in rows]
    results = shadow_apply(changes)  # each result holds the desired state it went over (the revert's "previous")
    applied, refused = [], []
    for execution, result in zip(executions, results, strict=True):
        if result.error is not None:
            refused.append((execution, result.error))
            continue
        desired = result.desired_before or {}
        after = merge_patch(desired, patch)  # what each patched key holds now (a nested patch merges)
        execution.target_version = result.desired_version
        execution.applied = {"written": {key: after.get(key) for key in patch},
                             "previous": {key: desired.get(key) for key in patch}}  # fmt: skip
        applied.append(execution)
    _start(applied, now)
    by_error: dict[tuple[str, str], list[int]] = {}
    for execution, error in refused:
        by_error.setdefault((error.message, error.code), []).append(execution.pk)
    for (message, code), pks in by_error.items():  # a statement per distinct refusal, not per device
        close_executions(JobExecution.objects.filter(pk__in=pks), ExecutionStatus.REJECTED,
                         {"reason": f"the twin refused the patch: {message}", "code": code}, now,
                         job_pk=job.pk)  # fmt: skip
    logger.info("desired-state job %s: %d patched, %d refused", job, len(applied), len(refused))


def _start(executions: list[_Patched], now) -> None:
    """The patched executions IN_PROGRESS with their target version and what they wrote, each with its
    history row. Set-based on PostgreSQL (a wave can be 100,000 devices: one statement, the rows as
    one JSON document; Django's bulk_update spends seconds per 10,000 building CASE expressions).
    Their rows are this transaction's (the release locked them): nothing can have moved them since."""
    for execution in executions:
        execution.execution_number += 1
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            batch = [{"id": e.pk, "applied": e.applied, "target_version": e.target_version} for e in executions]
            cursor.execute(
                """
                UPDATE job_executions AS e SET status = %s, started_at = %s, last_updated_at = %s,
                    execution_number = e.execution_number + 1, notify_pending = false,
                    applied = v.applied, target_version = v.target_version
                FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, applied jsonb, target_version integer)
                WHERE e.id = v.id
                """,
                [ExecutionStatus.IN_PROGRESS, now, now, json.dumps(batch, separators=(",", ":"))],
            )
        else:  # SQLite, the zero-setup default: small fleets, a statement per execution
            stamp = connection.ops.adapt_datetimefield_value(now)
            cursor.executemany(
                "UPDATE job_executions SET status = %s, started_at = %s, last_updated_at = %s, "
                "execution_number = execution_number + 1, notify_pending = %s, applied = %s, target_version = %s "
                "WHERE id = %s",
                [(ExecutionStatus.IN_PROGRESS, stamp, stamp, False, json.dumps(e.applied), e.target_version, e.pk)
                 for e in executions],
            )  # fmt: skip
    ExecutionHistory.objects.bulk_create(
        [ExecutionHistory(execution_id=e.pk, at=now, status=ExecutionStatus.IN_PROGRESS, actor=PLATFORM,
                          execution_number=e.execution_number, status_details={"target_version": e.target_version})
         for e in executions],
        batch_size=5000,
    )  # fmt: skip


def converge(job: Job, now) -> int:
    """SUCCEEDED for the job's IN_PROGRESS executions whose device reported in step with their target."""
    shadow = job.document_params.get("shadow", CLASSIC)
    running = JobExecution.objects.filter(job=job, status=ExecutionStatus.IN_PROGRESS, target_version__isnull=False)
    if shadow == CLASSIC:
        done = running.filter(device__reported_version__gte=F("target_version"))
    else:
        caught_up = NamedShadow.objects.filter(device_id=OuterRef("device_id"), name=shadow,
                                               reported_version__gte=OuterRef("target_version"))  # fmt: skip
        done = running.filter(Exists(caught_up))
    return close_executions(done, ExecutionStatus.SUCCEEDED, {"reason": "the device reported in step"}, now,
                            job_pk=job.pk, actor=PLATFORM)  # fmt: skip


def start_revert(job: Job, *, reason: str, history_actor: str = PLATFORM) -> Job:
    """Under the job's row lock: cancel it with its running executions (nothing left to wait for) and
    have every device it patched put back, a batch per transaction (revert_step) until none is left;
    the cancel reason ends with the summary then. The revert's writes are made for whoever acts now."""
    actor = who()
    summary = {"reverted": 0, "keys_kept": 0, "untouched": 0, "refused": 0, "reason": reason[:200],
               "by": actor.actor, "channel": actor.channel}  # fmt: skip
    job = job_cancel(job=job, force=True, reason=f"{reason}; reverting", actor=history_actor)
    Job.objects.filter(pk=job.pk).update(reverting=True, revert_summary=summary)
    job.reverting, job.revert_summary = True, summary
    return job


def revert_step(job: Job, now) -> int:
    """Under the job's row lock: put back the next JOBS_RELEASE_BATCH devices the job patched (their
    previous values, but for keys changed since the job wrote them); the last step ends the revert.
    Returns how many executions it handled."""
    shadow = job.document_params.get("shadow", CLASSIC)
    batch = list(JobExecution.objects.filter(job=job, target_version__isnull=False, reverted_at__isnull=True)
                 .order_by("pk").values_list("pk", "device__tenant_id", "device__device_id", "applied")
                 [: settings.JOBS_RELEASE_BATCH])  # fmt: skip
    summary = dict(job.revert_summary)
    if batch:
        for key, count in _revert([row[1:] for row in batch], shadow).items():
            summary[key] = summary.get(key, 0) + count
        JobExecution.objects.filter(pk__in=[row[0] for row in batch]).update(reverted_at=now)
    done = len(batch) < settings.JOBS_RELEASE_BATCH
    changes = {"revert_summary": summary}
    if done:
        changes.update(reverting=False, cancel_reason=f"{summary['reason']}; {describe_revert(summary)}"[:256])
        logger.warning("desired-state job %s reverted: %s", job, describe_revert(summary))
    Job.objects.filter(pk=job.pk).update(**changes)
    job.revert_summary = summary
    outbox.jobs_changed(job.tenant_id, [job.job_id])
    return len(batch)


def _revert(patched: list[tuple[str, str, dict]], shadow: str) -> dict[str, int]:
    """Put back what each (tenant, device, applied) had before the job wrote it, but for keys whose value
    changed since (an operator's or another job's newer intent wins); one shadow_apply."""
    counts = {"reverted": 0, "keys_kept": 0, "untouched": 0, "refused": 0}
    now_shadows = load_shadows({(tenant_id, device_id, shadow) for tenant_id, device_id, _ in patched})
    changes = []
    for tenant_id, device_id, applied in patched:
        current = now_shadows.get((tenant_id, device_id, shadow))
        desired = current.desired if current is not None and current.exists else {}
        written, previous = applied.get("written", {}), applied.get("previous", {})
        back = [key for key, value in written.items() if desired.get(key) == value]  # unchanged since
        counts["keys_kept"] += len(written) - len(back)
        if not back:
            counts["untouched"] += 1
            continue
        restored = dict(desired)
        for key in back:
            if previous.get(key) is None:
                restored.pop(key, None)
            else:
                restored[key] = previous[key]
        # The whole desired document, against the version just read: an operator's write in between
        # makes this a refusal (that device is left as the operator set it), never a lost update.
        changes.append(ShadowChange(tenant_id, device_id, shadow, desired=restored, desired_mode=Mode.REPLACE,
                                    expected_desired_version=current.desired_version))  # fmt: skip
    results = shadow_apply(changes) if changes else []
    counts["reverted"] = sum(1 for r in results if r.error is None)
    counts["refused"] = len(results) - counts["reverted"]
    return counts


def cancel_and_revert(*, job: Job, reason: str = "", actor: str = PLATFORM) -> Job:
    """An operator's abort of a desired-state job: canceled with its running executions, and every
    device it patched put back (start_revert); the first batch now, the rest by the scheduler."""
    if not is_desired_job(job):
        raise InvalidInput(f"revert: job {job.job_id!r} is not a desired-state job; only those can be reverted",
                           code="invalid_revert")  # fmt: skip
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status == JobStatus.COMPLETED:
            raise Conflict(f"Job {job.job_id!r} is already completed", code="job_completed")
        if locked.reverting:
            return locked  # already under way
        locked = start_revert(locked, reason=reason or "canceled and reverted", history_actor=actor)
        revert_step(locked, timezone.now())
        locked.refresh_from_db()
        return locked


def describe_revert(summary: dict) -> str:
    """A revert's counts, as the cancel reason ends with them."""
    text = f"reverted {summary['reverted']} device(s), kept {summary['keys_kept']} key(s) changed since"
    if summary.get("refused"):
        text += f", {summary['refused']} device(s) left as written meanwhile"
    return text
