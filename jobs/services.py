"""Job writes: create, cancel, device execution updates, the timeout/expiry sweep.

The rules, once:
- an execution moves only along a device transition table of jobs.choices
  (DEVICE_TRANSITIONS, the seed's, for the native HTTP API; AWS_DEVICE_TRANSITIONS,
  AWS IoT Jobs', for the MQTT jobs API: `rules`) or to TIMED_OUT / CANCELED (the
  platform); the check and the write are one conditional UPDATE, so two concurrent
  claims cannot both win;
- execution_number advances on every update (optimistic lock for devices; AWS's
  versionNumber and expectedVersion are this number);
- a step timer (AWS stepTimeoutInMinutes, step_timeout_at) times an IN_PROGRESS
  execution out when it runs past it, beside the job's in-progress timeout;
- a job's `remaining` counts non-terminal executions and is decremented in
  the same transaction as each terminal transition; the decrement that
  reaches 0 completes the job, exactly once (the job row lock serializes it);
- every change to a device's pending list flags the execution that caused
  it (notify_pending, in the same row write), and the MQTT bridge
  republishes that device's list (nothing lost across outages).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from devices.audit import audit_record
from devices.choices import DeviceStatus
from devices.models import Device, Tenant
from devices.selectors import filter_by_tag
from devices.services import validate_tags
from iotcloud import (
    lookups,  # noqa: F401  (registers __any_of)
    outbox,
)
from iotcloud.errors import Conflict, InvalidInput
from iotcloud.limits import check_document
from iotcloud.rules import DOCUMENT_TYPE, JOB_ID, SHADOW_NAME, fits_int32, is_integer
from jobs.choices import ACTIVE, DESIRED_PATCH, TERMINAL, ExecutionStatus, JobStatus, TransitionRules, sources
from jobs.models import ExecutionHistory, Job, JobExecution
from jobs.retry import parse_retry, parse_retry_for
from jobs.rollout import parse_abort, parse_rollout
from jobs.schedule import parse_schedule
from jobs.selectors import device_execution, job_execution, next_execution
from jobs.templates import template_resolve

logger = logging.getLogger(__name__)

MAX_TARGET_IDS = 100_000
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600  # in_progress_timeout_seconds: at most a week
MAX_STEP_TIMEOUT_MINUTES = 7 * 24 * 60  # a step timer (AWS: 1 to 10080 minutes)
CANCEL_STEP_TIMER = -1  # stepTimeoutInMinutes -1 on an update: drop the current step timer (AWS)
# AWS statusDetails: a map of string to string, keys [a-zA-Z0-9:_-]{1,128}, values 1-1024
# characters and no control (Unicode "C*") characters.
STATUS_DETAILS_KEY = re.compile(r"[A-Za-z0-9:_-]{1,128}")
STATUS_DETAILS_VALUE_MAX = 1024
# Who changed an execution, in its history (an operator: operator_actor(user)).
DEVICE, PLATFORM = "device", "platform"


# New QUEUED executions, one per device of a target query aliased `t` (job_create, continuous_reconcile):
# one INSERT ... SELECT, so 100,000 executions are one statement. Django knows no column defaults:
# every column is here. The only way executions are made: every device id comes from device_state in
# the same statement (its row locked: _lock_targets) and the job is the caller's, created or locked in its
# transaction. That keeps their integrity on PostgreSQL, where job_executions has no foreign-key
# triggers (jobs migration 0012).
NEW_EXECUTIONS = """
    INSERT INTO job_executions
        (tenant_id, job_id, device_id, status, status_details, execution_number, queued_at, last_updated_at,
         notify_pending, notified_next, released_at, attempt, failed_retries, timed_out_retries, applied)
    SELECT %s, %s, t.id, %s, %s, 1, %s, %s, %s, %s, %s, 1, 0, 0, %s
"""


def _lock_targets() -> str:
    """PostgreSQL: what the device foreign key's per-row check did, set-based: the target devices' rows
    are locked (KEY SHARE) as the INSERT reads them, so a concurrent DELETE of one waits for this
    transaction (then is refused: jobs migration 0012), or, if it came first, the device is not selected.
    (SQLite keeps its foreign keys, and its writes are serialized anyway.)"""
    return " FOR KEY SHARE OF t" if connection.vendor == "postgresql" else ""


def _new_execution_values(tenant_id: str, job_pk: int, now, *, released: bool) -> list:
    """NEW_EXECUTIONS' parameters: released ones are visible (and notified) at once."""
    return [tenant_id, job_pk, ExecutionStatus.QUEUED, "{}", now, now, released, False, now if released else None, "{}"]


