from django.db import models


class JobStatus(models.TextChoices):
    SCHEDULED = "SCHEDULED"  # waiting for its scheduling.start_time (jobs.schedule)
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"  # every execution reached a terminal status
    CANCELED = "CANCELED"


class ExecutionStatus(models.TextChoices):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    REMOVED = "REMOVED"  # its device left a continuous job's selector before starting it (as AWS)


# The document type of a desired-state job (jobs.desired): the platform runs its executions, by
# patching the devices' twins; devices never see them in their job lists.
DESIRED_PATCH = "desired_state_patch"

# Final: no transition leaves these.
TERMINAL = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.REJECTED,
        ExecutionStatus.CANCELED,
        ExecutionStatus.REMOVED,
    }
)
ACTIVE = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS})

# What a device may do, as tables: from-status -> the statuses a device may move it to.
# (Timeouts, expiry and cancellation are the platform's, not the device's.) One
# compare-and-set service (jobs.services.execution_update) applies either table.

# The seed's table: the native HTTP API (PUT /device/v1/jobs/{job_id}/execution), a contract.
DEVICE_TRANSITIONS = {
    ExecutionStatus.QUEUED: frozenset({ExecutionStatus.IN_PROGRESS}),
    ExecutionStatus.IN_PROGRESS: frozenset(
        {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.REJECTED}
    ),
}

# AWS IoT Jobs' table (the MQTT jobs API, both dialects): a device sets IN_PROGRESS, SUCCEEDED,
# FAILED or REJECTED on an execution that is not terminal. IN_PROGRESS -> IN_PROGRESS is a progress
# update (new statusDetails, a new step timer); a QUEUED execution may be refused (REJECTED) or
# reported done (SUCCEEDED, FAILED) without being started. Terminal statuses are final.
_DEVICE_SETS = frozenset(
    {ExecutionStatus.IN_PROGRESS, ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.REJECTED}
)
AWS_DEVICE_TRANSITIONS = {ExecutionStatus.QUEUED: _DEVICE_SETS, ExecutionStatus.IN_PROGRESS: _DEVICE_SETS}


class TransitionRules(models.TextChoices):
    """Which table a device's update follows."""

    SEED = "seed"  # the native HTTP API
    AWS = "aws"  # the MQTT jobs API (native topics and the AWS IoT dialect)


TRANSITIONS = {TransitionRules.SEED: DEVICE_TRANSITIONS, TransitionRules.AWS: AWS_DEVICE_TRANSITIONS}


def sources(rules: str, status: str) -> frozenset[str]:
    """The statuses from which a device may move an execution to `status` under `rules`."""
    return frozenset(source for source, targets in TRANSITIONS[rules].items() if status in targets)
