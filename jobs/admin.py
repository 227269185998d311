"""Jobs admin: create jobs, watch their progress live, cancel them, browse executions.

Every write goes through jobs.services (create, cancel), as from the API; the
job page itself is read-only. Tenant scoping and role checks come from
devices.admin_scope. Progress bars for a whole page come from ONE grouped
query (jobs.selectors.jobs_progress), and the page's JS refetches them (and the
job page's rollout chart) from progress.json when a jobs.changed event names a
visible job.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import mark_safe

from devices.admin_scope import TenantScopedAdmin, admin_tenant
from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud.errors import DomainError, error_body
from iotcloud.rules import valid_pk
from jobs import services
from jobs.choices import ExecutionStatus
from jobs.desired import cancel_and_revert
from jobs.forms import ABORT_ROWS, WINDOW_ROWS, JobCreateForm, JobTemplateForm
from jobs.models import Job, JobExecution, JobTemplate
from jobs.retry import MAX_RETRIES
from jobs.selectors import jobs_progress, rollout_series
from jobs.templates import template_save

MAX_PROGRESS_IDS = 500
AUTOCOMPLETE_PAGE = 20
# Bar segments, left to right: finished outcomes first, then work still open.
SEGMENTS = [
    ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.REJECTED, ExecutionStatus.TIMED_OUT,
    ExecutionStatus.CANCELED, ExecutionStatus.IN_PROGRESS, ExecutionStatus.QUEUED,
]  # fmt: skip


def _label(status: str) -> str:
    return status.lower().replace("_", " ")


def _bar_context(progress: dict) -> dict:
    total, counts = progress["total"], progress["counts"]
    segments = [
        {"css": s.lower(), "width": f"{100 * counts[s] / total:.3f}", "label": _label(s), "count": counts[s]}
        for s in SEGMENTS
        if counts.get(s)
    ]
    return {"segments": segments, "total": total}


def progress_inner_html(progress: dict) -> str:
    """The bar (one segment per status) and the counts line, e.g. `succeeded 40 · queued 60 of 100`."""
    return render_to_string("admin/jobs/job/_progress_bar.html", _bar_context(progress))


def progress_html(job_pk: int, job_id: str, progress: dict, *, wide: bool = False) -> str:
    """A bar the page's JS finds (data-job-progress) and refreshes in place."""
    context = {"job_pk": job_pk, "job_id": job_id, "wide": wide, **_bar_context(progress)}
    return render_to_string("admin/jobs/job/_progress.html", context)


def _refuse(detail: str, code: str, status: int = 400) -> JsonResponse:
    return JsonResponse(error_body(detail, code), status=status)


def _parse_pks(raw: str) -> list[int]:
    pks = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        if not part.isdigit() or not valid_pk(int(part)):
            raise ValueError(part)
        pks.append(int(part))
    return pks


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP rows: COUNT(*) over a tenant's millions of executions would dominate the page."""

    COUNT_CAP = 10_000

    @cached_property
    def count(self):
        return self.object_list.order_by()[: self.COUNT_CAP + 1].count()


class ScopedJobFilter(admin.SimpleListFilter):
    """Filter executions by job: choices are the user's own (recent) jobs, never another tenant's.

    RelatedOnlyFieldListFilter would run SELECT DISTINCT over every execution.
    """

    title = "job"
    parameter_name = "job__id__exact"
    LIMIT = 30

    def lookups(self, request, model_admin):
        job_admin = model_admin.admin_site.get_model_admin(Job)
        scoped = job_admin.get_queryset(request).values_list("pk", "job_id", "tenant_id")
        jobs = list(scoped.order_by("-created_at")[: self.LIMIT])
        value = self.value()
        if value and value.isdigit() and valid_pk(int(value)) and all(str(pk) != value for pk, _, _ in jobs):
            jobs += list(scoped.filter(pk=int(value)))  # the chosen job, when older than the recent ones
        with_tenant = request.user.is_superuser
        return [(str(pk), f"{tenant_id}/{job_id}" if with_tenant else job_id) for pk, job_id, tenant_id in jobs]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit() or not valid_pk(int(value)):
            return queryset.none()
        return queryset.filter(job_id=int(value))


CHART_LINES = (("released", "#2563eb", "released"), ("succeeded", "#16a34a", "succeeded"),
               ("failed", "#dc2626", "failed (FAILED, REJECTED, TIMED_OUT)"))  # fmt: skip


