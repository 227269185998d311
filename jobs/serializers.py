from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from iotcloud.api.fields import JSONObjectField, StrictCharField, StrictIntegerField, StrictSerializer, json_kind
from iotcloud.rules import JOB_ID
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution
from jobs.selectors import job_progress
from jobs.services import MAX_STEP_TIMEOUT_MINUTES, MAX_TARGET_IDS


class TargetsSerializer(StrictSerializer):
    device_ids = serializers.ListField(child=StrictCharField(), required=False, max_length=MAX_TARGET_IDS)
    tags = JSONObjectField(required=False, help_text='Devices whose tags include all of these, e.g. {"site": "paris"}.')


class JobCreateSerializer(StrictSerializer):
    job_id = StrictCharField(required=False, help_text=f"{JOB_ID.text}; generated when absent.")
    document_type = StrictCharField(
        required=False,
        help_text='What to do, e.g. "reboot" or "firmware_update" (from the template when one is named).',
    )
    document_params = JSONObjectField(required=False, help_text="With a template: over its default params.")
    template = StrictCharField(
        required=False,
        help_text='"<name>" (its latest version) or "<name>@<version>": the tenant\'s own templates, then the '
        "built-ins (reboot, download-file, apply-desired-patch). The job takes its document and defaults.",
    )
    description = StrictCharField(required=False, allow_blank=True, max_length=2000)
    targets = TargetsSerializer()
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    in_progress_timeout_seconds = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=604800)
    rollout = JSONObjectField(
        required=False,
        help_text='How fast executions are released to devices (as AWS IoT Jobs): {"maximum_per_minute": n}, or '
        '{"exponential": {"base_rate_per_minute": n, "increment_factor": 1.1-5, "rate_increase_criteria": '
        '{"number_of_notified_things" | "number_of_succeeded_things": k}}} (with an optional "maximum_per_minute" '
        "cap). Absent: every execution at once.",
    )
    abort_config = JSONObjectField(
        required=False,
        help_text='{"criteria": [{"failure_type": "FAILED" | "REJECTED" | "TIMED_OUT" | "ALL", '
        '"threshold_percentage": 0-100, "min_executed": n}], "force": false}: the job is canceled once at least '
        "n executions were released and that share of them failed that way (force: in-progress ones too).",
    )
    scheduling = JSONObjectField(
        required=False,
        help_text='When executions may be released: {"start_time": ISO 8601 (the job waits as SCHEDULED), '
        '"end_time": ISO 8601, "end_behavior": "STOP_ROLLOUT" | "CANCEL" | "FORCE_CANCEL", "maintenance_windows": '
        '[{"cron": "0 2 * * *", "duration_minutes": 120}], "timezone": "Europe/Paris"}, every field optional.',
    )
    retry_config = JSONObjectField(
        required=False,
        help_text='{"criteria": [{"failure_type": "FAILED" | "TIMED_OUT" | "ALL", "number_of_retries": 0-10}]}: an '
        "execution that ends so is queued again as its next attempt while retries are left (at most 10 in all).",
    )
    continuous = serializers.BooleanField(
        required=False, default=False,
        help_text="Stay open: devices that come to match targets.tags (tagged or provisioned later) get an "
        "execution; a device that stops matching before it started has its execution REMOVED.",
    )  # fmt: skip
    tenant = StrictCharField(required=False, help_text="Superusers only: the tenant to create the job in.")

    def to_internal_value(self, data):
        if isinstance(data, dict) and "continuous" in data and not isinstance(data["continuous"], bool):
            raise serializers.ValidationError(
                {"continuous": [f"Must be true or false, got {json_kind(data['continuous'])}."]}
            )
        return super().to_internal_value(data)


class ExecutionCancelSerializer(StrictSerializer):
    BOOLEANS = ("force",)

    force = serializers.BooleanField(required=False, default=False, help_text="Also cancel IN_PROGRESS executions.")
    reason = StrictCharField(required=False, allow_blank=True, max_length=256)

    def to_internal_value(self, data):
        for name in self.BOOLEANS:
            if isinstance(data, dict) and name in data and not isinstance(data[name], bool):
                raise serializers.ValidationError({name: [f"Must be true or false, got {json_kind(data[name])}."]})
        return super().to_internal_value(data)


class JobCancelSerializer(ExecutionCancelSerializer):
    BOOLEANS = ("force", "revert")

    revert = serializers.BooleanField(
        required=False, default=False, help_text="A desired-state job: put back every device's previous values first "
        "(as an abort does; keys changed since the job wrote them are kept); implies force.",
    )  # fmt: skip