def check_desired_params(params: dict) -> dict:
    """A desired-state job's document_params: {"patch": a JSON object (the twin's document rules),
    "shadow": a shadow name or blank}; InvalidInput naming the field."""
    unknown = sorted(params.keys() - {"patch", "shadow"})
    if unknown:
        raise InvalidInput(f"document_params: unknown field(s) {', '.join(map(repr, unknown))} for a "
                           f"{DESIRED_PATCH} job (patch, shadow)", code="invalid_document_params")  # fmt: skip
    patch = params.get("patch")
    if not isinstance(patch, dict) or not patch:
        raise InvalidInput("document_params.patch must be a non-empty JSON object (a desired-state merge patch)",
                           code="invalid_document_params")  # fmt: skip
    check_document(patch, name="document_params.patch")
    shadow = params.get("shadow", "")
    if not isinstance(shadow, str) or (shadow and not SHADOW_NAME.matches(shadow)):
        raise InvalidInput(f"document_params.shadow: Invalid shadow name {str(shadow)[:80]!r}: use {SHADOW_NAME.text} "
                           "or blank (the classic shadow)", code="invalid_document_params")  # fmt: skip
    return params


def check_document_params(document_params) -> dict:
    """A job's document_params: a JSON object within the document rules and JOB_MAX_DOCUMENT_BYTES."""
    return check_document(document_params, name="document_params", max_bytes="JOB_MAX_DOCUMENT_BYTES")


# --- create ------------------------------------------------------------------------


@transaction.atomic
def job_create(
    *,
    tenant: Tenant,
    document_type: str | None = None,
    document_params: dict | None = None,
    job_id: str | None = None,
    description: str = "",
    device_ids: list[str] | None = None,
    tags: dict[str, str] | None = None,
    expires_at: datetime | None = None,
    in_progress_timeout_seconds: int | None = None,
    rollout: dict | None = None,
    abort_config: dict | None = None,
    scheduling: dict | None = None,
    retry_config: dict | None = None,
    template: str | None = None,
    continuous: bool = False,
) -> Job:
    """Create a job and one QUEUED execution per target device, set-based.

    Without a rollout or a schedule every execution is released (visible to its device) at once;
    with one (jobs.rollout, jobs.schedule) they wait, unreleased, for the bridge's scheduler
    (jobs.release); a job whose start time is ahead is SCHEDULED until then."""
    template_ref = ""
    if template is not None:  # its document and defaults (jobs.templates); what the job gives wins
        source = template_resolve(tenant, template)
        if document_type is not None and document_type != source.document_type:
            raise InvalidInput(f"document_type comes from template {source.ref}: {source.document_type!r}",
                               code="invalid_document_type")  # fmt: skip
        document_type, document_params = source.document_type, source.params_for(document_params)
        rollout = rollout if rollout is not None else source.rollout
        abort_config = abort_config if abort_config is not None else source.abort_config
        retry_config = retry_config if retry_config is not None else source.retry_config
        if in_progress_timeout_seconds is None:
            in_progress_timeout_seconds = source.in_progress_timeout_seconds
        template_ref = source.ref
    if document_type is None:
        raise InvalidInput("Give a document_type or a template", code="invalid_document_type")
    job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
    if not JOB_ID.matches(job_id):
        raise InvalidInput(f"Invalid job id {job_id!r}: use {JOB_ID.text}", code="invalid_job_id")
    if not DOCUMENT_TYPE.matches(document_type):
        raise InvalidInput(f"document_type: use {DOCUMENT_TYPE.text}", code="invalid_document_type")
    document_params = check_document_params(document_params if document_params is not None else {})
    desired_job = document_type == DESIRED_PATCH
    if desired_job:
        check_desired_params(document_params)
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at must be in the future", code="invalid_expiry")
    if in_progress_timeout_seconds is not None and not 1 <= in_progress_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(
            f"in_progress_timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}", code="invalid_timeout"
        )
    schedule = parse_schedule(scheduling, now=now)
    # A desired-state job's executions are released by the scheduler, which applies their patch.
    paced = parse_rollout(rollout) is not None or schedule is not None or desired_job
    parse_abort(abort_config)
    parse_retry_for(document_type, retry_config)
    if continuous and (device_ids or not tags):
        raise InvalidInput("A continuous job targets a tag selector only (targets.tags), no device ids",
                           code="invalid_targets")  # fmt: skip
    targets = _resolve_targets(tenant, device_ids or [], tags or {}, allow_none=continuous)

    try:
        with transaction.atomic():
            job = Job.objects.create(
                tenant=tenant, job_id=job_id, document_type=document_type, document_params=document_params,
                description=description, targets={"device_ids": device_ids or [], "tags": tags or {}},
                expires_at=expires_at, in_progress_timeout_seconds=in_progress_timeout_seconds,
                rollout=rollout or {}, abort_config=abort_config or {}, scheduling=scheduling or {},
                retry_config=retry_config or {}, template=template_ref, continuous=continuous,
                status=JobStatus.IN_PROGRESS if schedule is None or schedule.started(now) else JobStatus.SCHEDULED,
                rollout_allowance=1.0, rollout_ticked_at=now,  # the first release on the scheduler's next tick
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"Job {job_id!r} already exists in tenant {tenant.id!r}", code="job_exists") from None

    # One INSERT ... SELECT: 100,000 executions without 100,000 round trips.
    target_sql, target_params = targets.values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(  # in device order: a rollout releases them in that order (the ids follow it)
            f"{NEW_EXECUTIONS} FROM ({target_sql}) AS t ORDER BY t.id{_lock_targets()}",
            [*_new_execution_values(tenant.id, job.pk, now, released=not paced), *target_params],
        )  # fmt: skip
        count = cursor.rowcount
    if device_ids and not tags:  # one execution per named device found (rolled back if one is missing)
        _check_named_found(tenant, device_ids, count)
    released = 0 if paced else count
    Job.objects.filter(pk=job.pk).update(total=count, remaining=count, released=released)
    audit_record(tenant_id=tenant.id, job_id=job_id, action="job.create",
                 after={"document_type": document_type, "targets": job.targets, "executions": count,
                        **({"template": template_ref} if template_ref else {})})  # fmt: skip
    job.total = job.remaining = count
    job.released = released
    if not paced:
        outbox.wake_delivery()
    outbox.jobs_changed(tenant.id, [job_id])
    logger.info("job created %s type=%s executions=%d%s", job, document_type, count, " (rollout)" if paced else "")
    return job


