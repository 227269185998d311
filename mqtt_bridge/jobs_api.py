"""The MQTT jobs API of both dialects: devices' jobs requests answered from the database, and the
retained jobs notifications.

Requests (topics.parse_request, service JOBS), on `tenant/{t}/device/{d}/jobs/...` (native) and
`$aws/things/{t}:{d}/jobs/...` (aws), answered on the request topic + /accepted or /rejected:
- `get` (AWS GetPendingJobExecutions) -> inProgressJobs, queuedJobs;
- `start-next` (StartNextPendingJobExecution) -> the IN_PROGRESS execution, else the oldest QUEUED
  one, started; no `execution` when nothing is pending;
- `{jobId}/get`, `$next/get` (DescribeJobExecution) -> execution (includeJobDocument, default true);
- `{jobId}/update` (UpdateJobExecution): status, statusDetails, expectedVersion, executionNumber,
  includeJobExecutionState, includeJobDocument, stepTimeoutInMinutes.
Both dialects take and give AWS IoT Jobs' payloads and follow AWS's execution rules
(jobs.choices.AWS_DEVICE_TRANSITIONS, through the one compare-and-set service); they differ in
topics and in rejections (requests.rejection: the native error body, or AWS's error codes with
executionState on InvalidStateTransition and VersionMismatch).

How iotcloud's executions map onto AWS's fields:
- versionNumber (and expectedVersion) is the execution's execution_number, which advances on every
  update (1 when queued);
- executionNumber is the attempt number of the job on the device: 1, then +1 each time the job's
  retry configuration queues it again (jobs.retry); a request naming another number than the
  current attempt names no execution (ResourceNotFound). (Not the row id: it would show every
  tenant how many executions the whole platform runs.)
- jobDocument is the job's document as the native API gives it: {"type": ..., "params": {...}};
- times are epoch seconds, as AWS's.

Notifications (retained, reconciled from the database by delivery.jobs_deliver_pending):
- `tenant/{t}/device/{d}/jobs/notify` (the seed's, always on): {"jobs": [pending summaries]};
- `.../jobs/notify-next` in the enabled dialects: {"execution": JobExecutionData, "timestamp"}, or
  just {"timestamp"} when nothing is pending; published, as AWS's, only when the next execution
  changes (JobExecution.notified_next remembers which one it announced);
- `$aws/things/{thing}/jobs/notify` (aws): {"jobs": {"IN_PROGRESS": [...], "QUEUED": [...]}, "timestamp"}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import DatabaseError, InterfaceError, transaction

from devices.models import Device
from iotcloud.errors import DomainError, InvalidInput, NotFound, TooManyRequests
from iotcloud.rules import fits_int32, is_integer
from jobs.choices import ExecutionStatus, TransitionRules
from jobs.models import Job, JobExecution
from jobs.selectors import device_execution, next_execution, pending_executions, pending_summary
from jobs.services import execution_start_next, execution_update
from mqtt_bridge import topics
from mqtt_bridge.requests import CLIENT_TOKEN, Reply, accepted, client_token, encode, now_seconds, parse_body
from mqtt_bridge.requests import rejection as rejection_reply

logger = logging.getLogger(__name__)

FIRST_ATTEMPT = 1  # AWS executionNumber: the attempt number (JobExecution.attempt)
MAX_GET_PENDING = 100  # GetPendingJobExecutions answers at most this many executions

# AWS IoT Jobs' error codes (ErrorResponse.code)
INVALID_JSON = "InvalidJson"
INVALID_REQUEST = "InvalidRequest"
INVALID_STATE_TRANSITION = "InvalidStateTransition"
RESOURCE_NOT_FOUND = "ResourceNotFound"
VERSION_MISMATCH = "VersionMismatch"
REQUEST_THROTTLED = "RequestThrottled"
INTERNAL_ERROR = "InternalError"

_STATE_TRANSITION_CODES = frozenset({"invalid_transition", "job_expired"})
_VERSION_CODES = frozenset({"stale_execution_number", "concurrent_update"})


class InternalError(DomainError):
    status = 500
    code = "internal_error"


# --- requests ---------------------------------------------------------------------------------------------


def handle_jobs_requests(items: Iterable[tuple[topics.Request, Device, bytes]]) -> list[Reply]:
    """Answer jobs requests of existing, active devices, one Reply (accepted or rejected) each, in order.

    Each request runs in a savepoint of its own (the caller's batch transaction around them), so a
    refusal rolls back that request only. Bad input of any kind is a rejection with a reason;
    only database errors (DatabaseError, InterfaceError) propagate (the caller retries the batch).
    """
    return [_answer(request, device, payload) for request, device, payload in items]


def _answer(request: topics.Request, device: Device, payload: bytes) -> Reply:
    token = None
    try:
        with transaction.atomic():
            body = parse_body(payload)
            token = client_token(body)
            document = _OPERATIONS[request.operation](request, device, body)
    except (DatabaseError, InterfaceError):  # the caller's: it retries the batch
        raise
    except DomainError as error:
        return _rejected(request, error, token)
    except Exception:  # a bug must not stop the batch: refuse this request, keep the bridge running
        logger.exception("jobs request failed topic=%r", request.topic)
        return _rejected(request, InternalError("Internal error while handling the request"), token)
    return accepted(request, document, token)


def _rejected(request: topics.Request, error: DomainError, token: str | None) -> Reply:
    logger.info("jobs request rejected topic=%r code=%s detail=%s", request.topic, error.code, error.message)
    extra = {}
    current = getattr(error, "execution", None)
    if current is not None:
        extra["executionState"] = execution_state(
            current["status"], current["status_details"], current["execution_number"]
        )
    code = aws_code(error)
    if code == VERSION_MISMATCH and request.dialect == topics.AWS:
        # Say it in the AWS request's own words (the native message names execution_number).
        error = type(error)(
            f"expectedVersion does not match the execution's current versionNumber "
            f"{current['execution_number']}", code=error.code, **error.extra,
        )  # fmt: skip
    return rejection_reply(request, error, token, aws_code=code, aws_extra=extra)


def aws_code(error: DomainError) -> str:
    """The AWS IoT Jobs error code of a refusal."""
    if error.code == "parse_error":
        return INVALID_JSON
    if isinstance(error, NotFound):
        return RESOURCE_NOT_FOUND
    if error.code in _STATE_TRANSITION_CODES:
        return INVALID_STATE_TRANSITION
    if error.code in _VERSION_CODES and getattr(error, "execution", None) is not None:
        return VERSION_MISMATCH
    if isinstance(error, TooManyRequests):
        return REQUEST_THROTTLED
    if isinstance(error, InternalError) or error.code == "concurrent_update":
        return INTERNAL_ERROR
    return INVALID_REQUEST  # wrong types, unknown fields, oversize, limits


# Request fields, besides clientToken. Unknown fields are refused (a misspelt expectedVersion
# must not quietly turn the version check off).
_FIELDS = {
    topics.GET_PENDING: frozenset(),
    topics.START_NEXT: frozenset({"statusDetails", "stepTimeoutInMinutes"}),
    topics.DESCRIBE: frozenset({"executionNumber", "includeJobDocument"}),
    topics.UPDATE: frozenset({
        "status", "statusDetails", "expectedVersion", "executionNumber", "includeJobExecutionState",
        "includeJobDocument", "stepTimeoutInMinutes",
    }),
}  # fmt: skip

_KINDS = {bool: "true or false", int: "an integer", dict: "a JSON object", str: "a string"}


def _check_fields(body: dict, operation: str) -> None:
    unknown = sorted(set(body) - _FIELDS[operation] - {CLIENT_TOKEN})
    if unknown:
        shown = ", ".join(repr(key[:64]) for key in unknown[:10])
        raise InvalidInput(f"Unknown field(s): {shown}", code="unknown_fields")


def _field(body: dict, key: str, kind: type):
    """An optional field: None when absent or null, else a value of `kind` (JSON types, strictly)."""
    value = body.get(key)
    if value is None:
        return None
    valid = is_integer(value) if kind is int else isinstance(value, kind)
    if not valid:
        raise InvalidInput(f"{key} must be {_KINDS[kind]}", code="invalid_field", field=key)
    return value


def _check_execution_number(body: dict, job_id: str, execution: JobExecution | None) -> None:
    """An executionNumber must name the execution's current attempt (the first, with nothing pending)."""
    number = _field(body, "executionNumber", int)
    if number is not None and number != (execution.attempt if execution is not None else FIRST_ATTEMPT):
        raise NotFound(f"No execution number {number} of job {job_id[:64]!r} for this device",
                       code="execution_not_found")  # fmt: skip


def _get_pending(request: topics.Request, device: Device, body: dict) -> dict:
    _check_fields(body, topics.GET_PENDING)
    executions = list(pending_executions(device.pk, limit=MAX_GET_PENDING))
    return {
        "inProgressJobs": [execution_summary(e) for e in executions if e.status == ExecutionStatus.IN_PROGRESS],
        "queuedJobs": [execution_summary(e) for e in executions if e.status == ExecutionStatus.QUEUED],
    }


def _start_next(request: topics.Request, device: Device, body: dict) -> dict:
    _check_fields(body, topics.START_NEXT)
    execution = execution_start_next(
        device=device,
        status_details=_field(body, "statusDetails", dict),
        step_timeout_minutes=_field(body, "stepTimeoutInMinutes", int),
        rules=TransitionRules.AWS,
    )
    return {} if execution is None else {"execution": execution_data(execution, _thing(device))}


def _describe(request: topics.Request, device: Device, body: dict) -> dict:
    _check_fields(body, topics.DESCRIBE)
    include_document = _field(body, "includeJobDocument", bool)
    if request.job_id == topics.NEXT_JOB:
        execution = next_execution(device)
        if execution is None:
            _check_execution_number(body, request.job_id, None)
            return {}  # nothing pending: no execution (as AWS)
    else:
        execution = device_execution(device, request.job_id)
    _check_execution_number(body, execution.job.job_id, execution)
    return {"execution": execution_data(execution, _thing(device), include_document=include_document is not False)}


def _update(request: topics.Request, device: Device, body: dict) -> dict:
    _check_fields(body, topics.UPDATE)
    status = body.get("status")
    if status is None:
        raise InvalidInput("status is required: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED", code="missing_status")
    if not isinstance(status, str):
        raise InvalidInput("status must be a string", code="invalid_field", field="status")
    expected = _field(body, "expectedVersion", int)
    if expected is not None and not fits_int32(expected):
        raise InvalidInput("expectedVersion must be a 32-bit integer", code="invalid_field", field="expectedVersion")
    details = _field(body, "statusDetails", dict)
    step = _field(body, "stepTimeoutInMinutes", int)
    include_state = _field(body, "includeJobExecutionState", bool)
    include_document = _field(body, "includeJobDocument", bool)
    if "executionNumber" in body:
        _check_execution_number(body, request.job_id, device_execution(device, request.job_id))
    execution = execution_update(
        device=device, job_id=request.job_id, status=status, status_details=details, execution_number=expected,
        rules=TransitionRules.AWS, step_timeout_minutes=step,
    )  # fmt: skip
    answer = {}
    if include_state:
        answer["executionState"] = execution_state(
            execution.status, execution.status_details, execution.execution_number
        )
    if include_document:
        kind, params = Job.objects.filter(pk=execution.job_id).values_list("document_type", "document_params").get()
        answer["jobDocument"] = job_document(kind, params)
    return answer


def _thing(device: Device) -> str:
    return topics.thing_name(device.tenant_id, device.device_id)


_OPERATIONS = {
    topics.GET_PENDING: _get_pending,
    topics.START_NEXT: _start_next,
    topics.DESCRIBE: _describe,
    topics.UPDATE: _update,
}


# --- AWS IoT Jobs' documents ----------------------------------------------------------------------------


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_document(document_type: str, document_params: dict) -> dict:
    return {"type": document_type, "params": document_params}


def execution_state(status: str, status_details: dict, version: int) -> dict:
    """AWS JobExecutionState."""
    state = {"status": status, "versionNumber": version}
    if status_details:
        state["statusDetails"] = status_details
    return state


def execution_summary(execution: JobExecution) -> dict:
    """AWS JobExecutionSummary (pending lists)."""
    summary = {"jobId": execution.job.job_id, "queuedAt": _epoch(execution.queued_at)}
    if execution.started_at is not None:
        summary["startedAt"] = _epoch(execution.started_at)
    summary.update(
        lastUpdatedAt=_epoch(execution.last_updated_at), versionNumber=execution.execution_number,
        executionNumber=execution.attempt,
    )  # fmt: skip
    return summary


def execution_data(execution: JobExecution, thing: str, *, include_document: bool = True) -> dict:
    """AWS JobExecutionData (start-next, describe, notify-next) of an execution of thing `thing`."""
    job = execution.job
    data = {"jobId": job.job_id, "thingName": thing}
    if include_document:
        data["jobDocument"] = job_document(job.document_type, job.document_params)
    data["status"] = execution.status
    if execution.status_details:
        data["statusDetails"] = execution.status_details
    data["queuedAt"] = _epoch(execution.queued_at)
    if execution.started_at is not None:
        data["startedAt"] = _epoch(execution.started_at)
    data.update(
        lastUpdatedAt=_epoch(execution.last_updated_at), versionNumber=execution.execution_number,
        executionNumber=execution.attempt,
    )  # fmt: skip
    return data


# --- notifications ----------------------------------------------------------------------------------------


def notify_replies(
    tenant_id: str, device_id: str, executions: Sequence[JobExecution], *, active: bool, dialects,
    next_changed: bool = True,
) -> list[Reply]:  # fmt: skip
    """The retained jobs notifications of one device, from its pending executions (pending order).

    The seed's `jobs/notify` always and the AWS `jobs/notify` in the aws dialect; `jobs/notify-next`
    in each enabled dialect when `next_changed` (as AWS: only when the next execution changed). A
    device that is not active gets them all cleared (empty retained payloads).
    """
    timestamp = now_seconds()
    by_status: dict[str, list[dict]] = {}
    for execution in executions:
        by_status.setdefault(execution.status, []).append(execution_summary(execution))
    next_document = {"timestamp": timestamp}
    if executions:
        thing = topics.thing_name(tenant_id, device_id)
        next_document = {"execution": execution_data(executions[0], thing), "timestamp": timestamp}
    seed = {"jobs": [pending_summary(e) for e in executions]}
    messages = [(topics.jobs_notify(tenant_id, device_id), json.dumps(seed, separators=(",", ":")).encode())]
    for dialect in topics.DIALECTS:
        if dialect not in dialects:
            continue
        if dialect == topics.AWS:
            notify = encode({"jobs": by_status, "timestamp": timestamp})
            messages.append((topics.jobs_topic(dialect, tenant_id, device_id, "notify"), notify))
        if next_changed or not active:
            messages.append((topics.jobs_topic(dialect, tenant_id, device_id, "notify-next"), encode(next_document)))
    return [Reply(topic, payload if active else b"", retain=True) for topic, payload in messages]
