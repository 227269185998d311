"""Admin for tenants, operators (memberships) and devices; a device's page carries the twin panel.

Every write goes through the services (devices.services, twin.services), as
it does from the API: provisioning and rotation show the new token once.
The twin panel, the sync badge and the sync filter are twin's (twin.admin_panel).
Tenant scoping and role checks come from devices.admin_scope.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join

from devices import bulk, services
from devices.admin_scope import TenantScopedAdmin, admin_tenant
from devices.certificates import ca_certificate_pem, certificate_issue, certificates_revoke, identity
from devices.choices import DeviceStatus, Role
from devices.models import AuditEvent, Device, Membership, Tenant
from devices.selectors import filter_by_tag
from iotcloud.errors import DomainError, error_body
from iotcloud.form_fields import StrictJSONField
from iotcloud.limits import setting_limit
from iotcloud.rules import DEVICE_ID, valid_pk
from twin.admin_panel import SyncStatusFilter, TwinPanelAdmin, sync_annotation, sync_badge

ADMIN_MEDIA = forms.Media(css={"all": ["iotcloud/admin.css"]}, js=["iotcloud/live.js"])


# --- tenants and operators --------------------------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_path = "id"
    list_display = ["id", "name", "device_desired_writes", "created_at"]
    search_fields = ["id", "name"]
    change_roles = frozenset({Role.ADMIN})

    def scope(self, request, queryset):
        if request.user.is_superuser:
            return queryset
        tenant = admin_tenant(request)
        return queryset.filter(id=tenant.id if tenant else None)

    def _tenant_id_of(self, obj) -> str:
        return obj.pk

    def has_add_permission(self, request):
        return request.user.is_superuser  # tenants are created by the platform's superusers

    def get_readonly_fields(self, request, obj=None):
        return ["id", "created_at"] if obj else ["created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            services.tenant_create(tenant_id=obj.id, name=obj.name)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None


class OperatorCreationForm(forms.ModelForm):
    """A new operator account with its membership (operator_create does both, and holds the rules)."""

    username = forms.CharField(
        max_length=services.USERNAME_MAX_LENGTH,
        help_text=f"1-{services.USERNAME_MAX_LENGTH} of A-Z a-z 0-9 @ . + - _ (no spaces or accents).",
    )
    email = forms.EmailField(required=False)
    password = forms.CharField(
        widget=forms.PasswordInput, strip=False, help_text=password_validation.password_validators_help_text_html()
    )

    # Which field a service error belongs under.
    ERROR_FIELDS = {
        "invalid_username": "username",
        "user_exists": "username",
        "username_unavailable": "username",
        "invalid_password": "password",
        "invalid_email": "email",
    }

    class Meta:
        model = Membership
        fields = ["tenant", "role"]

    def _post_clean(self):
        pass  # the membership is made by operator_create, not by the model form

    def clean(self):
        cleaned = super().clean()
        if "username" not in cleaned or "password" not in cleaned:
            return cleaned
        try:
            # The tenant is the acting admin's own (the field offers no other): a name taken
            # elsewhere gets a neutral answer, never "exists in tenant X".
            cleaned["username"] = services.operator_check(
                username=cleaned["username"],
                password=cleaned["password"],
                email=cleaned.get("email", ""),
                tenant=cleaned.get("tenant"),
            )
        except DomainError as exc:
            field = self.ERROR_FIELDS.get(exc.code)
            for message in exc.extra.get("errors") or [exc.message]:
                self.add_error(field, message)
        return cleaned

    def save(self, commit=True):
        # ModelAdmin calls save(commit=False) once; the account and membership are created here.
        user = services.operator_create(
            username=self.cleaned_data["username"],
            email=self.cleaned_data.get("email", ""),
            password=self.cleaned_data["password"],
            tenant=self.cleaned_data["tenant"],
            role=self.cleaned_data["role"],
        )
        self.instance = user.membership
        self.save_m2m = lambda: None
        return self.instance


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", ("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__username"]
    list_select_related = ["user", "tenant"]
    add_roles = change_roles = frozenset({Role.ADMIN})  # only a tenant's admins manage its operators

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = OperatorCreationForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return ["user", "tenant", "password_link"] if obj else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["username", "email", "password", "tenant", "role"]
        return ["user", "tenant", "role", "password_link"]

    def save_model(self, request, obj, form, change):
        if change:  # a new one was saved by OperatorCreationForm.save
            super().save_model(request, obj, form, change)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    @admin.display(description="password")
    def password_link(self, obj):
        url = reverse("admin:devices_membership_password", args=[obj.pk])
        return format_html(
            '<a href="{}">Set a new password</a> (signs them out everywhere: their sessions end and their '
            "bearer tokens are revoked)",
            url,
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.password_view)
        return [path("<int:pk>/password/", view, name="devices_membership_password"), *super().get_urls()]

    def password_view(self, request, pk):
        """A tenant admin sets a new password for one of the tenant's operators (never for a superuser)."""
        membership = self.get_queryset(request).select_related("user").filter(pk=pk).first() if valid_pk(pk) else None
        if membership is None:
            raise Http404("No such operator")
        if not self.has_change_permission(request, membership):
            raise PermissionDenied
        if membership.user.is_superuser and not request.user.is_superuser:
            raise PermissionDenied
        form = AdminPasswordChangeForm(membership.user, request.POST or None)
        if request.method == "POST" and form.is_valid():
            usable = form.cleaned_data.get("set_usable_password", True)  # "Disabled": no password sign-in
            try:
                services.operator_set_password(
                    user=membership.user, password=form.cleaned_data["password1"] if usable else None
                )
            except DomainError as exc:  # the form ran the same validators; kept for a changed configuration
                form.add_error("password1", exc.message)
            else:
                done = "New password set" if usable else "Password sign-in disabled"
                self.log_change(request, membership, done)
                self.message_user(
                    request,
                    f"{done} for {membership.user}: their sessions ended and their bearer tokens were revoked.",
                    messages.SUCCESS,
                )
                return redirect("admin:devices_membership_change", membership.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Set a password for {membership.user}",
            "form": form,
            "membership": membership,
        }
        return TemplateResponse(request, "admin/devices/membership/password.html", context)