def rollout_chart_svg(series: dict, *, width: int = 640, height: int = 200) -> str:
    """The rollout as a line chart (inline SVG, no script): executions released, succeeded and failed
    over time, and the abort threshold (the failures at which the first criterion trips)."""
    top = max(series["total"], max(series["released"], default=0), 1)
    span = series["span"]

    def points(values) -> str:
        return " ".join(f"{40 + (t / span) * (width - 50):.1f},{height - 20 - (v / top) * (height - 40):.1f}"
                        for t, v in zip(series["seconds"], values, strict=True))  # fmt: skip

    lines = [f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points(series[key])}"/>'
             for key, color, _ in CHART_LINES]  # fmt: skip
    legend = [(label, color, "") for _, color, label in CHART_LINES]
    if series["threshold_percentage"] is not None:
        limit = [r * series["threshold_percentage"] / 100 for r in series["released"]]
        lines.append(f'<polyline fill="none" stroke="#f59e0b" stroke-width="2" stroke-dasharray="6 4" '
                     f'points="{points(limit)}"/>')  # fmt: skip
        legend.append((f"abort threshold ({series['threshold_percentage']:g}% {series['threshold_type']})",
                       "#f59e0b", ' stroke-dasharray="6 4"'))  # fmt: skip
    axes = (f'<line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#888"/>'
            f'<line x1="40" y1="20" x2="40" y2="{height - 20}" stroke="#888"/>'
            f'<text x="4" y="24" font-size="11">{top}</text><text x="28" y="{height - 6}" font-size="11">0</text>'
            f'<text x="{width - 80}" y="{height - 6}" font-size="11">{_duration(span)}</text>')  # fmt: skip
    keys = "".join(
        f'<line x1="{50 + i * 150}" y1="8" x2="{70 + i * 150}" y2="8" stroke="{color}" stroke-width="2"{dash}/>'
        f'<text x="{74 + i * 150}" y="12" font-size="11">{escape(label)}</text>'
        for i, (label, color, dash) in enumerate(legend)
    )
    svg = (f'<svg class="iot-rollout-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="rollout over time">{axes}{"".join(lines)}{keys}</svg>')  # fmt: skip
    return mark_safe(svg)  # noqa: S308 (numbers and escaped labels only)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _collapse(form, fields) -> list[str]:
    """Django's "collapse", unless a field of the group has an error (Django looks for it in the
    one-field lines only, and would hide the error of a row of fields)."""
    names = {name for line in fields for name in (line if isinstance(line, tuple) else (line,))}
    return [] if names & set(form.errors) else ["collapse"]


def _config_html(config: dict) -> str:
    """A job's configuration as indented JSON, or "none"."""
    return format_html('<pre class="iot-json">{}</pre>', json.dumps(config, indent=2)) if config else "none"


