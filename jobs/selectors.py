"""Job reads: a device's pending queue, execution and job documents, progress counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.models import Case, Count, DateTimeField, Expression, F, IntegerField, Q, Value, When, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import RowNumber
from django.utils import timezone

from devices.models import Device
from devices.selectors import TOKEN_DEVICE_ID, TokenRead, device_read_rows, operator_tenant
from iotcloud.errors import NotFound
from iotcloud.rules import DEVICE_ID, JOB_ID
from jobs.choices import ACTIVE, DESIRED_PATCH, TERMINAL, ExecutionStatus, JobStatus
from jobs.models import ExecutionHistory, Job, JobExecution


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def pending_summary(execution: JobExecution) -> dict:
    """A pending list's entry: the seed's fields, and the execution's status (QUEUED or IN_PROGRESS)."""
    job = execution.job
    return {
        "job_id": job.job_id,
        "execution_number": execution.execution_number,
        "document": {"type": job.document_type, "params": job.document_params},
        "queued_at": _iso(execution.queued_at),
        "expires_at": _iso(job.expires_at),
        "status": execution.status,
    }


# What a pending entry needs (the seed's summary, AWS's JobExecutionSummary and, for the first
# one, JobExecutionData). A job's `targets` can hold 100,000 device ids: never drag it (or other
# unused columns) through a device's hot path.
SUMMARY_FIELDS = ("id", "device_id", "status", "status_details", "execution_number", "attempt", "queued_at",
                  "started_at", "last_updated_at", "job__job_id", "job__document_type", "job__document_params",
                  "job__expires_at")  # fmt: skip

# The pending order (AWS's): IN_PROGRESS executions first, then QUEUED ones, each oldest first.
_IN_PROGRESS_FIRST = Case(When(status=ExecutionStatus.IN_PROGRESS, then=Value(0)), default=Value(1))
PENDING_ORDER = (_IN_PROGRESS_FIRST, F("queued_at"), F("id"))


def _pending(executions, now: datetime):
    """Executions a device has yet to finish: IN_PROGRESS ones, and QUEUED ones of unexpired jobs,
    released ones only (a rollout has not shown it the others yet).

    (An expired job's QUEUED executions may no longer start; an IN_PROGRESS one may still finish.)
    `status__in` repeats what the OR implies, so PostgreSQL matches idx_job_exec_pending_released's predicate.
    """
    unexpired = Q(job__expires_at__isnull=True) | Q(job__expires_at__gt=now)
    return (
        executions.filter(status__in=ACTIVE, released_at__isnull=False)
        .exclude(
            job__document_type=DESIRED_PATCH  # the platform runs those (jobs.desired)
        )
        .filter(Q(status=ExecutionStatus.IN_PROGRESS) | (Q(status=ExecutionStatus.QUEUED) & unexpired))
    )


def pending_executions(device, *, now: datetime | Expression | None = None, limit: int | None = None):
    """A device's pending executions, IN_PROGRESS first, then QUEUED oldest first (uses idx_job_exec_pending).

    `device`: its pk, or an expression of it (the fixed pending read's TOKEN_DEVICE_ID)."""
    now = now or timezone.now()
    return (
        _pending(JobExecution.objects.filter(device_id=device), now)
        .select_related("job")
        .only(*SUMMARY_FIELDS)
        .order_by(*PENDING_ORDER)[: limit or settings.JOBS_PENDING_LIMIT]
    )


def next_execution(device: Device, *, now: datetime | None = None) -> JobExecution | None:
    """The execution a device should run next (AWS's `$next`): the first of its pending list, or None."""
    return pending_executions(device.pk, now=now, limit=1).first()


# --- the device's pending list: one fixed query ---------------------------------------------------

# A pending list entry's columns, and their place in the fixed query's rows.
PENDING_COLUMNS = ("execution_number", "queued_at", "job__job_id", "job__document_type", "job__document_params",
                   "job__expires_at", "status")  # fmt: skip
