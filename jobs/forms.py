"""The admin's "Add job" form: operator input in, jobs.services.job_create does the rest.

The form only parses (JSON params, the tag selector text, the device picks, one field per
setting of the rollout, abort criteria, schedule and retries) and scopes choices to the
operator's tenant. From those fields it composes the very dicts the API takes, and checks each
with its own jobs rule (parse_rollout, parse_abort, parse_schedule, parse_retry); every other
rule stays in the service. A rule's error names its path (`rollout.maximum_per_minute must
be ...`, `abort_config.criteria[0].threshold_percentage ...`): the form shows it on the input that
path came from, and a service error on the field its code is about (ERROR_FIELDS).
"""

from __future__ import annotations

from datetime import UTC

from django import forms
from django.contrib.admin.widgets import AdminSplitDateTime, AutocompleteSelectMultiple
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import Device, Tenant
from iotcloud.errors import DomainError
from iotcloud.form_fields import parse_json_text
from iotcloud.rules import JOB_ID
from jobs import services
from jobs.models import Job, JobExecution, JobTemplate
from jobs.retry import parse_retry
from jobs.rollout import CRITERIA, parse_abort, parse_rollout
from jobs.rollout import FAILURE_TYPES as ABORT_TYPES
from jobs.schedule import END_BEHAVIORS, parse_schedule
from jobs.templates import BUILTINS, template_check, templates_of

ABORT_ROWS = 3  # of the 4 criteria a job may have (one per failure type); enough for a form
WINDOW_ROWS = 3

# Service error code -> the form field it is about, when the message names no configuration path
# (anything else is a non-field error).
ERROR_FIELDS = {
    "invalid_job_id": "job_id",
    "job_exists": "job_id",
    "invalid_document_type": "document_type",
    "invalid_document_params": "document_params",
    "missing_template_params": "document_params",
    "invalid_template": "template",
    "template_not_found": "template",
    "invalid_expiry": "expires_at",
    "invalid_timeout": "in_progress_timeout_seconds",
    "unknown_targets": "devices",
    "invalid_targets": "tags",
    "no_targets": "tags",
    "invalid_rollout": "rollout_type",
    "invalid_abort": "abort_1_failure_type",
    "invalid_scheduling": "schedule_start_time",
    "invalid_retry": "retry_failed",
}
ROLLOUT_TYPES = [("", "none: every device at once"), ("constant", "constant rate"),
                 ("exponential", "exponential: a rate that grows")]  # fmt: skip
ROLLOUT_NUMBERS = ("rollout_maximum_per_minute", "rollout_base_rate_per_minute", "rollout_increment_factor",
                   "rollout_criterion_count")  # fmt: skip
EXPONENTIAL_ONLY = ROLLOUT_NUMBERS[1:]
RETRY_FIELDS = {"FAILED": "retry_failed", "TIMED_OUT": "retry_timed_out", "ALL": "retry_all"}


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


def field_of(message: str, where: dict[str, str]) -> str | None:
    """The form field a rule's error is about: its message starts with a path (`a.b[0].c must ...`),
    matched to the longest path of `where` it is under."""
    path = message.split(" ", 1)[0].rstrip(":")
    under = [p for p in where if path == p or path.startswith((f"{p}.", f"{p}["))]
    return where[max(under, key=len)] if under else None