def _resolve_targets(tenant: Tenant, device_ids: list, tags: dict, *, allow_none: bool = False):
    if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
        raise InvalidInput("targets.device_ids must be a list of device ids", code="invalid_targets")
    if len(device_ids) > MAX_TARGET_IDS:
        raise InvalidInput(
            f"targets.device_ids: at most {MAX_TARGET_IDS} ids; use a tag selector", code="invalid_targets"
        )
    try:
        tags = validate_tags(tags)
    except InvalidInput as exc:
        raise InvalidInput(f"targets.{exc.message}", code="invalid_targets") from None
    if not device_ids and not tags:
        raise InvalidInput("targets: give device_ids, a tags selector, or both", code="no_targets")
    active = Device.objects.filter(tenant=tenant, status=DeviceStatus.ACTIVE).order_by()
    by_ids = _named_devices(tenant, device_ids) if device_ids else active.none()
    if device_ids and tags:  # (ids alone: job_create checks with the INSERT's count, one query fewer)
        _check_named_found(tenant, device_ids, by_ids.count())
    by_tags = tag_members(tenant.id, tags) if tags else active.none()
    selected = (by_ids | by_tags) if device_ids and tags else (by_ids if device_ids else by_tags)
    # Devices named and found make the selection non-empty; a continuous job may wait for its first device.
    if not allow_none and not device_ids and not selected.exists():
        raise InvalidInput("targets: no active device matches the tag selector", code="no_targets")
    return selected


def _named_devices(tenant: Tenant, device_ids: list[str]):
    return Device.objects.filter(tenant=tenant, status=DeviceStatus.ACTIVE, device_id__any_of=sorted(set(device_ids)))


def _check_named_found(tenant: Tenant, device_ids: list[str], found: int) -> None:
    """Every device a job names is an active device of its tenant: `found` of them are (a count: 100,000 ids
    are not fetched back), else InvalidInput naming the others."""
    if found == len(set(device_ids)):
        return
    known = set(_named_devices(tenant, device_ids).values_list("device_id", flat=True))
    missing = sorted(set(device_ids) - known)
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    raise InvalidInput(f"Unknown or inactive device(s) in this tenant: {', '.join(map(repr, missing[:20]))}{more}",
                       code="unknown_targets", unknown=missing[:100])  # fmt: skip


def tag_members(tenant_id: str, tags: dict):
    """The tenant's active devices having all these tags (a job's tag selector, as stored)."""
    members = Device.objects.filter(tenant_id=tenant_id, status=DeviceStatus.ACTIVE).order_by()
    for key, value in tags.items():
        members = filter_by_tag(members, key, value)
    return members


@transaction.atomic
def continuous_reconcile(job: Job, now) -> tuple[int, int]:
    """A continuous job's executions follow its tag selector: devices that match and have none get a
    QUEUED one (released at once; one that was REMOVED is queued again), QUEUED ones of devices that
    no longer match end REMOVED. Set-based; the caller holds the job's row lock. (added, removed)."""
    members = tag_members(job.tenant_id, (job.targets or {}).get("tags") or {}).values("id")
    members_sql, members_params = members.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"{NEW_EXECUTIONS} FROM ({members_sql}) AS t"  # noqa: S608 (the ORM's own SQL, parameterized)
            " WHERE NOT EXISTS (SELECT 1 FROM job_executions e WHERE e.job_id = %s AND e.device_id = t.id)"
            f" ORDER BY t.id{_lock_targets()}",
            [*_new_execution_values(job.tenant_id, job.pk, now, released=True), *members_params, job.pk],
        )  # fmt: skip
        added = cursor.rowcount
    back = _update_returning(
        JobExecution.objects.filter(job=job, status=ExecutionStatus.REMOVED, device_id__in=members),
        "status = %s, execution_number = execution_number + 1, last_updated_at = %s, queued_at = %s, "
        "released_at = %s, notify_pending = %s, status_details = %s",
        [ExecutionStatus.QUEUED, now, now, now, True, "{}"],
    )
    _record([e for e in JobExecution.objects.filter(pk__in=[pk for pk, _, _ in back])], now, PLATFORM)
    if added or back:
        Job.objects.filter(pk=job.pk).update(total=F("total") + added, remaining=F("remaining") + added + len(back),
                                             released=F("released") + added, updated_at=now)  # fmt: skip
        outbox.wake_delivery()
    gone = JobExecution.objects.filter(job=job, status=ExecutionStatus.QUEUED).exclude(device_id__in=members)
    removed = close_executions(gone, ExecutionStatus.REMOVED, {"reason": "the device no longer matches the job's tags"},
                               now, job_pk=job.pk)  # fmt: skip
    if added or back or removed:
        outbox.jobs_changed(job.tenant_id, [job.job_id])
        logger.info("continuous job %s: %d added, %d back, %d removed", job, added, len(back), removed)
    return added + len(back), removed