class JobSerializer(serializers.ModelSerializer):
    tenant = serializers.CharField(source="tenant_id")
    document = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "job_id", "tenant", "status", "document", "description", "targets", "expires_at",
            "in_progress_timeout_seconds", "rollout", "abort_config", "scheduling", "retry_config", "template",
            "continuous",
            "created_at", "updated_at",
            "completed_at", "canceled_at", "cancel_reason", "reverting", "revert_summary", "progress",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field({"type": "object", "properties": {"type": {"type": "string"}, "params": {"type": "object"}}})
    def get_document(self, job):
        return {"type": job.document_type, "params": job.document_params}

    @extend_schema_field(
        {"type": "object", "properties": {"counts": {"type": "object"}, "total": {"type": "integer"},
                                          "percent_done": {"type": "number"}}}
    )  # fmt: skip
    def get_progress(self, job):
        return job_progress(job)


class JobListSerializer(JobSerializer):
    class Meta(JobSerializer.Meta):
        # No targets in lists: a job's targets may name 100,000 devices.
        fields = [f for f in JobSerializer.Meta.fields if f not in ("progress", "targets")] + [
            "total", "remaining", "released",
        ]  # fmt: skip
        read_only_fields = fields


class ExecutionSerializer(serializers.ModelSerializer):
    job_id = serializers.CharField(source="job.job_id")
    device_id = serializers.CharField(source="device.device_id")

    class Meta:
        model = JobExecution
        fields = ["job_id", "device_id", "status", "status_details", "execution_number", "attempt", "queued_at",
                  "released_at", "started_at", "last_updated_at"]  # fmt: skip
        read_only_fields = fields


class ExecutionHistorySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    status_details = serializers.JSONField()
    execution_number = serializers.IntegerField()
    actor = serializers.CharField(help_text='"device", "platform" or "operator:<username>".')


class ExecutionDetailSerializer(ExecutionSerializer):
    history = serializers.SerializerMethodField()

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "history"]
        read_only_fields = fields

    @extend_schema_field(ExecutionHistorySerializer(many=True))
    def get_history(self, execution):
        rows = execution.history.order_by("at", "id")
        return ExecutionHistorySerializer(rows, many=True).data


class ExecutionUpdateSerializer(StrictSerializer):
    status = StrictCharField(help_text="IN_PROGRESS (claim), then SUCCEEDED, FAILED or REJECTED.")
    status_details = JSONObjectField(required=False, allow_null=True)
    execution_number = StrictIntegerField(
        required=False, allow_null=True, help_text="Optimistic lock: 409 unless it is the current number."
    )


class DeviceExecutionSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    device_id = serializers.CharField()
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    status_details = serializers.JSONField()
    execution_number = serializers.IntegerField()
    document = serializers.JSONField()
    queued_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    last_updated_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class PendingJobsSerializer(serializers.Serializer):
    jobs = serializers.ListField(
        child=serializers.JSONField(),
        help_text="IN_PROGRESS executions first, then QUEUED ones of unexpired jobs, each oldest first; each "
        "entry has job_id, execution_number, document{type, params}, queued_at, expires_at and status.",
    )


class StartNextSerializer(StrictSerializer):
    status_details = JSONObjectField(
        required=False, allow_null=True, help_text="Set on the execution when a QUEUED one is started."
    )
    step_timeout_in_minutes = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_STEP_TIMEOUT_MINUTES,
        help_text="A step timer: the execution is TIMED_OUT unless it is terminal within this many minutes "
        "(set when a QUEUED one is started).",
    )  # fmt: skip


class StartNextResponseSerializer(serializers.Serializer):
    execution = DeviceExecutionSerializer(
        allow_null=True, help_text="The started (or already IN_PROGRESS) execution; null when nothing is pending."
    )


JOB_STATUS_CHOICES = JobStatus.choices


class JobTemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    builtin = serializers.BooleanField()
    description = serializers.CharField()
    document_type = serializers.CharField()
    document_params = serializers.JSONField()
    required_params = serializers.ListField(child=serializers.CharField())
    rollout = serializers.JSONField()
    abort_config = serializers.JSONField()
    retry_config = serializers.JSONField()
    in_progress_timeout_seconds = serializers.IntegerField(allow_null=True)


class JobTemplateSaveSerializer(StrictSerializer):
    name = StrictCharField(help_text=f"{JOB_ID.text}. Saving an existing name makes its next version.")
    description = StrictCharField(required=False, allow_blank=True, max_length=2000)
    document_type = StrictCharField()
    document_params = JSONObjectField(required=False, help_text="Defaults; a job's own params go over them.")
    required_params = serializers.ListField(child=StrictCharField(), required=False, max_length=50)
    rollout = JSONObjectField(required=False)
    abort_config = JSONObjectField(required=False)
    retry_config = JSONObjectField(required=False)
    in_progress_timeout_seconds = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=604800)
    tenant = StrictCharField(required=False, help_text="Superusers only: the tenant to save it in.")