def _iso(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _choices(values, blank: str) -> list[tuple[str, str]]:
    return [("", blank), *((v, v) for v in values)]


def _integer(label: str, **kwargs) -> forms.IntegerField:
    """A number checked by the jobs rule, not here (so its message is the API's, on this field)."""
    return forms.IntegerField(required=False, label=label, widget=forms.NumberInput(attrs={"class": "vIntegerField"}),
                              **kwargs)  # fmt: skip


class NumberField(forms.FloatField):
    """A number as the API takes it: a whole one stays an integer (10, not 10.0, in the stored config)."""

    def to_python(self, value):
        number = super().to_python(value)
        return int(number) if number is not None and number.is_integer() else number


def _number(label: str, **kwargs) -> NumberField:
    return NumberField(required=False, label=label, widget=forms.NumberInput(attrs={"class": "vIntegerField",
                       "step": "any"}), **kwargs)  # fmt: skip


class JobCreateForm(forms.ModelForm):
    """Not saved as a ModelForm: save() calls the service (targets, executions, events)."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all(), help_text="The tenant the job runs in.")
    job_id = forms.CharField(required=False, help_text=f"{JOB_ID.text}; generated when left blank.")
    template = forms.CharField(required=False)  # a select or a text input, set in __init__
    document_type = forms.CharField(
        required=False, help_text="What the device should do, e.g. reboot, fw_update. With a template: its own."
    )
    document_params = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text='A JSON object given to the device, e.g. {"url": "https://…/fw-1.3.bin"}; with a template, '
        "over its defaults.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))
    devices = forms.Field(required=False)  # replaced in __init__ (needs the tenant and the URL)
    tags = forms.CharField(
        required=False,
        label="Tag selector",
        widget=forms.TextInput(attrs={"class": "vTextField", "placeholder": "site=berlin, fw=1.2"}),
        help_text='Active devices having all these tags: key=value pairs or a JSON object {"site": "berlin"}.',
    )
    continuous = forms.BooleanField(
        required=False,
        help_text="Stay open: devices that come to match the tag selector later get the job; a device that "
        "stops matching before it started has its execution REMOVED. Tag selector only.",
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

    rollout_type = forms.ChoiceField(
        required=False,
        label="Rollout",
        choices=ROLLOUT_TYPES,
    )
    rollout_maximum_per_minute = _integer(
        "Maximum per minute",
        help_text="Constant: the rate. Exponential: optional, a cap on the growing rate.",
    )
    rollout_base_rate_per_minute = _integer("Base rate per minute", help_text="Exponential: the starting rate.")
    rollout_increment_factor = _number("Increment factor", help_text="Exponential: 1.1 to 5, the rate's multiplier.")
    rollout_criterion = forms.ChoiceField(
        required=False,
        label="Increase the rate every",
        choices=[(CRITERIA[0], "notified devices"), (CRITERIA[1], "succeeded devices")],
    )
    rollout_criterion_count = _integer("Number of devices", help_text="Exponential: the rate is multiplied each "
                                       "time this many more devices were notified / succeeded.")  # fmt: skip

    abort_force = forms.BooleanField(
        required=False,
        label="Force",
        help_text="On abort, cancel the executions in progress too (otherwise they are left to finish).",
    )

    schedule_start_time = forms.SplitDateTimeField(
        required=False, widget=AdminSplitDateTime, label="Start", help_text="Optional (UTC). Nothing is released "
        "before; the job is SCHEDULED until then.",
    )  # fmt: skip
    schedule_end_time = forms.SplitDateTimeField(
        required=False, widget=AdminSplitDateTime, label="End", help_text="Optional (UTC).",
    )  # fmt: skip
    schedule_end_behavior = forms.ChoiceField(
        required=False,
        label="At the end",
        choices=[("", "(default) STOP_ROLLOUT"), *((b, b) for b in END_BEHAVIORS)],
        help_text="STOP_ROLLOUT: cancel what is not released yet (released executions run on); CANCEL: cancel the "
        "job; FORCE_CANCEL: with its executions in progress.",
    )
    schedule_timezone = forms.CharField(
        required=False,
        label="Time zone",
        widget=forms.TextInput(attrs={"placeholder": "UTC"}),
        help_text='Of the maintenance windows\' cron expressions: an IANA name, e.g. "Europe/Paris". Blank: UTC.',
    )

    retry_failed = _integer("Retries after FAILED", help_text="An execution the device failed is queued again.")
    retry_timed_out = _integer("Retries after TIMED_OUT", help_text="An execution that timed out is queued again.")
    retry_all = _integer("Retries after either", help_text="Instead of the two above: FAILED and TIMED_OUT together.")

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
        self.fields["template"] = self._template_field(tenant)
        for i in range(1, ABORT_ROWS + 1):
            self.fields[f"abort_{i}_failure_type"] = forms.ChoiceField(
                required=False, label=f"Criterion {i}: failure type", choices=_choices(ABORT_TYPES, "—")
            )
            self.fields[f"abort_{i}_threshold_percentage"] = _number("threshold %")
            self.fields[f"abort_{i}_min_executed"] = _integer("minimum executed")
        for i in range(1, WINDOW_ROWS + 1):
            self.fields[f"window_{i}_cron"] = forms.CharField(
                required=False,
                label=f"Window {i}: cron",
                widget=forms.TextInput(attrs={"placeholder": "0 2 * * *", "spellcheck": "false"}),
            )
            self.fields[f"window_{i}_duration_minutes"] = _integer("duration (minutes)")
        self.job: Job | None = None
        # A path that errors name -> the field it came from (clean() adds the configurations').
        self.where: dict[str, str] = {"document_params": "document_params"}

    @staticmethod
    def _template_field(tenant: Tenant | None) -> forms.CharField:
        """The tenant's templates and the built-ins to pick from; a superuser, whose tenant is picked on
        this same form, types one. Either way the service resolves it (an unknown one: its error)."""
        help_text = ("Optional. The job takes the template's document type and default params, and its rollout, "
                     "abort criteria, retries and timeout where this form leaves them blank.")  # fmt: skip
        if tenant is None:
            builtins = ", ".join(sorted(BUILTINS))
            widget = forms.TextInput(attrs={"class": "vTextField", "placeholder": "name or name@version"})
            help_text += f" A template of the chosen tenant, or a built-in: {builtins}."
        else:
            choices = [(t.ref, f"{t.ref} · {t.document_type}{' (built-in)' if t.builtin else ''}")
                       for t in templates_of(tenant)]  # fmt: skip
            widget = forms.Select(choices=[("", "none"), *choices])
        return forms.CharField(required=False, widget=widget, help_text=help_text)

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

    def clean(self):
        data = super().clean()
        if "devices" in data and "tags" in data and not data["devices"] and not data["tags"]:
            self.add_error(None, "Pick target devices, give a tag selector, or both")
        tenant = self.target_tenant()
        foreign = [d for d in data.get("devices") or [] if tenant is not None and d.tenant_id != tenant.pk]
        if foreign:
            names = ", ".join(str(d) for d in foreign[:10])
            self.add_error("devices", f"These devices are not in tenant {tenant.pk!r}: {names}")
        now = timezone.now()
        configs = (
            ("rollout", "rollout_", self._rollout, parse_rollout),
            ("abort_config", "abort_", self._abort, parse_abort),
            ("scheduling", ("schedule_", "window_"), self._schedule, lambda c: parse_schedule(c, now=now)),
            ("retry_config", "retry_", self._retry, parse_retry),
        )
        for name, prefix, compose, rule in configs:
            if any(f.startswith(prefix) and f not in data for f in self.fields):
                continue  # a field of it is already refused (not a number, not a date): its error is shown
            config = compose(data)
            try:
                rule(config)
            except DomainError as exc:
                self.show(exc)
            else:
                data[name] = config  # None: not given (a template's default applies)
        return data

    # Each composes the dict the API takes (None: nothing given) and records in self.where which field
    # each of its paths came from.

    def _rollout(self, data) -> dict | None:
        kind = data["rollout_type"]
        self.where.update({
            "rollout": "rollout_type",
            "rollout.maximum_per_minute": "rollout_maximum_per_minute",
            "rollout.exponential": "rollout_type",
            "rollout.exponential.base_rate_per_minute": "rollout_base_rate_per_minute",
            "rollout.exponential.increment_factor": "rollout_increment_factor",
            "rollout.exponential.rate_increase_criteria": "rollout_criterion",
            f"rollout.exponential.rate_increase_criteria.{data['rollout_criterion']}": "rollout_criterion_count",
        })  # fmt: skip
        given = [f for f in ROLLOUT_NUMBERS if data[f] is not None]
        if not kind:
            if given:
                self.add_error("rollout_type", "Choose constant or exponential for the rates given (or clear them)")
            return None
        if kind == "constant":
            for name in set(given) & set(EXPONENTIAL_ONLY):
                self.add_error(name, "Only for an exponential rollout (clear it, or choose exponential)")
            return {"maximum_per_minute": data["rollout_maximum_per_minute"]}
        exponential = {"base_rate_per_minute": data["rollout_base_rate_per_minute"],
                       "increment_factor": data["rollout_increment_factor"]}  # fmt: skip
        if data["rollout_criterion_count"] is not None:
            exponential["rate_increase_criteria"] = {data["rollout_criterion"]: data["rollout_criterion_count"]}
        else:  # the rule says it is required: that is the count's to show
            self.where["rollout.exponential.rate_increase_criteria"] = "rollout_criterion_count"
        config = {"exponential": {k: v for k, v in exponential.items() if v is not None}}
        if data["rollout_maximum_per_minute"] is not None:
            config["maximum_per_minute"] = data["rollout_maximum_per_minute"]
        return config

    def _abort(self, data) -> dict | None:
        criteria = []
        for i in range(1, ABORT_ROWS + 1):
            row = {"failure_type": data[f"abort_{i}_failure_type"] or None,
                   "threshold_percentage": data[f"abort_{i}_threshold_percentage"],
                   "min_executed": data[f"abort_{i}_min_executed"]}  # fmt: skip
            if all(v is None for v in row.values()):
                continue  # a blank row
            path = f"abort_config.criteria[{len(criteria)}]"
            self.where.update({path: f"abort_{i}_failure_type",
                               **{f"{path}.{key}": f"abort_{i}_{key}" for key in row}})  # fmt: skip
            criteria.append({k: v for k, v in row.items() if v is not None})
        self.where.update({"abort_config": "abort_force", "abort_config.force": "abort_force",
                           "abort_config.criteria": "abort_1_failure_type" if criteria else "abort_force"})  # fmt: skip
        if not criteria and not data["abort_force"]:
            return None
        return {"criteria": criteria, "force": data["abort_force"]}

    def _schedule(self, data) -> dict | None:
        config = {}
        for key in ("start_time", "end_time"):
            if data[f"schedule_{key}"] is not None:
                config[key] = _iso(data[f"schedule_{key}"])
        for key in ("end_behavior", "timezone"):
            if data[f"schedule_{key}"]:
                config[key] = data[f"schedule_{key}"]
        self.where.update({"scheduling": "schedule_start_time",
                           **{f"scheduling.{key}": f"schedule_{key}"
                              for key in ("start_time", "end_time", "end_behavior", "timezone")}})  # fmt: skip
        windows = []
        for i in range(1, WINDOW_ROWS + 1):
            cron, minutes = data[f"window_{i}_cron"], data[f"window_{i}_duration_minutes"]
            if not cron and minutes is None:
                continue  # a blank row
            path = f"scheduling.maintenance_windows[{len(windows)}]"
            self.where.update({path: f"window_{i}_cron", f"{path}.cron": f"window_{i}_cron",
                               f"{path}.duration_minutes": f"window_{i}_duration_minutes"})  # fmt: skip
            windows.append({"cron": cron, "duration_minutes": minutes})
        if windows:
            config["maintenance_windows"] = windows
            self.where["scheduling.maintenance_windows"] = "window_1_cron"
        return config or None

    def _retry(self, data) -> dict | None:
        criteria = []
        for failure_type, name in RETRY_FIELDS.items():
            if data[name] is not None:
                self.where[f"retry_config.criteria[{len(criteria)}]"] = name
                criteria.append({"failure_type": failure_type, "number_of_retries": data[name]})
        if not criteria:
            return None
        whole = "retry_all" if data["retry_all"] is not None else RETRY_FIELDS[criteria[0]["failure_type"]]
        self.where.update({"retry_config": whole, "retry_config.criteria": whole})
        return {"criteria": criteria}

    def show(self, exc: DomainError) -> None:
        """A rule's or the service's error, on the field it is about (a non-field error if none)."""
        field = field_of(exc.message, self.where) or ERROR_FIELDS.get(exc.code)
        self.add_error(field if field in self.fields else None, exc.message)

    def target_tenant(self) -> Tenant | None:
        return self.own_tenant or self.cleaned_data.get("tenant")

    def save(self, commit=True):
        """Create the job through the service; on a DomainError, add it to the form and return None."""
        data = self.cleaned_data
        try:
            self.job = services.job_create(
                tenant=self.target_tenant(),
                job_id=data["job_id"] or None,
                template=data["template"] or None,
                document_type=data["document_type"] or None,
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
            self.show(exc)
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
