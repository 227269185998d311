"""The admin's "Add job" form: operator input in, jobs.services.job_create does the rest.

The form only parses (JSON params, the tag selector text, the device picks)
and scopes choices to the operator's tenant; every rule about jobs stays in
the service (document_params are checked by its check_document_params as
soon as they parse), whose DomainError is shown inline on the field it is about.
"""

from __future__ import annotations

from django import forms
from django.contrib.admin.widgets import AdminSplitDateTime, AutocompleteSelectMultiple

from devices.choices import DeviceStatus
from devices.models import Device, Tenant
from iotcloud.errors import DomainError
from iotcloud.form_fields import parse_json_text
from iotcloud.rules import JOB_ID
from jobs import services
from jobs.models import Job, JobExecution, JobTemplate
from jobs.retry import parse_retry
from jobs.rollout import parse_abort, parse_rollout
from jobs.schedule import parse_schedule
from jobs.templates import template_check

# Service error code -> the form field it is about (anything else is a non-field error).
ERROR_FIELDS = {
    "invalid_job_id": "job_id",
    "job_exists": "job_id",
    "invalid_document_type": "document_type",
    "invalid_expiry": "expires_at",
    "invalid_timeout": "in_progress_timeout_seconds",
    "unknown_targets": "devices",
    "invalid_targets": "tags",
    "invalid_rollout": "rollout",
    "invalid_abort": "abort_config",
    "invalid_scheduling": "scheduling",
    "invalid_retry": "retry_config",
    "no_targets": "tags",
}


class DeviceAutocomplete(AutocompleteSelectMultiple):
    """Django admin's select2 widget, fed by JobAdmin's scoped endpoint (active devices of the tenant only)."""

    def __init__(self, url: str, admin_site, attrs=None):
        super().__init__(JobExecution._meta.get_field("device"), admin_site, attrs=attrs)
        self.url = url

    def get_url(self):
        return self.url