# --- cancel ---------------------------------------------------------------------------


@transaction.atomic
def job_cancel(*, job: Job, force: bool = False, reason: str = "", actor: str = PLATFORM) -> Job:
    """Cancel QUEUED executions (and IN_PROGRESS ones with force); the job ends CANCELED. `actor`: who
    (an operator: operator_actor(user)), in the executions' history."""
    locked = Job.objects.select_for_update().get(pk=job.pk)
    if locked.status == JobStatus.COMPLETED:
        raise Conflict(f"Job {job.job_id!r} is already completed", code="job_completed")
    now = timezone.now()
    statuses = [ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS] if force else [ExecutionStatus.QUEUED]
    details = {"reason": reason or ("job force-canceled" if force else "job canceled")}
    canceled = close_executions(
        JobExecution.objects.filter(job=locked, status__in=statuses),
        ExecutionStatus.CANCELED,
        details,
        now,
        actor=actor,
    )
    Job.objects.filter(pk=locked.pk).update(
        status=JobStatus.CANCELED, canceled_at=locked.canceled_at or now, cancel_reason=reason[:256],
        remaining=F("remaining") - canceled,
    )  # fmt: skip
    locked.refresh_from_db()
    audit_record(tenant_id=locked.tenant_id, job_id=locked.job_id, action="job.cancel",
                 after={"force": force, "reason": reason, "executions_canceled": canceled})  # fmt: skip
    outbox.jobs_changed(locked.tenant_id, [locked.job_id])
    logger.info("job canceled %s force=%s executions=%d", locked, force, canceled)
    return locked


@transaction.atomic
def execution_cancel(*, job: Job, device_id: str, force: bool = False, reason: str = "", actor: str = PLATFORM):
    """Cancel one device's execution of a job: a QUEUED one, or an IN_PROGRESS one with force."""
    execution = job_execution(job, device_id)
    statuses = [ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS] if force else [ExecutionStatus.QUEUED]
    details = {"reason": reason or ("execution force-canceled" if force else "execution canceled")}
    now = timezone.now()
    if not close_executions(JobExecution.objects.filter(pk=execution.pk, status__in=statuses),
                            ExecutionStatus.CANCELED, details, now, job_pk=job.pk, actor=actor):  # fmt: skip
        execution.refresh_from_db()
        if execution.status == ExecutionStatus.IN_PROGRESS:
            raise Conflict(
                "The execution is IN_PROGRESS on the device; cancel it with force=true", code="execution_in_progress"
            )
        raise Conflict(f"The execution is already {execution.status}", code="execution_terminal")
    audit_record(tenant_id=job.tenant_id, device_id=execution.device_id, job_id=job.job_id, action="execution.cancel",
                 after={"force": force, "reason": reason})  # fmt: skip
    outbox.jobs_changed(job.tenant_id, [job.job_id])
    logger.info("execution %s of %s canceled force=%s by %s", device_id, job, force, actor)
    execution.refresh_from_db()
    return execution


# --- delete and retention ---------------------------------------------------------------------

FINISHED = (JobStatus.COMPLETED, JobStatus.CANCELED)


@transaction.atomic
def job_delete(*, job: Job, force: bool = False) -> None:
    """Delete a job with its executions and their history. A job still running (or scheduled) needs
    force: it is canceled first (its running executions too), so no device is left with one."""
    locked = Job.objects.select_for_update().get(pk=job.pk)
    if locked.status not in FINISHED:
        if not force:
            raise Conflict(f"Job {job.job_id!r} is {locked.status}: cancel it first, or delete with force=true",
                           code="job_in_progress")  # fmt: skip
        job_cancel(job=locked, force=True, reason="job deleted")
    _delete_jobs([locked.pk])
    audit_record(tenant_id=locked.tenant_id, job_id=locked.job_id, action="job.delete", after={"force": force})
    outbox.jobs_changed(locked.tenant_id, [locked.job_id])
    logger.info("job deleted %s force=%s", locked, force)


def jobs_prune(*, now: datetime | None = None) -> int:
    """Delete finished jobs (COMPLETED, CANCELED) older than JOBS_RETENTION_DAYS (0: keep them all)."""
    days = settings.JOBS_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = Job.objects.filter(status__in=FINISHED).filter(
        Q(completed_at__lt=cutoff) | Q(completed_at__isnull=True, canceled_at__lt=cutoff)
    )
    pks = list(old.values_list("pk", flat=True)[:1000])  # a batch per sweep: the next one takes the rest
    if pks:
        with transaction.atomic():
            _delete_jobs(pks)
        logger.info("jobs retention: %d finished job(s) older than %d days deleted", len(pks), days)
    return len(pks)