_PENDING_RANK = "pending_rank"
_NOW = object()  # where the request's `now` goes in the fixed query's parameters


class _RequestNow(Expression):
    """`now` in the fixed pending query, compiled once: a parameter, set per request."""

    output_field = DateTimeField()

    def as_sql(self, compiler, connection):
        return "%s", [_NOW]


@dataclass(frozen=True)
class _PendingQuery:
    sql: str
    params: tuple
    converters: tuple  # (column index, converters, expression), as the ORM applies them


_PENDING_QUERIES: dict[tuple[str, int], _PendingQuery] = {}


def _pending_query() -> _PendingQuery:
    """The pending list as one fixed SQL query (per backend and JOBS_PENDING_LIMIT), compiled once from the
    ORM's rules above (_pending, PENDING_ORDER): no query building per request, the same SQL every time."""
    key = (connection.vendor, settings.JOBS_PENDING_LIMIT)
    if key not in _PENDING_QUERIES:
        device = RawSQL(TOKEN_DEVICE_ID, (), output_field=IntegerField())  # noqa: S611 (a constant)
        queryset = (
            pending_executions(device, now=_RequestNow())
            .annotate(**{_PENDING_RANK: Window(RowNumber(), order_by=list(PENDING_ORDER))})
            .values_list(*PENDING_COLUMNS, _PENDING_RANK)
        )
        compiler = queryset.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        columns = [expression for expression, _, _ in compiler.select[: len(PENDING_COLUMNS)]]
        converters = tuple((i, tuple(found), e) for i, (found, e) in compiler.get_converters(columns).items())
        _PENDING_QUERIES[key] = _PendingQuery(sql, tuple(params), converters)
    return _PENDING_QUERIES[key]


def pending_read(now: datetime | None = None) -> TokenRead:
    """The device's pending list, to read with its token lookup (DeviceAPIView.token_reads): one statement."""
    query, now = _pending_query(), now or timezone.now()
    return TokenRead(query.sql, tuple(now if p is _NOW else p for p in query.params), order=_PENDING_RANK)


def pending_from_rows(rows: list[tuple]) -> list[dict]:
    """The device API's pending list (pending_summary entries) from pending_read's rows: plain rows, no
    model instances (a device polls this)."""
    converters = _pending_query().converters
    entries = []
    for row in rows:
        values = list(row)
        for index, found, expression in converters:
            for converter in found:
                values[index] = converter(values[index], expression, connection)
        number, queued_at, job_id, kind, params, expires_at, status = values[: len(PENDING_COLUMNS)]
        entries.append({"job_id": job_id, "execution_number": number, "document": {"type": kind, "params": params},
                        "queued_at": _iso(queued_at), "expires_at": _iso(expires_at), "status": status})  # fmt: skip
    return entries


def pending_jobs(device: Device, *, now: datetime | None = None) -> list[dict]:
    """A device's pending list, by the same fixed query (for a device known already)."""
    return pending_from_rows(device_read_rows(pending_read(now), device.pk))


def pending_executions_for_devices(
    device_pks: list[int], *, now: datetime | None = None, limit: int | None = None
) -> dict[int, list[JobExecution]]:
    """Pending executions of many devices at once (the bridge's jobs notify): one query, top N per device,
    each list in the pending order."""
    now = now or timezone.now()
    ranked = (
        _pending(JobExecution.objects.filter(device_id__in=device_pks), now)
        .select_related("job")
        .only(*SUMMARY_FIELDS)
        .annotate(
            first=_IN_PROGRESS_FIRST,
            rank=Window(RowNumber(), partition_by=F("device_id"), order_by=list(PENDING_ORDER)),
        )
        .filter(rank__lte=limit or settings.JOBS_PENDING_LIMIT)
        .order_by("device_id", "first", "queued_at", "id")
    )
    lists: dict[int, list[JobExecution]] = {pk: [] for pk in device_pks}
    for execution in ranked:
        lists[execution.device_id].append(execution)
    return lists