# --- devices -------------------------------------------------------------------------------------------


class TagFilter(admin.ListFilter):
    """Free text: `key` (has the tag) or `key:value` (tag equals)."""

    title = "tag"
    parameter_name = "tag"
    template = "admin/devices/device/tag_filter.html"

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        value = params.pop(self.parameter_name, None)
        self.value = (value[-1] if isinstance(value, list) else value or "").strip()

    def has_output(self):
        return True

    def choices(self, changelist):
        yield {"value": self.value, "query": changelist.get_query_string(remove=[self.parameter_name])}

    def expected_parameters(self):
        return [self.parameter_name]

    def queryset(self, request, queryset):
        if not self.value:
            return queryset
        key, sep, value = self.value.partition(":")
        return filter_by_tag(queryset, key, value if sep else None)


class DeviceForm(forms.ModelForm):
    tags = StrictJSONField(required=False)

    class Meta:
        model = Device
        fields = ["tags"]

    def clean_tags(self):
        try:
            return services.validate_tags(self.cleaned_data["tags"])
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None


class ProvisionForm(forms.Form):
    """Provisioning: device_provision checks the id and the tags; its errors land on these fields."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all())
    device_id = forms.CharField(help_text=f"{DEVICE_ID.text} (it is part of MQTT topics).")
    tags = StrictJSONField(required=False, initial=dict, help_text='For example {"site": "berlin"}.')

    # Which field a service error belongs under; any other (invalid tags) is shown above the form.
    ERROR_FIELDS = {"invalid_device_id": "device_id", "device_exists": "device_id"}

    def __init__(self, *args, tenant: Tenant | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if tenant is not None:  # an operator provisions into their own tenant only
            self.fields["tenant"].queryset = Tenant.objects.filter(pk=tenant.pk)
            self.fields["tenant"].initial = tenant.pk


class BulkProvisionForm(forms.Form):
    """Provisioning from a CSV file: devices_provision_bulk checks every row; refused rows are listed on the page."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all())
    file = forms.FileField(
        label="CSV file",
        help_text=f"UTF-8, a header then a device per line: <code>{bulk.CSV_EXAMPLE}</code>. Columns: "
        "<code>device_id</code>, and a <code>tag:&lt;key&gt;</code> column per tag (an empty cell: no such tag).",
    )

    def __init__(self, *args, tenant: Tenant | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if tenant is not None:  # an operator provisions into their own tenant only
            self.fields["tenant"].queryset = Tenant.objects.filter(pk=tenant.pk)
            self.fields["tenant"].initial = tenant.pk
        self.fields["file"].help_text += (
            f" At most {settings.DEVICES_BULK_MAX_ROWS} devices (DEVICES_BULK_MAX_ROWS) and "
            f"{settings.DEVICES_BULK_MAX_BYTES // 1024} KiB (DEVICES_BULK_MAX_BYTES)."
        )

    def clean_file(self):
        """The file's rows (devices.bulk.read_csv); a file that cannot be read is an error on this field."""
        upload = self.cleaned_data["file"]
        limit = setting_limit("DEVICES_BULK_MAX_BYTES")
        if upload.size > limit:
            raise forms.ValidationError(f"The file is larger than {limit} bytes ({limit.name}); split it")
        try:
            return bulk.read_csv(upload.read(), max_rows=setting_limit("DEVICES_BULK_MAX_ROWS"))
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None


@admin.register(Device)
class DeviceAdmin(TwinPanelAdmin, TenantScopedAdmin):
    form = DeviceForm
    change_form_template = "admin/devices/device/change_form.html"
    change_list_template = "admin/devices/device/change_list.html"
    list_display = ["device_id", "tenant", "status", "sync_badge", "desired_v", "reported_v", "last_seen_at"]
    list_filter = [SyncStatusFilter, "status", ("tenant", admin.RelatedOnlyFieldListFilter), TagFilter]
    search_fields = ["device_id"]
    list_select_related = ["tenant"]
    list_per_page = 50
    show_facets = admin.ShowFacets.NEVER  # per-filter counts would scan the fleet on every page view
    show_full_result_count = False  # COUNT(*) over a large fleet is slow
    readonly_fields = [
        "tenant", "device_id", "status", "last_seen", "created_at", "decommissioned_at", "desired_version",
        "reported_version", "desired_published_version", "shadow_updated_at", "reported_updated_at",
    ]  # fmt: skip
    # Versions and timestamps are in the twin panel above the form.
    fields = ["tenant", "device_id", "status", "tags", "created_at", "decommissioned_at"]

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        fields = [*fields, "broker_account"] if settings.MQTT_DEVICE_AUTH and obj else fields
        return [*fields, "certificates_list", "audit_link"] if obj else fields

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "broker_account", "certificates_list", "audit_link"]

    @admin.display(description="X.509 certificates")
    def certificates_list(self, obj):
        rows = list(obj.certificates.order_by("-created_at", "-pk")[:10])
        if not rows:
            return "none (the device logs in with its provision token)"
        items = format_html_join(
            "", "<li><code>{}</code> valid until {} — {}</li>",
            ((c.serial[:16], f"{c.not_after:%Y-%m-%d}", f"revoked ({c.revoke_reason})" if c.revoked_at else "active")
             for c in rows),
        )  # fmt: skip
        return format_html('<ul class="iot-certificates">{}</ul>', items)

    @admin.display(description="audit trail")
    def audit_link(self, obj):
        url = reverse(f"{self.admin_site.name}:devices_auditevent_changelist")
        return format_html('<a href="{}?q={}">Who changed {} and when</a>', url, obj.device_id, obj.device_id)

    @admin.display(description="broker account")
    def broker_account(self, obj):
        if obj.broker_synced_version >= obj.broker_account_version:
            return "removed" if obj.status != DeviceStatus.ACTIVE else "in step with the broker"
        return "waiting for the bridge to apply the latest change (broker unreachable?)"

    @property
    def media(self):
        return super().media + ADMIN_MEDIA

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(sync=sync_annotation())

    def get_search_results(self, request, queryset, search_term):
        # Device ids are searched by prefix (what operators type), case-sensitive like the ids themselves.
        term = search_term.strip()
        return (queryset.filter(device_id__startswith=term) if term else queryset), False

    def has_delete_permission(self, request, obj=None):
        return False  # devices are decommissioned (token revoked, retained state cleared), never deleted

    @admin.display(description="sync", ordering="sync")
    def sync_badge(self, obj):
        return sync_badge(obj, obj.sync)

    @admin.display(description="desired v", ordering="desired_version")
    def desired_v(self, obj):
        return format_html('<span data-field="desired_version" data-pk="{}">{}</span>', obj.pk, obj.desired_version)

    @admin.display(description="reported v", ordering="reported_version")
    def reported_v(self, obj):
        return format_html('<span data-field="reported_version" data-pk="{}">{}</span>', obj.pk, obj.reported_version)

    @admin.display(description="last seen", ordering="last_seen")
    def last_seen_at(self, obj):
        seen = formats.localize(timezone.localtime(obj.last_seen)) if obj.last_seen else "never"
        return format_html('<span data-field="last_seen" data-pk="{}">{}</span>', obj.pk, seen)

    def save_model(self, request, obj, form, change):
        services.device_set_tags(device=obj, tags=form.cleaned_data["tags"])

    # -- extra pages ----------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("status.json", view(self.status_json), name="devices_device_status"),
            path("bulk/", view(self.bulk_view), name="devices_device_bulk"),
            *self.twin_panel_urls(),
            path("<int:pk>/rotate-token/", view(self.rotate_token_view), name="devices_device_rotate"),
            path("<int:pk>/decommission/", view(self.decommission_view), name="devices_device_decommission"),
            path("<int:pk>/certificate/", view(self.certificate_view), name="devices_device_certificate"),
            path(
                "<int:pk>/revoke-certificates/",
                view(self.revoke_certificates_view),
                name="devices_device_revoke_certificates",
            ),
            *super().get_urls(),
        ]

    def _device(self, request, pk: int, *, write: bool = False) -> Device:
        device = self.get_queryset(request).filter(pk=pk).first() if valid_pk(pk) else None
        if device is None or not self.has_view_permission(request, device):
            raise Http404("No such device")  # another tenant's device does not exist for you
        if write and not self.has_change_permission(request, device):
            raise PermissionDenied
        return device

    def status_json(self, request):
        """Badges and versions of the listed devices (the change list refreshes them on events)."""
        try:
            pks = [pk for pk in (int(p) for p in request.GET.get("ids", "").split(",") if p) if valid_pk(pk)][:200]
        except ValueError:
            return JsonResponse(error_body("ids must be a comma-separated list of integers", "invalid_ids"), status=400)
        rows = self.get_queryset(request).filter(pk__in=pks)
        return JsonResponse(
            {
                "devices": {
                    d.pk: {
                        "sync_status": d.sync,
                        "status": d.status,
                        "desired_version": d.desired_version,
                        "reported_version": d.reported_version,
                        "last_seen": d.last_seen,
                    }
                    for d in rows
                }
            }
        )

    def rotate_token_view(self, request, pk):
        device = self._device(request, pk, write=True)
        if request.method != "POST":
            return self._confirm(
                request, device, "Rotate token",
                "A new provision token replaces the current one, which stops working at once. "
                "The device needs the new token to connect again.",
            )  # fmt: skip
        try:
            token = services.device_rotate_token(device=device)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:devices_device_change", device.pk)
        return self._token_page(request, device, token, "New provision token")

    def certificate_view(self, request, pk):
        """A new X.509 certificate with a key pair made now: both shown once (the key is not kept)."""
        device = self._device(request, pk, write=True)
        if request.method != "POST":
            return self._confirm(
                request, device, "Issue a certificate",
                "A new X.509 certificate and private key for the device, shown once (iotcloud keeps no copy of "
                "the key). The device's current certificates are revoked. To keep the key on the device, send "
                "its CSR to POST /customer/devices/<id>/certificates instead.",
            )  # fmt: skip
        try:
            issued, key_pem = certificate_issue(device=device)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:devices_device_change", device.pk)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "New certificate",
                   "device": device, "certificate": issued, "private_key": key_pem, "ca": ca_certificate_pem(),
                   "username": identity(device)}  # fmt: skip
        response = TemplateResponse(request, "admin/devices/device/certificate_once.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def revoke_certificates_view(self, request, pk):
        device = self._device(request, pk, write=True)
        if request.method != "POST":
            return self._confirm(
                request, device, "Revoke certificates",
                "Every certificate of the device is revoked: the broker refuses them at their next connect, "
                "once it has reloaded the revocation list (seconds, in the compose stack).",
            )  # fmt: skip
        count = certificates_revoke(device=device, reason=f"revoked in admin by {request.user}")
        self.message_user(request, f"{device.device_id}: {count} certificate(s) revoked.", messages.SUCCESS)
        return redirect("admin:devices_device_change", device.pk)

    def decommission_view(self, request, pk):
        device = self._device(request, pk, write=True)
        if request.method != "POST":
            return self._confirm(
                request, device, "Decommission",
                "The device's token stops working, its retained desired state is cleared from the broker "
                "and its queued or running job executions are canceled. This cannot be undone.",
            )  # fmt: skip
        services.device_decommission(device=device)
        self.message_user(request, f"{device.device_id} decommissioned.", messages.SUCCESS)
        return redirect("admin:devices_device_change", device.pk)

    def add_view(self, request, form_url="", extra_context=None):
        """Provisioning: the token exists only in this response."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        tenant = None if request.user.is_superuser else admin_tenant(request)
        form = ProvisionForm(request.POST or None, tenant=tenant)
        if request.method == "POST" and form.is_valid():
            try:
                device, token = services.device_provision(
                    tenant=form.cleaned_data["tenant"],
                    device_id=form.cleaned_data["device_id"],
                    tags=form.cleaned_data["tags"] or {},
                )
            except DomainError as exc:
                form.add_error(form.ERROR_FIELDS.get(exc.code), exc.message)
            else:
                return self._token_page(request, device, token, "Device provisioned")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Provision a device",
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/devices/device/provision.html", context)

    def bulk_view(self, request):
        """Provisioning from a file: the response to a successful upload is the tokens file itself, never stored."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        tenant = None if request.user.is_superuser else admin_tenant(request)
        form = BulkProvisionForm(request.POST or None, request.FILES or None, tenant=tenant)
        refused = None
        if request.method == "POST" and form.is_valid():
            tenant = form.cleaned_data["tenant"]
            try:
                created = services.devices_provision_bulk(tenant=tenant, rows=form.cleaned_data["file"])
            except bulk.RowsError as exc:  # the rows to fix, listed on the page
                refused = exc
            except DomainError as exc:  # too many rows, nothing to provision
                form.add_error("file", exc.message)
            else:
                filename = bulk.tokens_filename(tenant.id, timezone.now())
                self.message_user(
                    request,
                    f"{len(created)} device(s) provisioned in {tenant.id}; their provision tokens were downloaded "
                    f"as {filename}, this once (iotcloud keeps only their digests).",
                    messages.SUCCESS,
                )
                response = HttpResponse(
                    bulk.tokens_csv((device.device_id, token) for device, token in created),
                    content_type="text/csv; charset=utf-8",
                )
                response["Content-Disposition"] = f'attachment; filename="{filename}"'
                response["Cache-Control"] = "no-store"  # the tokens must not linger in caches
                return response
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Provision devices from a file",
            "form": form,
            "refused": refused,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/devices/device/bulk_provision.html", context)

    def _confirm(self, request, device, action, explanation):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action}: {device.device_id}",
            "device": device,
            "action": action,
            "explanation": explanation,
        }
        return TemplateResponse(request, "admin/devices/device/confirm_action.html", context)

    def _token_page(self, request, device, token, title):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "device": device,
            "token": token,
            "mqtt_username": f"{device.tenant_id}/{device.device_id}",
        }
        response = TemplateResponse(request, "admin/devices/device/token_once.html", context)
        response["Cache-Control"] = "no-store"  # the token must not linger in caches
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        device = self.get_queryset(request).filter(pk=object_id).first() if object_id.isdigit() else None
        if device is not None and self.has_view_permission(request, device):
            extra_context.update(self.twin_panel_context(request, device))
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(AuditEvent)
class AuditEventAdmin(TenantScopedAdmin):
    """The audit trail, read-only: who changed what, when, through which channel."""

    list_display = ["at", "tenant", "actor", "channel", "action", "device", "shadow", "job_id", "version"]
    list_filter = [
        "action",
        "channel",
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("device", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["actor", "device__device_id", "job_id"]
    list_select_related = ["tenant", "device"]
    ordering = ["-at"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False  # recorded by the services, with the change

    def has_change_permission(self, request, obj=None):
        return False


from devices import provisioning_admin  # noqa: E402, F401  (fleet provisioning by claim: registers its admins)