def _delete_jobs(pks: list[int]) -> None:
    """The jobs, their executions and history, set-based (no per-row cascade in Python)."""
    executions = JobExecution.objects.filter(job_id__in=pks)
    ExecutionHistory.objects.filter(execution__in=executions.values("pk"))._raw_delete(ExecutionHistory.objects.db)
    executions._raw_delete(JobExecution.objects.db)
    Job.objects.filter(pk__in=pks)._raw_delete(Job.objects.db)


# --- device updates ----------------------------------------------------------------------


def check_status_details(status_details, *, rules: str = TransitionRules.SEED) -> dict:
    """A device's status_details: a JSON object within the document rules and JOB_MAX_STATUS_DETAILS_BYTES;
    under the AWS rules also a map of string to string as AWS IoT Jobs allows (keys, values)."""
    if rules == TransitionRules.AWS and isinstance(status_details, dict):
        for key, value in status_details.items():
            if not STATUS_DETAILS_KEY.fullmatch(key):
                raise InvalidInput(
                    f"statusDetails key {key[:140]!r}: use 1-128 of A-Z a-z 0-9 _ : -", code="invalid_status_details"
                )
            if not isinstance(value, str):
                raise InvalidInput(f"statusDetails.{key} must be a string", code="invalid_status_details")
            if not 1 <= len(value) <= STATUS_DETAILS_VALUE_MAX or any(
                unicodedata.category(ch)[0] == "C" for ch in value
            ):
                raise InvalidInput(
                    f"statusDetails.{key}: 1-{STATUS_DETAILS_VALUE_MAX} characters, no control characters",
                    code="invalid_status_details",
                )
    return check_document(status_details, name="status_details", max_bytes="JOB_MAX_STATUS_DETAILS_BYTES")


def check_step_timeout(minutes, *, allow_cancel: bool) -> None:
    """A step timer in minutes: 1 to MAX_STEP_TIMEOUT_MINUTES, or CANCEL_STEP_TIMER where `allow_cancel`."""
    if minutes is None:
        return
    if not is_integer(minutes) or not (
        1 <= minutes <= MAX_STEP_TIMEOUT_MINUTES or (allow_cancel and minutes == CANCEL_STEP_TIMER)
    ):
        cancel = f", or {CANCEL_STEP_TIMER} to drop the step timer" if allow_cancel else ""
        raise InvalidInput(
            f"stepTimeoutInMinutes must be an integer from 1 to {MAX_STEP_TIMEOUT_MINUTES}{cancel}",
            code="invalid_step_timeout",
        )


def _step_timeout_at(minutes, now):
    return None if minutes == CANCEL_STEP_TIMER else now + timedelta(minutes=minutes)


@transaction.atomic
def execution_update(
    *, device: Device, job_id: str, status, status_details=None, execution_number=None,
    rules: str = TransitionRules.SEED, step_timeout_minutes=None,
) -> JobExecution:  # fmt: skip
    """A device moves its execution along the `rules` table (compare-and-set).

    `execution_number`, when given, is the number the device expects the execution to have (the
    seed's execution_number, AWS's expectedVersion); `status_details` replaces the details when
    given; `step_timeout_minutes` (re)starts the step timer of an execution left IN_PROGRESS
    (CANCEL_STEP_TIMER drops it). A refusal is InvalidInput `invalid_transition` or Conflict
    (`stale_execution_number`, `job_expired`, `concurrent_update`), each carrying the current state
    (`current_status`, `execution_number` in its body; all of it in `error.execution`).
    """
    if not isinstance(status, str) or status not in ExecutionStatus.values:
        raise InvalidInput(
            f"Unknown status {status!r}; expected one of {', '.join(ExecutionStatus.values)}", code="invalid_status"
        )
    if status_details is not None:
        check_status_details(status_details, rules=rules)
    if execution_number is not None and not (is_integer(execution_number) and fits_int32(execution_number)):
        raise InvalidInput("execution_number must be a 32-bit integer", code="invalid_execution_number")
    check_step_timeout(step_timeout_minutes, allow_cancel=True)
    execution = device_execution(device, job_id)
    allowed = sources(rules, status)
    now = timezone.now()
    candidates = JobExecution.objects.filter(pk=execution.pk, status__in=allowed)
    if execution_number is not None:
        candidates = candidates.filter(execution_number=execution_number)
    expired = execution.job.expires_at is not None and execution.job.expires_at <= now
    if expired:  # not started before the job expired: it may not start now
        candidates = candidates.exclude(status=ExecutionStatus.QUEUED)
    changes = {"status": status, "execution_number": F("execution_number") + 1, "last_updated_at": now}
    if status_details is not None:
        changes["status_details"] = status_details
    if status == ExecutionStatus.IN_PROGRESS:
        # A claim (from QUEUED) starts it and changes the device's pending list; a progress
        # update (IN_PROGRESS -> IN_PROGRESS, AWS rules) keeps started_at and the list as they are.
        changes["started_at"] = Coalesce(F("started_at"), Value(now))
        changes["notify_pending"] = Case(When(status=ExecutionStatus.QUEUED, then=Value(True)),
                                         default=F("notify_pending"))  # fmt: skip
        if step_timeout_minutes is not None:
            changes["step_timeout_at"] = _step_timeout_at(step_timeout_minutes, now)
    else:  # terminal: it leaves the device's pending list
        changes["notify_pending"] = True
        changes["step_timeout_at"] = None
    retry = parse_retry(execution.job.retry_config)
    retrying = (
        status == ExecutionStatus.FAILED
        and retry is not None
        and not expired
        and execution.job.status == JobStatus.IN_PROGRESS  # a canceled job's last runs are not retried
        and retry.allows("FAILED", failed_used=execution.failed_retries, timed_out_used=execution.timed_out_retries)
    )
    if retrying:  # queued again as its next attempt, in the same compare-and-set (jobs.retry)
        candidates = candidates.filter(failed_retries=execution.failed_retries)
        changes.update(_RETRY_CHANGES, failed_retries=F("failed_retries") + 1)
    if not allowed or not candidates.update(**changes):
        _explain_refusal(execution, status, execution_number, allowed, expired)
    if status in TERMINAL and not retrying:
        _count_terminal(execution.job_id, 1)
    execution.refresh_from_db()
    if retrying:
        _record_retry(execution, now, status_details, failure=ExecutionStatus.FAILED, actor=DEVICE)
    else:
        _record([execution], now, DEVICE)
    if execution.notify_pending:
        outbox.wake_delivery()
    outbox.jobs_changed(execution.tenant_id, [job_id])
    logger.info("execution %s %s -> %s n=%d", execution, job_id, status, execution.execution_number)
    return execution


