from django.db import models


class JobStatus(models.TextChoices):
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


# Final: no transition leaves these.
TERMINAL = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.REJECTED,
        ExecutionStatus.CANCELED,
    }
)
ACTIVE = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS})

# What a device may do: to-status -> the one status it may come from.
# (Timeouts, expiry and cancellation are the platform's, not the device's.)
DEVICE_TRANSITIONS = {
    ExecutionStatus.IN_PROGRESS: ExecutionStatus.QUEUED,
    ExecutionStatus.SUCCEEDED: ExecutionStatus.IN_PROGRESS,
    ExecutionStatus.FAILED: ExecutionStatus.IN_PROGRESS,
    ExecutionStatus.REJECTED: ExecutionStatus.IN_PROGRESS,
}
