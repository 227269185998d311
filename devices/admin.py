"""Admin for tenants, memberships and devices.

Device rows change only through services (versions, tokens and status have
rules), so the admin shows shadow and token fields read-only and routes tag
edits through devices.services. The full operator UI (twin panel, live
updates, tenant-scoped staff) is built on top of this.
"""

from django import forms
from django.contrib import admin

from devices import services
from devices.models import Device, Membership, Tenant
from iotcloud.errors import DomainError


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_at"]
    search_fields = ["id", "name"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__id"]
    autocomplete_fields = ["tenant"]


class DeviceForm(forms.ModelForm):
    class Meta:
        model = Device
        fields = ["tags"]

    def clean_tags(self):
        try:
            return services.validate_tags(self.cleaned_data["tags"])
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceForm
    list_display = ["device_id", "tenant", "status", "desired_version", "reported_version", "last_seen"]
    list_filter = ["status", "tenant"]
    search_fields = ["device_id"]
    list_select_related = ["tenant"]
    show_full_result_count = False  # COUNT(*) over a large fleet is slow
    readonly_fields = [
        "tenant", "device_id", "status", "last_seen", "created_at", "decommissioned_at", "desired_state",
        "reported_state", "desired_version", "reported_version", "shadow_updated_at", "reported_updated_at",
        "desired_published_version",
    ]  # fmt: skip

    def has_add_permission(self, request):
        return False  # provisioning returns a token once: use the API or `manage.py provision_device`

    def save_model(self, request, obj, form, change):
        services.device_set_tags(device=obj, tags=form.cleaned_data["tags"])