def _refusal(error_class, message: str, code: str, current: dict, **extra):
    """A refusal that carries the execution's current state: `current_status` and `execution_number` in its
    body, and all of it (status, status_details, execution_number) in `error.execution`."""
    error = error_class(message, code=code, current_status=current["status"],
                        execution_number=current["execution_number"], **extra)  # fmt: skip
    error.execution = current
    return error


def _explain_refusal(execution: JobExecution, status: str, execution_number, allowed: frozenset, expired: bool):
    current = JobExecution.objects.filter(pk=execution.pk).values("status", "status_details", "execution_number").get()
    if current["status"] not in allowed:
        raise _refusal(InvalidInput, f"Cannot transition from {current['status']} to {status}",
                       "invalid_transition", current)  # fmt: skip
    if execution_number is not None and execution_number != current["execution_number"]:
        raise _refusal(
            Conflict, f"execution_number {execution_number} is stale; the current one is {current['execution_number']}",
            "stale_execution_number", current,
        )  # fmt: skip
    if expired and current["status"] == ExecutionStatus.QUEUED:
        raise _refusal(Conflict, f"Job {execution.job.job_id!r} expired at {execution.job.expires_at.isoformat()}",
                       "job_expired", current)  # fmt: skip
    # Lost a race: someone else changed it between our read and our write.
    raise _refusal(Conflict, "The execution changed concurrently; read it again", "concurrent_update", current)


START_NEXT_ATTEMPTS = 5


@transaction.atomic
def execution_start_next(
    *, device: Device, status_details=None, step_timeout_minutes=None, rules: str = TransitionRules.AWS
) -> JobExecution | None:
    """Start the device's next pending execution (AWS StartNextPendingJobExecution); None when none is pending.

    The next one is the oldest IN_PROGRESS execution, else the oldest QUEUED one of an unexpired
    job. An IN_PROGRESS one is returned as it is (no write: its details and step timer stay); a
    QUEUED one is claimed by compare-and-set (QUEUED -> IN_PROGRESS, with `status_details` and a
    step timer when given). Two concurrent calls never claim two executions: the loser of the
    claim reads again and finds the winner's execution IN_PROGRESS. The claim is in both tables;
    `rules` picks the statusDetails rules (AWS: a map of strings).
    """
    if status_details is not None:
        check_status_details(status_details, rules=rules)
    check_step_timeout(step_timeout_minutes, allow_cancel=False)
    for _ in range(START_NEXT_ATTEMPTS):
        now = timezone.now()
        candidate = next_execution(device, now=now)
        if candidate is None:
            return None
        if candidate.status == ExecutionStatus.IN_PROGRESS:
            return _execution_with_job(candidate.pk)
        changes = {
            "status": ExecutionStatus.IN_PROGRESS, "execution_number": F("execution_number") + 1,
            "last_updated_at": now, "started_at": now, "notify_pending": True,
        }  # fmt: skip
        if status_details is not None:
            changes["status_details"] = status_details
        if step_timeout_minutes is not None:
            changes["step_timeout_at"] = _step_timeout_at(step_timeout_minutes, now)
        if JobExecution.objects.filter(pk=candidate.pk, status=ExecutionStatus.QUEUED).update(**changes):
            outbox.wake_delivery()
            outbox.jobs_changed(device.tenant_id, [candidate.job.job_id])
            started = _execution_with_job(candidate.pk)
            _record([started], now, DEVICE)
            logger.info("execution %s started (start-next) n=%d", started, started.execution_number)
            return started
    raise Conflict("The device's executions changed concurrently; try again", code="concurrent_update")


