"""Jobs (table `jobs`) and one execution per targeted device (table `job_executions`).

Writes go through jobs.services; the execution state machines live in
jobs.choices (DEVICE_TRANSITIONS, the seed's; AWS_DEVICE_TRANSITIONS, AWS IoT Jobs')
and are enforced there by compare-and-set.
"""

from django.db import models
from django.db.models import Q

from devices.models import Device, Tenant
from iotcloud.rules import DOCUMENT_TYPE, JOB_ID
from jobs.choices import ExecutionStatus, JobStatus


class Job(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="jobs")
    job_id = models.CharField(max_length=JOB_ID.max_length)
    document_type = models.CharField(max_length=DOCUMENT_TYPE.max_length)
    document_params = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.IN_PROGRESS)
    # As given by the operator: {"device_ids": [...], "tags": {...}}.
    targets = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    in_progress_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Executions not yet terminal; the job completes when it reaches 0 (exactly once, under the row lock).
    remaining = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=256, blank=True, default="")
    # Rollout (jobs.rollout): {} releases every execution at creation; else the bridge's scheduler
    # releases them at the configured pace. `released` counts released executions (the exponential
    # criterion's "notified", the abort criteria's denominator); the allowance is the scheduler's
    # token bucket, accrued up to rollout_ticked_at.
    rollout = models.JSONField(default=dict, blank=True)
    abort_config = models.JSONField(default=dict, blank=True)
    scheduling = models.JSONField(default=dict, blank=True)  # start/end time, maintenance windows (jobs.schedule)
    retry_config = models.JSONField(default=dict, blank=True)  # FAILED / TIMED_OUT retried (jobs.retry)
    template = models.CharField(max_length=80, blank=True, default="")  # "<name>@<version>" it was made from
    # A continuous job stays open: devices that come to match its tag selector get an execution,
    # queued ones of devices that stop matching end REMOVED (jobs.release reconciles every tick).
    continuous = models.BooleanField(default=False)
    released = models.PositiveIntegerField(default=0)
    rollout_allowance = models.FloatField(default=0.0)
    rollout_ticked_at = models.DateTimeField(null=True, blank=True)
    # A desired-state job being reverted (aborted, or canceled with revert): the scheduler puts its
    # devices back a batch per transaction until none is left; revert_summary counts what it did
    # and says for whom ({"reverted", "keys_kept", "untouched", "refused", "by", "channel"}).
    reverting = models.BooleanField(default=False)
    revert_summary = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "jobs"
        constraints = [models.UniqueConstraint(fields=["tenant", "job_id"], name="uniq_jobs_tenant_job")]
        indexes = [models.Index(fields=["tenant", "status", "created_at"], name="idx_jobs_tenant_status")]

    def __str__(self):
        return f"{self.tenant_id}/{self.job_id}"


