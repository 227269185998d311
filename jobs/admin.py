"""Read-mostly admin for jobs; writes go through jobs.services (the full operator UI builds on this)."""

from django.contrib import admin, messages

from iotcloud.errors import DomainError
from jobs import services
from jobs.models import Job, JobExecution


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["job_id", "tenant", "document_type", "status", "total", "remaining", "created_at"]
    list_filter = ["status", "tenant", "document_type"]
    search_fields = ["job_id"]
    actions = ["cancel", "force_cancel"]
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False  # create jobs through the API (targets are resolved by jobs.services)

    def _cancel(self, request, queryset, force):
        for job in queryset:
            try:
                services.job_cancel(job=job, force=force, reason=f"canceled in admin by {request.user}")
            except DomainError as exc:
                self.message_user(request, f"{job.job_id}: {exc.message}", messages.WARNING)

    @admin.action(description="Cancel (queued executions)")
    def cancel(self, request, queryset):
        self._cancel(request, queryset, force=False)

    @admin.action(description="Force cancel (also in-progress executions)")
    def force_cancel(self, request, queryset):
        self._cancel(request, queryset, force=True)


@admin.register(JobExecution)
class JobExecutionAdmin(admin.ModelAdmin):
    list_display = ["job", "device", "status", "execution_number", "queued_at", "last_updated_at"]
    list_filter = ["status"]
    search_fields = ["job__job_id", "device__device_id"]
    list_select_related = ["job", "device"]
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in JobExecution._meta.fields]

    def has_add_permission(self, request):
        return False