def _execution_with_job(pk: int) -> JobExecution:
    return JobExecution.objects.select_related("job").defer("job__targets", "job__description").get(pk=pk)


@transaction.atomic
def executions_cancel_for_device(*, device: Device, reason: str) -> int:
    """Close a device's QUEUED and IN_PROGRESS executions (it was decommissioned), so its jobs can complete."""
    now = timezone.now()
    closed = 0
    active = JobExecution.objects.filter(device=device, status__in=ACTIVE)
    jobs = list(active.order_by("job_id").values_list("job_id", "job__job_id").distinct())
    for job_pk, _ in jobs:
        closed += close_executions(
            active.filter(job_id=job_pk), ExecutionStatus.CANCELED, {"reason": reason}, now, job_pk=job_pk
        )
    outbox.jobs_changed(device.tenant_id, [job_id for _, job_id in jobs])
    # Flag one execution so the bridge clears the device's retained jobs/notify.
    JobExecution.objects.filter(pk__in=JobExecution.objects.filter(device=device).values("pk")[:1]).update(
        notify_pending=True
    )
    outbox.wake_delivery()
    return closed


# --- time: timeouts and expiry -------------------------------------------------------------


def job_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Time out stuck IN_PROGRESS executions (the job's in-progress timeout, the device's step timer) and
    close QUEUED ones of expired jobs."""
    now = now or timezone.now()
    touched: set[int] = set()

    def close(queryset, job_pk: int, reason: str, *, retry: bool = False) -> int:
        """TIMED_OUT, or queued again where the job's retry configuration allows (retry)."""
        details = {"reason": reason}
        retried = retry_timed_out(queryset, Job.objects.get(pk=job_pk), details, now) if retry else 0
        closed = close_executions(queryset, ExecutionStatus.TIMED_OUT, details, now, job_pk=job_pk)
        if closed or retried:
            touched.add(job_pk)
        return closed + retried

    timed_out = expired = 0
    with transaction.atomic():
        jobs_with_timeout = Job.objects.filter(
            status=JobStatus.IN_PROGRESS, in_progress_timeout_seconds__isnull=False
        ).values_list("pk", "in_progress_timeout_seconds")
        for job_pk, timeout in jobs_with_timeout:
            stuck = JobExecution.objects.filter(
                job_id=job_pk, status=ExecutionStatus.IN_PROGRESS, started_at__lt=now - timedelta(seconds=timeout)
            )
            timed_out += close(stuck, job_pk, f"in-progress timeout of {timeout}s exceeded", retry=True)
        past_step = JobExecution.objects.filter(
            status=ExecutionStatus.IN_PROGRESS, step_timeout_at__isnull=False, step_timeout_at__lte=now
        )
        for job_pk in past_step.order_by("job_id").values_list("job_id", flat=True).distinct():
            timed_out += close(past_step.filter(job_id=job_pk), job_pk, "step timeout exceeded", retry=True)
        for job_pk, expires_at in Job.objects.filter(status=JobStatus.IN_PROGRESS, expires_at__lte=now).values_list(
            "pk", "expires_at"
        ):
            queued = JobExecution.objects.filter(job_id=job_pk, status=ExecutionStatus.QUEUED)
            expired += close(queued, job_pk, f"job expired at {expires_at.isoformat()} before the device started it")
        # Operator screens follow (after commit), one event per job that changed.
        for tenant_id, job_id in Job.objects.filter(pk__in=touched).values_list("tenant_id", "job_id"):
            outbox.jobs_changed(tenant_id, [job_id])
    if timed_out or expired:
        logger.info("job sweep: timed_out=%d expired=%d", timed_out, expired)
    return {"timed_out": timed_out, "expired": expired}


# --- shared steps -------------------------------------------------------------------------------


def close_executions(queryset, status: str, details: dict, now, *, job_pk: int | None = None,
                     actor: str = PLATFORM) -> int:  # fmt: skip
    """Move executions to a terminal status; counts them against their job (when job_pk is given).

    One set-based UPDATE (RETURNING the rows it changed, for their history), no id lists in; a
    concurrent closer's rows are re-checked under their locks, so nothing is closed twice.
    """
    changed = _update_returning(
        queryset,
        # A device's list changes only if it could see the execution: not one its rollout held back,
        # nor a desired-state job's (the platform runs those; they are on no device's list).
        "status = %s, status_details = %s, execution_number = execution_number + 1, last_updated_at = %s, "
        "notify_pending = CASE WHEN released_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs WHERE "
        "jobs.id = job_executions.job_id AND jobs.document_type = %s) THEN %s ELSE notify_pending END",
        [status, json.dumps(details), now, DESIRED_PATCH, True],
    )
    ExecutionHistory.objects.bulk_create(
        [ExecutionHistory(execution_id=pk, at=now, status=status, status_details=details, execution_number=number,
                          actor=actor) for pk, number, _ in changed],
        batch_size=5000,
    )  # fmt: skip
    count = len(changed)
    if job_pk is not None:
        _count_terminal(job_pk, count)
    if count:
        outbox.wake_delivery()
    return count