class DeviceChoiceField(forms.ModelMultipleChoiceField):
    def __init__(self, *args, with_tenant: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.with_tenant = with_tenant

    def label_from_instance(self, obj):
        return str(obj) if self.with_tenant else obj.device_id


def parse_tags(text: str) -> dict:
    """`site=berlin, fw=1.2` or a JSON object; values are matched exactly."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        tags = parse_json_text(text, what="the tag selector")
        if not isinstance(tags, dict):
            raise forms.ValidationError("Tag selector must be a JSON object")
        return tags
    tags = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise forms.ValidationError(f"Tag selector: {part!r} is not key=value (e.g. site=berlin, fw=1.2)")
        tags[key.strip()] = value.strip()
    return tags


def config_field(label: str | None, *, rows: int, help_text: str) -> forms.CharField:
    """A JSON configuration of a job (rollout, schedule, abort, retries), checked by its jobs rule."""
    widget = forms.Textarea(attrs={"rows": rows, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"})
    return forms.CharField(required=False, label=label, widget=widget, help_text=help_text)


class JobCreateForm(forms.ModelForm):
    """Not saved as a ModelForm: save() calls the service (targets, executions, events)."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all(), help_text="The tenant the job runs in.")
    job_id = forms.CharField(required=False, help_text=f"{JOB_ID.text}; generated when left blank.")
    document_type = forms.CharField(help_text="What the device should do, e.g. reboot, fw_update.")
    document_params = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text='A JSON object given to the device, e.g. {"url": "https://…/fw-1.3.bin"}.',
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))
    devices = forms.Field(required=False)  # replaced in __init__ (needs the tenant and the URL)
    tags = forms.CharField(
        required=False,
        label="Tag selector",
        widget=forms.TextInput(attrs={"class": "vTextField", "placeholder": "site=berlin, fw=1.2"}),
        help_text='Active devices having all these tags: key=value pairs or a JSON object {"site": "berlin"}.',
    )
    expires_at = forms.SplitDateTimeField(
        required=False,
        widget=AdminSplitDateTime,
        help_text="Optional (UTC). Executions not started by then end TIMED_OUT.",
    )
    in_progress_timeout_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=services.MAX_TIMEOUT_SECONDS,
        label="In-progress timeout (seconds)",
        help_text="Optional. An execution in progress for longer ends TIMED_OUT.",
    )

    rollout = config_field(
        None,
        rows=3,
        help_text='Optional: release executions at a pace. {"maximum_per_minute": 100}, or {"exponential": '
        '{"base_rate_per_minute": 50, "increment_factor": 2, "rate_increase_criteria": '
        '{"number_of_notified_things": 1000}}}. Blank: every device at once.',
    )
    abort_config = config_field(
        "Abort criteria",
        rows=3,
        help_text='Optional: {"criteria": [{"failure_type": "FAILED", "threshold_percentage": 10, '
        '"min_executed": 50}], "force": false}. failure_type: FAILED, REJECTED, TIMED_OUT or ALL; the job is '
        "canceled once that share of its released executions failed so (force: running ones too).",
    )

    scheduling = config_field(
        "Schedule",
        rows=3,
        help_text='Optional: {"start_time": "2030-01-01T02:00:00Z", "end_time": "2030-01-08T02:00:00Z", '
        '"end_behavior": "STOP_ROLLOUT", "maintenance_windows": [{"cron": "0 2 * * *", "duration_minutes": 120}], '
        '"timezone": "Europe/Paris"}. Executions are released only after the start, before the end and inside a '
        "window.",
    )

    continuous = forms.BooleanField(
        required=False,
        help_text="Stay open: devices that come to match the tag selector later get the job; a device that "
        "stops matching before it started has its execution REMOVED. Tag selector only.",
    )
    retry_config = config_field(
        "Retries",
        rows=2,
        help_text='Optional: {"criteria": [{"failure_type": "FAILED", "number_of_retries": 2}, {"failure_type": '
        '"TIMED_OUT", "number_of_retries": 1}]} (or "ALL"; at most 10 in all). A failed or timed-out execution is '
        "queued again as its next attempt.",
    )

    class Meta:
        model = Job
        fields = []

    def __init__(self, *args, tenant: Tenant | None, autocomplete_url: str, admin_site, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_tenant = tenant
        devices = Device.objects.filter(status=DeviceStatus.ACTIVE).select_related("tenant").order_by("device_id")
        if tenant is not None:  # an operator: their tenant only, for choices and for what a POST may name
            devices = devices.filter(tenant=tenant)
            del self.fields["tenant"]
        self.fields["devices"] = DeviceChoiceField(
            queryset=devices,
            required=False,
            with_tenant=tenant is None,
            label="Target devices",
            widget=DeviceAutocomplete(autocomplete_url, admin_site),
            help_text="Type to search active devices.",
        )
        self.job: Job | None = None

    def _post_clean(self):
        pass  # no model instance is built or validated here: the service validates and writes

    def clean_document_params(self):
        text = self.cleaned_data["document_params"].strip() or "{}"
        params = parse_json_text(text, what="the document params")
        if not isinstance(params, dict):
            raise forms.ValidationError(f"Document params must be a JSON object, not {type(params).__name__}")
        try:
            return services.check_document_params(params)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_tags(self):
        return parse_tags(self.cleaned_data["tags"])

    def clean_rollout(self):
        return self._config("rollout", parse_rollout, "the rollout")

    def clean_abort_config(self):
        return self._config("abort_config", parse_abort, "the abort criteria")

    def clean_scheduling(self):
        return self._config("scheduling", parse_schedule, "the schedule")

    def clean_retry_config(self):
        return self._config("retry_config", parse_retry, "the retries")

    def _config(self, name: str, rule, what: str) -> dict:
        """A JSON object checked by its jobs.rollout rule, the service's own (shown on the field)."""
        text = self.cleaned_data[name].strip()
        if not text:
            return {}
        config = parse_json_text(text, what=what)
        try:
            rule(config)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None
        return config

    def clean(self):
        data = super().clean()
        if "devices" in data and "tags" in data and not data["devices"] and not data["tags"]:
            raise forms.ValidationError("Pick target devices, give a tag selector, or both")
        tenant = self.target_tenant()
        foreign = [d for d in data.get("devices") or [] if tenant is not None and d.tenant_id != tenant.pk]
        if foreign:
            names = ", ".join(str(d) for d in foreign[:10])
            self.add_error("devices", f"These devices are not in tenant {tenant.pk!r}: {names}")
        return data

    def target_tenant(self) -> Tenant | None:
        return self.own_tenant or self.cleaned_data.get("tenant")

    def save(self, commit=True):
        """Create the job through the service; on a DomainError, add it to the form and return None."""
        data = self.cleaned_data
        try:
            self.job = services.job_create(
                tenant=self.target_tenant(),
                job_id=data["job_id"] or None,
                document_type=data["document_type"],
                document_params=data["document_params"],
                description=data["description"],
                device_ids=[d.device_id for d in data["devices"]],
                tags=data["tags"],
                expires_at=data["expires_at"],
                in_progress_timeout_seconds=data["in_progress_timeout_seconds"],
                rollout=data["rollout"],
                abort_config=data["abort_config"],
                scheduling=data["scheduling"],
                retry_config=data["retry_config"],
                continuous=data["continuous"],
            )
        except DomainError as exc:
            field = ERROR_FIELDS.get(exc.code)
            self.add_error(field if field in self.fields else None, exc.message)
            return None
        return self.job


class JobTemplateForm(forms.ModelForm):
    """Adding a template saves its next version through jobs.templates (a version never changes)."""

    class Meta:
        model = JobTemplate
        fields = ["tenant", "name", "description", "document_type", "document_params", "required_params",
                  "rollout", "abort_config", "retry_config", "in_progress_timeout_seconds"]  # fmt: skip
        help_texts = {
            "name": "Saving an existing name makes its next version; jobs name it as <name> or <name>@<version>.",
            "document_params": "Defaults (a JSON object); a job's own params go over them.",
            "required_params": 'Keys a job must end up with, e.g. ["url", "sha256"].',
            "rollout": 'Default rollout, e.g. {"maximum_per_minute": 100}.',
            "abort_config": "Default abort criteria.",
            "retry_config": "Default retries.",
        }

    def clean(self):
        data = super().clean()
        fields = {k: data.get(k) for k in self.Meta.fields if k not in ("tenant", "description")}
        try:
            template_check(**fields)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None
        return data