def pending_jobs_for_devices(device_pks: list[int], *, now: datetime | None = None) -> dict[int, list[dict]]:
    """Pending lists (pending_summary entries) for many devices at once: one query."""
    return {
        pk: [pending_summary(execution) for execution in executions]
        for pk, executions in pending_executions_for_devices(device_pks, now=now).items()
    }


def execution_document(execution: JobExecution) -> dict:
    job = execution.job
    return {
        "job_id": job.job_id,
        "device_id": execution.device.device_id,
        "status": execution.status,
        "status_details": execution.status_details,
        "execution_number": execution.execution_number,
        "document": {"type": job.document_type, "params": job.document_params},
        "queued_at": execution.queued_at,
        "started_at": execution.started_at,
        "last_updated_at": execution.last_updated_at,
        "expires_at": job.expires_at,
    }


def _check_job_id(job_id: str) -> None:
    if not JOB_ID.matches(job_id):  # cannot exist; also keeps NUL bytes away from PostgreSQL
        raise NotFound(f"Job {job_id[:200]!r} not found", code="job_not_found")


def device_execution(device: Device, job_id: str) -> JobExecution:
    _check_job_id(job_id)
    execution = (
        JobExecution.objects.select_related("job", "device")
        .defer("job__targets", "job__description")
        .filter(device=device, job__tenant_id=device.tenant_id, job__job_id=job_id, released_at__isnull=False)
        .exclude(job__document_type=DESIRED_PATCH)
        .first()
    )
    if execution is None:
        raise NotFound(f"No execution of job {job_id!r} for this device", code="execution_not_found")
    return execution


def job_execution(job: Job, device_id: str) -> JobExecution:
    """One device's execution of a job (operators); NotFound when the job has none for it."""
    if not DEVICE_ID.matches(device_id):  # cannot exist; also keeps NUL bytes away from PostgreSQL
        raise NotFound(
            f"Job {job.job_id!r} has no execution for device {device_id[:200]!r}", code="execution_not_found"
        )
    execution = (
        JobExecution.objects.select_related("job", "device").filter(job=job, device__device_id=device_id).first()
    )
    if execution is None:
        raise NotFound(
            f"Job {job.job_id!r} has no execution for device {device_id[:200]!r}", code="execution_not_found"
        )
    return execution


def jobs_for_operator(user, *, tenant_id: str | None = None):
    qs = Job.objects.defer("targets")
    if user.is_superuser:
        return qs.filter(tenant_id=tenant_id) if tenant_id else qs
    tenant = operator_tenant(user)
    return qs.filter(tenant=tenant) if tenant else qs.none()


def job_for_operator(user, job_id: str, *, tenant_id: str | None = None) -> Job:
    _check_job_id(job_id)
    matches = list(jobs_for_operator(user, tenant_id=tenant_id).defer(None).filter(job_id=job_id)[:2])
    if not matches:
        raise NotFound(f"Job {job_id!r} not found", code="job_not_found")
    if len(matches) > 1:
        from iotcloud.errors import InvalidInput

        raise InvalidInput(f"Job id {job_id!r} exists in several tenants; add ?tenant=<tenant id>",
                           code="ambiguous_job")  # fmt: skip
    return matches[0]


def _summarize(counts: dict[str, int]) -> dict:
    total = sum(counts.values())
    done = sum(counts[s] for s in TERMINAL)
    return {"counts": counts, "total": total, "percent_done": round(100 * done / total, 1) if total else 100.0}


def _status_counts(job_pks: list[int]) -> dict[int, dict[str, int]]:
    counts = {pk: dict.fromkeys(ExecutionStatus.values, 0) for pk in job_pks}
    if job_pks:
        rows = JobExecution.objects.filter(job_id__in=job_pks).values_list("job_id", "status").annotate(n=Count("id"))
        for job_pk, status, n in rows.order_by():
            counts[job_pk][status] = n
    return counts