def retry_timed_out(queryset, job: Job, details: dict, now) -> int:
    """Queue again, as their next attempt, the executions of `queryset` (timing out now) that the job's
    retry configuration still allows a TIMED_OUT retry; returns how many (the rest are the caller's)."""
    retry = parse_retry(job.retry_config)
    if retry is None or job.status != JobStatus.IN_PROGRESS:  # a canceled job's last runs are not retried
        return 0
    if retry.any is not None:
        eligible = queryset.alias(used=F("failed_retries") + F("timed_out_retries")).filter(used__lt=retry.any)
    else:
        eligible = queryset.filter(timed_out_retries__lt=retry.timed_out)
    changed = _update_returning(
        eligible,
        "status = %s, attempt = attempt + 1, timed_out_retries = timed_out_retries + 1, started_at = NULL, "
        "step_timeout_at = NULL, notify_pending = %s, execution_number = execution_number + 1, last_updated_at = %s",
        [ExecutionStatus.QUEUED, True, now],
    )
    ExecutionHistory.objects.bulk_create(
        [row for pk, number, attempt in changed for row in (
            ExecutionHistory(execution_id=pk, at=now, status=ExecutionStatus.TIMED_OUT, status_details=details,
                             execution_number=number, actor=PLATFORM),
            ExecutionHistory(execution_id=pk, at=now, status=ExecutionStatus.QUEUED, execution_number=number,
                             actor=PLATFORM, status_details={"retry": attempt - 1, "after": ExecutionStatus.TIMED_OUT}),
        )],
        batch_size=5000,
    )  # fmt: skip
    if changed:
        outbox.wake_delivery()
        logger.info("job %s: %d timed-out execution(s) queued again", job, len(changed))
    return len(changed)


def _update_returning(queryset, assignments: str, params: list) -> list[tuple[int, int, int]]:
    """UPDATE job_executions SET <assignments> for the rows of `queryset`, locked (FOR UPDATE: a row
    another transaction changed meanwhile is re-checked against the queryset's conditions); returns
    (id, execution_number, attempt) of each row changed."""
    selected, selected_params = queryset.select_for_update().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        # assignments: constants; the rest the ORM's own parameterized SQL
        sql = f"UPDATE job_executions SET {assignments} WHERE id IN ({selected})"  # noqa: S608
        sql += " RETURNING id, execution_number, attempt"
        cursor.execute(sql, [*params, *selected_params])
        return cursor.fetchall()


# What a retry changes: the execution is QUEUED again as its next attempt, on its device's pending list.
_RETRY_CHANGES = {
    "status": ExecutionStatus.QUEUED, "attempt": F("attempt") + 1, "started_at": None, "step_timeout_at": None,
    "notify_pending": True,
}  # fmt: skip


def _record_retry(execution: JobExecution, now, details, *, failure: str, actor: str) -> None:
    """History of an attempt that failed and was queued again: the failure (its number), then the retry."""
    ExecutionHistory.objects.bulk_create([
        ExecutionHistory(execution_id=execution.pk, at=now, status=failure, execution_number=execution.execution_number,
                         status_details=details if details is not None else execution.status_details, actor=actor),
        ExecutionHistory(execution_id=execution.pk, at=now, status=ExecutionStatus.QUEUED,
                         execution_number=execution.execution_number, actor=PLATFORM,
                         status_details={"retry": execution.attempt - 1, "after": failure}),
    ])  # fmt: skip


def _record(executions, now, actor: str) -> None:
    """History rows for executions as they are now (after a device's change)."""
    ExecutionHistory.objects.bulk_create(
        [ExecutionHistory(execution_id=e.pk, at=now, status=e.status, status_details=e.status_details,
                          execution_number=e.execution_number, actor=actor) for e in executions]
    )  # fmt: skip


def operator_actor(user) -> str:
    """How an operator appears in history: operator:<username>."""
    return f"operator:{user.get_username()}"[:160]


def _count_terminal(job_pk: int, count: int) -> None:
    """Decrement the job's remaining executions; the decrement that reaches 0 completes it, unless the
    job has abort criteria (the rollout scheduler judges its last failures first: complete_if_done)."""
    if not count:
        return
    Job.objects.filter(pk=job_pk).update(remaining=F("remaining") - count, updated_at=timezone.now())
    complete_if_done(job_pk, abort_judged=False)


def complete_if_done(job_pk: int, *, abort_judged: bool = True) -> bool:
    """COMPLETED once none of its executions is left (never a continuous job: it stays open for the
    devices that come). A job with abort criteria completes only once they were judged (abort_judged):
    a last wave that all failed at once must still abort it (and revert a desired-state job)."""
    live = (JobStatus.IN_PROGRESS, JobStatus.SCHEDULED)  # a scheduled job whose executions all ended is done too
    done = Job.objects.filter(pk=job_pk, status__in=live, remaining=0, continuous=False)
    if not abort_judged:
        done = done.filter(abort_config={})
    now = timezone.now()
    if done.update(status=JobStatus.COMPLETED, completed_at=now, updated_at=now):
        logger.info("job completed pk=%d", job_pk)
        return True
    return False
