"""The iotcloud admin site: Django's admin plus a live tenant dashboard.

/admin/dashboard/ shows, for the operator's tenant (a superuser picks one
with ?tenant=, or sees all): device counts by sync status, jobs in progress
with their bars, and the devices that reported last. dashboard.json returns
the same numbers; the page's JS refetches it on twin.changed / jobs.changed.
Each part is a bounded number of queries, whatever the fleet size.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from devices.models import Device, Tenant
from devices.selectors import operator_tenant
from iotcloud.admin_filters import declared_filters_only
from jobs import selectors as job_selectors
from jobs.models import Job
from twin import selectors as twin_selectors
from twin.choices import SyncStatus

DASHBOARD_JOBS = 10
DASHBOARD_RECENT = 20
MAX_WATCHED_TENANTS = 100  # the live consumer's limit per subscription


def jobs_in_progress(jobs, site_name: str) -> list[dict]:
    """The newest jobs in progress with their progress bars."""
    from jobs.admin import progress_inner_html  # the jobs admin renders bars; imported late (it registers models)

    return [
        {
            "pk": row["pk"],
            "job_id": row["job_id"],
            "tenant": row["tenant_id"],
            "document_type": row["document_type"],
            "created_at": row["created_at"].isoformat(),
            "url": reverse(f"{site_name}:jobs_job_change", args=[row["pk"]]),
            "progress": row["progress"],
            "html": progress_inner_html(row["progress"]),
        }
        for row in job_selectors.jobs_in_progress(jobs, limit=DASHBOARD_JOBS)
    ]


def recent_reports(devices, site_name: str) -> list[dict]:
    """Devices with the latest reported state, with their sync badge."""
    return [
        {
            "device_id": row["device_id"],
            "tenant": row["tenant_id"],
            "url": reverse(f"{site_name}:devices_device_change", args=[row["pk"]]),
            "sync_status": row["sync_status"],
            "reported_version": row["reported_version"],
            "reported_updated_at": row["reported_updated_at"].isoformat(),
        }
        for row in twin_selectors.latest_reports(devices, limit=DASHBOARD_RECENT)
    ]


class IotcloudAdminSite(admin.AdminSite):
    site_header = "iotcloud"
    site_title = "iotcloud admin"
    index_title = "Operations"

    def register(self, model_or_iterable, admin_class=None, **options):
        # Every list of this site (also auth's, knox's, axes') filters only by what it declares and
        # never by a secret; TenantScopedAdmin has it already.
        admin_class = declared_filters_only(admin_class or admin.ModelAdmin)
        super().register(model_or_iterable, admin_class, **options)

    def get_urls(self):
        return [
            path("dashboard/", self.admin_view(self.dashboard_view), name="dashboard"),
            path("dashboard.json", self.admin_view(self.dashboard_json), name="dashboard_json"),
            *super().get_urls(),
        ]

    def _dashboard_tenant(self, request) -> Tenant | None:
        """The tenant shown: the operator's own; for a superuser ?tenant= or None (all tenants)."""
        if not request.user.is_superuser:
            tenant = operator_tenant(request.user)
            if tenant is None:
                raise PermissionDenied("You are not an operator of any tenant")
            return tenant
        wanted = request.GET.get("tenant", "").strip()
        if not wanted:
            return None
        tenant = Tenant.objects.filter(pk=wanted[:63]).first()
        if tenant is None:
            raise Http404(f"Tenant {wanted[:63]!r} does not exist")
        return tenant

    def dashboard_data(self, tenant: Tenant | None) -> dict:
        devices = Device.objects.filter(tenant=tenant) if tenant else Device.objects.all()
        jobs = Job.objects.filter(tenant=tenant) if tenant else Job.objects.all()
        return {
            "tenant": tenant.pk if tenant else None,
            "counts": twin_selectors.sync_counts(devices),
            "jobs": jobs_in_progress(jobs, self.name),
            "recent": recent_reports(devices, self.name),
        }

    def dashboard_view(self, request):
        tenant = self._dashboard_tenant(request)
        if tenant:
            watched = [tenant.pk]
        else:
            watched = list(Tenant.objects.order_by("pk").values_list("pk", flat=True)[:MAX_WATCHED_TENANTS])
        query = f"?tenant={tenant.pk}" if tenant and request.user.is_superuser else ""
        context = {
            **self.each_context(request),
            "title": f"Dashboard: {tenant.name} ({tenant.pk})" if tenant else "Dashboard: all tenants",
            "data": self.dashboard_data(tenant),
            "tenant": tenant,
            "tenants": Tenant.objects.order_by("pk").values_list("pk", flat=True) if request.user.is_superuser else [],
            "live_tenants": watched,
            "json_url": reverse(f"{self.name}:dashboard_json") + query,
            "sync_statuses": SyncStatus.values,
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/dashboard.html", context)

    def dashboard_json(self, request):
        try:
            tenant = self._dashboard_tenant(request)
        except PermissionDenied as exc:
            return JsonResponse({"detail": str(exc)}, status=403)
        except Http404 as exc:
            return JsonResponse({"detail": str(exc)}, status=404)
        return JsonResponse(self.dashboard_data(tenant))