def job_progress(job: Job) -> dict:
    """Executions per status and the share that reached a terminal status; with a rollout, how many
    were released to their devices and how many still wait for it (QUEUED, not released)."""
    progress = _summarize(_status_counts([job.pk])[job.pk])
    if job.rollout:
        progress["released"] = job.released
        progress["unreleased"] = JobExecution.objects.filter(
            job_id=job.pk, released_at__isnull=True, status=ExecutionStatus.QUEUED
        ).count()
    return progress


def jobs_progress(job_pks) -> dict[int, dict]:
    """Progress of many jobs in ONE grouped query over job_executions (uses idx_job_exec_job_status).

    Lists and dashboards show a bar per job: a query per row would cost a
    round trip each. `remaining` is counted here, like the rest, so the
    numbers of one bar always add up.
    """
    progress = {}
    for pk, counts in _status_counts(list(dict.fromkeys(job_pks))).items():
        progress[pk] = _summarize(counts)
        progress[pk]["remaining"] = sum(n for status, n in counts.items() if status not in TERMINAL)
    return progress


def execution_counts() -> dict[str, int]:
    """Executions by status, every status present (0 when none)."""
    counts = dict.fromkeys(ExecutionStatus.values, 0)
    counts.update(JobExecution.objects.order_by().values_list("status").annotate(n=Count("id")))
    return counts


def jobs_in_progress(jobs, *, limit: int) -> list[dict]:
    """The newest IN_PROGRESS jobs of the queryset, each with its progress (two queries)."""
    rows = list(
        jobs.filter(status=JobStatus.IN_PROGRESS)
        .order_by("-created_at")
        .values("pk", "job_id", "tenant_id", "document_type", "created_at")[:limit]
    )
    progress = jobs_progress([row["pk"] for row in rows])
    return [{**row, "progress": progress[row["pk"]]} for row in rows]


FAILURE_STATUSES = (ExecutionStatus.FAILED, ExecutionStatus.REJECTED, ExecutionStatus.TIMED_OUT)


def rollout_series(job: Job, *, points: int = 60, now: datetime | None = None) -> dict:
    """A job's rollout over time, for its chart: at `points` moments from its creation to now (or its
    end), how many executions were released, had succeeded and had failed (FAILED, REJECTED or
    TIMED_OUT) by then; with the first abort criterion's threshold (a share of the released)."""
    end = job.completed_at or job.canceled_at or now or timezone.now()
    start = job.created_at
    span = max((end - start).total_seconds(), 1.0)
    moments = [start + (end - start) * (i / (points - 1)) for i in range(points)]
    # Counted in the database, one scan each (a job can hold 100,000 executions and three times as
    # many history rows: the chart refreshes live, it must not load them).
    released = _counts_by(JobExecution.objects.filter(job=job), "released_at", moments)
    history = ExecutionHistory.objects.filter(execution__job=job)
    succeeded = _counts_by(history.filter(status=ExecutionStatus.SUCCEEDED), "at", moments)
    failed = _counts_by(history.filter(status__in=FAILURE_STATUSES), "at", moments)

    criteria = (job.abort_config or {}).get("criteria") or []
    threshold = float(criteria[0]["threshold_percentage"]) if criteria else None
    return {
        "seconds": [round((m - start).total_seconds(), 1) for m in moments], "span": span,
        "released": released, "succeeded": succeeded, "failed": failed,
        "threshold_percentage": threshold, "threshold_type": criteria[0]["failure_type"] if criteria else None,
        "total": job.total,
    }  # fmt: skip


def _counts_by(queryset, field: str, moments: list[datetime]) -> list[int]:
    """How many rows of `queryset` had `field` at or before each moment (one aggregate query)."""
    counts = queryset.aggregate(
        **{f"m{i}": Count("pk", filter=Q(**{f"{field}__lte": m})) for i, m in enumerate(moments)}
    )
    return [counts[f"m{i}"] for i in range(len(moments))]