class JobExecution(models.Model):
    # On PostgreSQL these three have no database constraint (jobs migration 0012): a foreign key checks
    # every inserted row with a trigger, the bulk of a fan-out's cost. Their integrity is kept by how
    # executions are written (jobs.services.NEW_EXECUTIONS) and by statement-level delete checks;
    # on_delete is Django's and works as ever. SQLite keeps the constraints (the test suite's net).
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    # No index of its own: the unique (job, device) index leads with job.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="executions", db_index=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="job_executions")
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.QUEUED)
    status_details = models.JSONField(default=dict, blank=True)
    # Advanced on every update: the device's optimistic lock.
    execution_number = models.PositiveIntegerField(default=1)
    # The attempt (AWS executionNumber): 1, +1 each time a retry queues it again (jobs.retry), with
    # the retries used per failure type.
    attempt = models.PositiveIntegerField(default=1)
    # A desired-state job's execution (jobs.desired): the desired version its patch made (it succeeds
    # when the device reports in step with it), and what it wrote over what (for a revert).
    target_version = models.PositiveIntegerField(null=True, blank=True)
    applied = models.JSONField(default=dict, blank=True)  # {"written": {key: value}, "previous": {key: value | None}}
    failed_retries = models.PositiveSmallIntegerField(default=0)
    timed_out_retries = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField()
    # Set whenever this execution changes its device's pending list (queued,
    # claimed, closed); the MQTT bridge republishes the device's jobs/notify
    # and clears it. Part of the same row write, so a fan-out costs no extra UPDATE.
    notify_pending = models.BooleanField(default=True)
    # Whether this execution is the one its device's retained notify-next last announced. As AWS,
    # notify-next is published only when the device's next execution changes; the bridge moves
    # this mark when it publishes one. Clearing a device's marks has its notify-next published again.
    notified_next = models.BooleanField(default=False)
    # When it was made visible to its device (pending lists, notify); None: its job's rollout has not
    # got to it yet (jobs.rollout). Devices never see an unreleased execution.
    released_at = models.DateTimeField(null=True, blank=True)
    # When a revert of its desired-state job put its device's previous values back (jobs.desired).
    reverted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_updated_at = models.DateTimeField()
    # The device's step timer (AWS stepTimeoutInMinutes): an IN_PROGRESS execution still
    # running at this time is TIMED_OUT by the sweeper. None: no step timer.
    step_timeout_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "job_executions"
        constraints = [models.UniqueConstraint(fields=["job", "device"], name="uniq_job_executions_job_device")]
        indexes = [
            # A device's pending list (released IN_PROGRESS and QUEUED executions), oldest first.
            models.Index(
                fields=["device", "queued_at"],
                name="idx_job_exec_pending_released",
                condition=Q(
                    status__in=[ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS], released_at__isnull=False
                ),
            ),
            # The rollout scheduler's work: a job's executions still to release, in id order.
            models.Index(fields=["job", "id"], name="idx_job_exec_unreleased", condition=Q(released_at__isnull=True)),
            # Per-status counts and filtered lists of one job.
            models.Index(fields=["job", "status"], name="idx_job_exec_job_status"),
            # The bridge's jobs-notify work queue, and what each device's notify-next last announced.
            models.Index(fields=["device"], name="idx_job_exec_notify", condition=Q(notify_pending=True)),
            models.Index(fields=["device"], name="idx_job_exec_notified_next", condition=Q(notified_next=True)),
            # The sweeper's in-progress scan.
            models.Index(
                fields=["started_at"], name="idx_job_exec_in_progress", condition=Q(status=ExecutionStatus.IN_PROGRESS)
            ),
            # The sweeper's step-timer scan.
            models.Index(
                fields=["step_timeout_at"],
                name="idx_job_exec_step_timeout",
                condition=Q(status=ExecutionStatus.IN_PROGRESS, step_timeout_at__isnull=False),
            ),
        ]

    def __str__(self):
        return f"{self.job_id}:{self.device_id}"


class ExecutionHistory(models.Model):
    """One change of an execution (its status, details or number): when, to what, by whom.

    Written by jobs.services with the change, in its transaction: the device's updates and
    start-next, and the platform's closes (timeouts, expiry, cancel, abort, end time, decommission).
    The creation itself is the execution's queued_at; its release, released_at."""

    execution = models.ForeignKey(JobExecution, on_delete=models.CASCADE, related_name="history")
    at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices)
    status_details = models.JSONField(default=dict, blank=True)
    execution_number = models.PositiveIntegerField()
    actor = models.CharField(max_length=160)  # "device", "platform", "operator:<username>"

    class Meta:
        db_table = "job_execution_history"
        indexes = [models.Index(fields=["execution", "at"], name="idx_job_exec_history")]

    def __str__(self):
        return f"{self.execution_id} {self.status} at {self.at:%Y-%m-%d %H:%M:%S}"


class JobTemplate(models.Model):
    """A named, versioned job document with defaults that jobs are created from (jobs.templates).

    A version never changes: saving a template again makes the next version. Beside a tenant's own
    templates every tenant has the built-ins (jobs.templates.BUILTINS), which are code, not rows."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="job_templates")
    name = models.CharField(max_length=JOB_ID.max_length)
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True, default="")
    document_type = models.CharField(max_length=DOCUMENT_TYPE.max_length)
    document_params = models.JSONField(default=dict, blank=True)  # defaults; a job's own params go over them
    required_params = models.JSONField(default=list, blank=True)  # keys a job must end up with
    # Defaults for the job's configuration (each one replaced as a whole by the job's own).
    rollout = models.JSONField(default=dict, blank=True)
    abort_config = models.JSONField(default=dict, blank=True)
    retry_config = models.JSONField(default=dict, blank=True)
    in_progress_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=160, blank=True, default="")

    class Meta:
        db_table = "job_templates"
        constraints = [models.UniqueConstraint(fields=["tenant", "name", "version"], name="uniq_job_templates_version")]

    def __str__(self):
        return f"{self.tenant_id}/{self.name}@{self.version}"