@admin.register(Job)
class JobAdmin(TenantScopedAdmin):
    list_display = ["job_id", "tenant", "document_type", "status_label", "progress", "created_at"]
    list_filter = ["status", "document_type", ("tenant", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["tenant"]
    search_fields = ["job_id"]
    actions = ["cancel", "force_cancel", "cancel_and_revert"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count query per filter choice
    ordering = ["-created_at"]
    fieldsets = [
        (None, {"fields": ["tenant", "job_id", "status_label", "document_type", "document", "description"]}),
        ("Progress", {"fields": ["progress_wide", "executions_link"]}),
        ("Targets and timing", {"fields": ["target_summary", "expires_at", "in_progress_timeout_seconds"]}),
        (
            "Rollout, schedule, abort and retries",
            {
                "fields": ["rollout_chart", "rollout_summary", "schedule_summary", "abort_summary", "retry_summary"],
            },
        ),
        (
            "History",
            {"fields": ["created_at", "updated_at", "completed_at", "canceled_at", "cancel_reason", "revert_progress"]},
        ),
    ]

    def get_queryset(self, request):
        # targets can hold 100,000 device ids, params 32 KiB: the job page loads them when it shows them.
        return super().get_queryset(request).defer("targets", "document_params", "description")

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def has_change_permission(self, request, obj=None):
        # A job changes only through actions (the service); its page is read-only for everyone.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        # Jobs are canceled, not deleted: no service deletes them, and the confirmation
        # page would list every one of up to 100,000 executions.
        return False

    # --- list ---------------------------------------------------------------------------

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        jobs = list(changelist.result_list)  # evaluates the page; the template iterates these same rows
        progress = jobs_progress([job.pk for job in jobs])
        for job in jobs:
            job.progress_data = progress[job.pk]
        return changelist

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context.update(self._live_context(request, {job.tenant_id for job in context["cl"].result_list}))
        return response

    def _live_context(self, request, tenant_ids) -> dict:
        tenant = None if request.user.is_superuser else admin_tenant(request)
        return {
            "live_tenants": sorted([tenant.pk] if tenant else tenant_ids),
            "progress_url": reverse(f"{self.admin_site.name}:jobs_job_progress"),
        }

    @admin.display(description="status", ordering="status")
    def status_label(self, obj):
        return format_html('<span data-job-status="{}">{}</span>', obj.pk, obj.status)

    @admin.display(description="progress")
    def progress(self, obj):
        data = getattr(obj, "progress_data", None) or jobs_progress([obj.pk])[obj.pk]
        return progress_html(obj.pk, obj.job_id, data)

    # --- job page ------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        context = getattr(response, "context_data", None)
        original = context.get("original") if context else None
        if original is not None:
            context.update(self._live_context(request, {original.tenant_id}))
        return response

    @admin.display(description="progress")
    def progress_wide(self, obj):
        return progress_html(obj.pk, obj.job_id, jobs_progress([obj.pk])[obj.pk], wide=True)

    @admin.display(description="executions")
    def executions_link(self, obj):
        url = reverse(f"{self.admin_site.name}:jobs_jobexecution_changelist")
        return format_html('<a href="{}?job__id__exact={}">All executions of {}</a>', url, obj.pk, obj.job_id)

    @admin.display(description="document")
    def document(self, obj):
        return format_html('<pre class="iot-json">{}</pre>', json.dumps(obj.document_params, indent=2))

    @admin.display(description="rollout")
    def rollout_summary(self, obj):
        if not obj.rollout:
            return "none: every execution released at creation"
        unreleased = JobExecution.objects.filter(job_id=obj.pk, released_at__isnull=True, status="QUEUED").count()
        return format_html(
            '<pre class="iot-json">{}</pre>{} of {} released, {} waiting for release',
            json.dumps(obj.rollout, indent=2), obj.released, obj.total, unreleased,
        )  # fmt: skip

    @admin.display(description="rollout over time")
    def rollout_chart(self, obj):
        # The page's JS finds it (data-job-chart) and puts progress.json's fresh chart inside.
        return format_html('<div data-job-chart="{}">{}</div>', obj.pk, rollout_chart_svg(rollout_series(obj)))

    @admin.display(description="revert")
    def revert_progress(self, obj):
        summary = obj.revert_summary
        if not summary:
            return "none"
        state = "under way (the scheduler puts devices back a batch at a time)" if obj.reverting else "done"
        return format_html(
            "{}: {} device(s) put back, {} key(s) kept (changed since), {} left as written meanwhile",
            state,
            summary.get("reverted", 0),
            summary.get("keys_kept", 0),
            summary.get("refused", 0),
        )

    @admin.display(description="schedule")
    def schedule_summary(self, obj):
        return _config_html(obj.scheduling)

    @admin.display(description="retries")
    def retry_summary(self, obj):
        return _config_html(obj.retry_config)

    @admin.display(description="abort criteria")
    def abort_summary(self, obj):
        return _config_html(obj.abort_config)

    @admin.display(description="targets")
    def target_summary(self, obj):
        targets = obj.targets or {}
        ids, tags = targets.get("device_ids") or [], targets.get("tags") or {}
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        tag_text = ", ".join(f"{k}={v}" for k, v in tags.items())
        return format_html(
            "Devices ({}): {}<br>Tag selector: {}", len(ids), shown or "none", tag_text or "none"
        )  # fmt: skip

    # --- actions -------------------------------------------------------------------------

    def _cancel(self, request, queryset, force: bool):
        canceled = []
        for job in queryset:
            try:
                services.job_cancel(job=job, force=force, reason=f"canceled in admin by {request.user}",
                                    actor=services.operator_actor(request.user))  # fmt: skip
            except DomainError as exc:
                self.message_user(request, f"Not canceled: {exc.message}", messages.WARNING)  # it names the job
            else:
                canceled.append(job.job_id)
        if canceled:
            self.message_user(request, f"Canceled {len(canceled)} job(s): {', '.join(canceled)}", messages.SUCCESS)

    @admin.action(description="Cancel (queued executions)", permissions=["change"])
    def cancel(self, request, queryset):
        self._cancel(request, queryset, force=False)

    @admin.action(description="Cancel and revert (desired-state jobs: previous values back)", permissions=["change"])
    def cancel_and_revert(self, request, queryset):
        for job in queryset:
            try:
                done = cancel_and_revert(job=job, reason=f"canceled and reverted in admin by {request.user}",
                                         actor=services.operator_actor(request.user))  # fmt: skip
            except DomainError as exc:
                self.message_user(request, f"Not reverted: {exc.message}", messages.WARNING)  # it names the job
            else:
                self.message_user(request, f"Job {done.job_id}: {done.cancel_reason}", messages.SUCCESS)

    @admin.action(description="Force cancel (also in-progress executions)", permissions=["change"])
    def force_cancel(self, request, queryset):
        self._cancel(request, queryset, force=True)

    # --- add -----------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """A form of our own (not a ModelForm save): saving is jobs.services.job_create."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = JobCreateForm(
            request.POST if request.method == "POST" else None,
            tenant=None if request.user.is_superuser else admin_tenant(request),
            autocomplete_url=reverse(f"{self.admin_site.name}:jobs_job_devices"),
            admin_site=self.admin_site,
        )
        if request.method == "POST" and form.is_valid() and form.save():
            job = form.job
            self.log_addition(request, job, [{"added": {}}])
            self.message_user(request, f"Job {job.job_id} created: {job.total} execution(s) queued.", messages.SUCCESS)
            return redirect(f"{self.admin_site.name}:jobs_job_change", job.pk)
        adminform = helpers.AdminForm(form, self._add_fieldsets(form), {}, model_admin=self)
        context = {
            **self.admin_site.each_context(request),
            "title": "Add job",
            "subtitle": None,
            "adminform": adminform,
            "object_id": None,
            "original": None,
            "is_popup": False,
            "to_field": None,
            "media": self.media + adminform.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "show_save_and_add_another": False,
            "show_save_and_continue": False,  # saving always opens the new job's page
            **(extra_context or {}),
        }
        return self.render_change_form(request, context, add=True, form_url=form_url)

    def _add_fieldsets(self, form):
        first = ["tenant", "job_id", "template", "document_type", "document_params", "description"]
        targets = {"fields": ["devices", "tags", "continuous"], "description": "Devices picked, tag matches, or both."}
        timing = {"fields": ["expires_at", "in_progress_timeout_seconds"]}
        rollout = {
            "fields": ["rollout_type", "rollout_maximum_per_minute", "rollout_base_rate_per_minute",
                       "rollout_increment_factor", ("rollout_criterion", "rollout_criterion_count")],
            "description": "How fast devices get the job. Constant: a maximum per minute. Exponential: a base rate "
            "multiplied by the factor each time another so many devices were notified or succeeded.",
        }  # fmt: skip
        abort = {
            "fields": [*(tuple(f"abort_{i}_{key}" for key in ("failure_type", "threshold_percentage", "min_executed"))
                         for i in range(1, ABORT_ROWS + 1)), "abort_force"],
            "description": "The job is canceled once at least the minimum of its executions were released and the "
            "threshold % or more of them ended in the failure type (ALL: FAILED, REJECTED or TIMED_OUT). Blank rows "
            "are ignored.",
        }  # fmt: skip
        schedule = {
            "fields": ["schedule_start_time", "schedule_end_time", "schedule_end_behavior", "schedule_timezone",
                       *((f"window_{i}_cron", f"window_{i}_duration_minutes") for i in range(1, WINDOW_ROWS + 1))],
            "description": "When executions may be released: after the start, before the end, and, with maintenance "
            "windows, only inside one (each opens at its cron expression's times, minute hour day month weekday, "
            "in the time zone, for its duration). Blank rows are ignored.",
        }  # fmt: skip
        retries = {
            "fields": ["retry_failed", "retry_timed_out", "retry_all"],
            "description": "How many times a device's failed or timed-out execution is queued again (at most "
            f"{MAX_RETRIES} in all). Blank: none, or the template's; 0 overrides the template's.",
        }
        for advanced in (abort, schedule, retries):
            advanced["classes"] = _collapse(form, advanced["fields"])
        return [
            (None, {"fields": [f for f in first if f in form.fields]}),
            ("Targets", targets),
            ("Timing", timing),
            ("Rollout", rollout),
            ("Abort criteria", abort),
            ("Schedule", schedule),
            ("Retries", retries),
        ]

    # --- JSON endpoints --------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("progress.json", wrap(self.progress_json), name="jobs_job_progress"),
            path("devices.json", wrap(self.devices_json), name="jobs_job_devices"),
            *super().get_urls(),
        ]

    def progress_json(self, request):
        """`?ids=1,2`: per job {status, total, remaining, counts, percent_done, html}; `&chart=<pk>`: also
        {"charts": {pk: the job's rollout chart}}. Others' jobs are omitted."""
        if not self.has_view_permission(request):
            return _refuse("You may not view jobs", "permission_denied", status=403)
        try:
            pks = _parse_pks(request.GET.get("ids", ""))
        except ValueError as exc:
            return _refuse(f"ids: {str(exc)[:40]!r} is not a job number; give ids=<pk>,<pk>", "invalid_ids")
        if len(pks) > MAX_PROGRESS_IDS:
            return _refuse(f"ids: at most {MAX_PROGRESS_IDS} jobs per request", "invalid_ids")
        chart = request.GET.get("chart")
        if chart is not None and not (chart.isascii() and chart.isdigit() and valid_pk(int(chart))):
            return _refuse(f"chart: {chart[:40]!r} is not a job number; give chart=<pk>", "invalid_chart")
        jobs = dict(self.get_queryset(request).filter(pk__in=pks).values_list("pk", "status")) if pks else {}
        progress = jobs_progress(jobs)
        body = {"jobs": {str(pk): {"status": jobs[pk], **item, "html": progress_inner_html(item)}
                         for pk, item in progress.items()}}  # fmt: skip
        if chart is not None:
            shown = self.get_queryset(request).filter(pk=int(chart)).first()
            body["charts"] = {str(shown.pk): rollout_chart_svg(rollout_series(shown))} if shown else {}
        return JsonResponse(body)

    def devices_json(self, request):
        """select2's source for the add form: active devices of the user's tenant, by device id."""
        if not self.has_add_permission(request):
            return _refuse("You may not create jobs", "permission_denied", status=403)
        devices = Device.objects.filter(status=DeviceStatus.ACTIVE).order_by("device_id", "tenant_id")
        if not request.user.is_superuser:
            devices = devices.filter(tenant=admin_tenant(request))
        term = request.GET.get("term", "").strip()[:128]
        if term:
            devices = devices.filter(device_id__icontains=term)
        page = request.GET.get("page", "1")
        page = int(page) if page.isdigit() and 0 < int(page) < 10_000 else 1
        start = (page - 1) * AUTOCOMPLETE_PAGE
        rows = list(devices.values_list("pk", "device_id", "tenant_id")[start : start + AUTOCOMPLETE_PAGE + 1])
        label = (lambda d, t: f"{t}/{d}") if request.user.is_superuser else (lambda d, t: d)
        return JsonResponse(
            {
                "results": [{"id": str(pk), "text": label(d, t)} for pk, d, t in rows[:AUTOCOMPLETE_PAGE]],
                "pagination": {"more": len(rows) > AUTOCOMPLETE_PAGE},
            }
        )


@admin.register(JobExecution)
class JobExecutionAdmin(TenantScopedAdmin):
    list_display = ["job", "device", "status", "execution_number", "queued_at", "released_at", "started_at",
                    "last_updated_at"]  # fmt: skip
    list_filter = ["status", ScopedJobFilter, "tenant"]
    list_select_related = ["job", "device"]
    search_fields = ["device__device_id", "job__job_id"]
    show_full_result_count = False  # COUNT(*) over 100,000 executions per job is slow
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    actions = []

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in JobExecution._meta.fields] + ["history_table"]

    @admin.display(description="history")
    def history_table(self, obj):
        rows = obj.history.order_by("at", "id")[:200]
        if not rows:
            return "no change since it was queued"
        return format_html(
            "<table><tr><th>at</th><th>status</th><th>number</th><th>by</th><th>details</th></tr>{}</table>",
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                ((r.at.strftime("%Y-%m-%d %H:%M:%S"), r.status, r.execution_number, r.actor,
                  json.dumps(r.status_details)) for r in rows),
            ),
        )  # fmt: skip

    def get_queryset(self, request):
        jobs_columns = ("job__targets", "job__document_params", "job__description")  # a list shows the job's id only
        return super().get_queryset(request).select_related("job", "device").defer(*jobs_columns)

    def has_add_permission(self, request):
        return False  # executions are created by jobs.services.job_create

    def has_change_permission(self, request, obj=None):
        return False  # devices and the platform move executions along the state machine

    def has_delete_permission(self, request, obj=None):
        return False  # a job's counts depend on its executions


@admin.register(JobTemplate)
class JobTemplateAdmin(TenantScopedAdmin):
    form = JobTemplateForm
    list_display = ["name", "version", "tenant", "document_type", "created_at", "created_by"]
    list_filter = [("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name"]
    ordering = ["name", "-version"]

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)  # versions never change

    def save_model(self, request, obj, form, change):
        data = {k: form.cleaned_data.get(k) for k in JobTemplateForm.Meta.fields}
        saved = template_save(actor=services.operator_actor(request.user), **data)
        obj.pk, obj.version = saved.pk, saved.version
