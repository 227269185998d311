"""Admin of fleet provisioning by claim (devices.claims): templates with their claims, registrations read-only.

A template's page lists its claims; "New claim" makes one and shows its claim token once (as a device's
provision token is shown); a claim is revoked from there. Every write goes through devices.claims.
Tenant scoping and roles are devices.admin_scope's.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from devices import claims
from devices.admin_scope import TenantScopedAdmin, admin_tenant
from devices.certificates import ca_certificate_pem
from devices.choices import CredentialKind
from devices.models import ProvisioningClaim, ProvisioningTemplate, Registration, Tenant
from devices.provisioning_serializers import ClaimSerializer
from iotcloud.errors import DomainError, InvalidInput
from iotcloud.form_fields import StrictJSONField
from iotcloud.rules import claim_certificate_login, valid_pk

# Which form field a service error belongs under; others are shown above the form.
ERROR_FIELDS = {
    "invalid_template_name": "name", "template_exists": "name", "invalid_device_id_prefix": "device_id_prefix",
    "invalid_tags": "tags", "invalid_serials": "allowed_serials", "too_many_serials": "allowed_serials",
    "invalid_description": "description", "invalid_credential": "credential", "invalid_hook": "hook_url",
}  # fmt: skip


class ProvisioningTemplateForm(forms.ModelForm):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all())
    tags = StrictJSONField(
        required=False, initial=dict, help_text='Tags every registered device gets, e.g. {"site": "paris"}.'
    )
    desired = StrictJSONField(required=False, initial=dict, help_text="The classic shadow's initial desired state.")
    shadows = StrictJSONField(
        required=False, initial=dict, help_text='Named shadows\' initial desired: {"config": {...}}.'
    )
    allowed_serials = StrictJSONField(
        required=False, help_text='Only these serials may register, e.g. ["SN-1", "SN-2"]; empty: any.'
    )
    hook_url = forms.CharField(
        required=False, max_length=2000, label="Pre-provisioning hook URL",
        help_text='Your service, asked before each registration (POST, signed): it answers {"allow": true} or '
        '{"allow": false, "reason": "..."}. Empty: no check.',
    )  # fmt: skip
    hook_secret = forms.CharField(
        required=False, max_length=256, strip=False, widget=forms.PasswordInput(render_value=False),
        label="Hook secret", help_text="16+ characters; signs the calls (X-Iotcloud-Signature). Empty: keep the "
        "current one.",
    )  # fmt: skip

    class Meta:
        model = ProvisioningTemplate
        fields = ["tenant", "name", "description", "device_id_prefix", "tags", "desired", "shadows", "credential",
                  "allowed_serials", "hook_url", "hook_secret", "enabled"]  # fmt: skip

    def _post_clean(self):  # the service checks everything (and saves); no model validation here
        pass

    def clean(self):
        data = super().clean()
        fields = {name: data.get(name) for name in claims.TEMPLATE_FIELDS}
        for name in ("tags", "desired", "shadows"):
            fields[name] = fields[name] if fields[name] is not None else {}
        fields["description"] = fields["description"] or ""
        fields["device_id_prefix"] = fields["device_id_prefix"] or ""
        fields["hook_url"] = fields["hook_url"] or ""
        secret = data.get("hook_secret") or None
        try:
            data.update(claims.template_check(**fields, hook_secret=secret, has_secret=bool(self.instance.hook_secret)))
            data["hook_secret"] = secret  # the service seals it when it saves
        except DomainError as exc:
            field = ERROR_FIELDS.get(exc.code)
            self.add_error(field if field in self.fields else None, exc.message)
        return data


class ClaimForm(forms.Form):
    label = forms.CharField(required=False, max_length=200, help_text="e.g. the factory or the batch.")
    max_registrations = forms.IntegerField(required=False, min_value=1, help_text="Empty: no limit.")
    expires_at = forms.DateTimeField(required=False, help_text="Empty: never. e.g. 2027-06-30 18:00")
    credential = forms.ChoiceField(
        choices=CredentialKind.choices, initial=CredentialKind.TOKEN, required=False,
        help_text="token: a claim token; certificate: a claim certificate (MQTT on Mosquitto's certificate "
        "listener, or HTTP through the TLS proxy).",
    )  # fmt: skip
    csr = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 6, "cols": 70}), label="CSR",
        help_text="A certificate claim: the PEM CSR (CN empty) of the key your factory keeps. Empty: a key pair is "
        "made now and shown once.",
    )  # fmt: skip


class ClaimInline(admin.TabularInline):
    model = ProvisioningClaim
    fields = ["id", "label", "credential", "status", "registrations", "max_registrations", "expires_at", "revoked_at",
              "created_at", "revoke"]  # fmt: skip
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False  # made with "New claim": the token is shown once

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="status")
    def status(self, claim):
        return ClaimSerializer().get_status(claim)

    @admin.display(description="")
    def revoke(self, claim):
        if claim.revoked_at is not None:
            return ""
        url = reverse("admin:devices_provisioningtemplate_revoke_claim", args=[claim.template_id, claim.pk])
        return format_html('<a class="button" href="{}">Revoke</a>', url)


@admin.register(ProvisioningTemplate)
class ProvisioningTemplateAdmin(TenantScopedAdmin):
    form = ProvisioningTemplateForm
    list_display = ["name", "tenant", "device_id_prefix", "credential", "enabled", "updated_at", "new_claim"]
    list_filter = ["enabled", ("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name"]
    inlines = [ClaimInline]

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        tenant = None if request.user.is_superuser else admin_tenant(request)
        if tenant is not None and "tenant" in form.base_fields:
            form.base_fields["tenant"].queryset = Tenant.objects.filter(pk=tenant.pk)
            form.base_fields["tenant"].initial = tenant.pk
        return form

    def get_readonly_fields(self, request, obj=None):
        return ["tenant"] if obj is not None else []

    def get_fields(self, request, obj=None):
        fields = list(ProvisioningTemplateForm.Meta.fields)
        return fields if obj is None else [f for f in fields if f != "tenant"]

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in claims.TEMPLATE_FIELDS}
        fields["hook_secret"] = form.cleaned_data.get("hook_secret")
        enabled = form.cleaned_data["enabled"]
        if change:
            template = ProvisioningTemplate.objects.get(pk=obj.pk)
            saved = claims.template_update(template=template, enabled=enabled, **fields)
        else:
            saved = claims.template_create(tenant=form.cleaned_data["tenant"], enabled=enabled, **fields)
        obj.pk, obj.tenant_id = saved.pk, saved.tenant_id

    def save_related(self, request, form, formsets, change):
        pass  # claims are made and revoked by their own pages

    def delete_model(self, request, obj):
        claims.template_delete(template=obj)

    def delete_queryset(self, request, queryset):
        for template in queryset:
            claims.template_delete(template=template)

    @admin.display(description="")
    def new_claim(self, obj):
        url = reverse("admin:devices_provisioningtemplate_new_claim", args=[obj.pk])
        return format_html('<a class="button" href="{}">New claim</a>', url)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/new-claim/", view(self.new_claim_view), name="devices_provisioningtemplate_new_claim"),
            path(
                "<int:pk>/claims/<int:claim_pk>/revoke/",
                view(self.revoke_claim_view),
                name="devices_provisioningtemplate_revoke_claim",
            ),
            *super().get_urls(),
        ]

    def _template(self, request, pk: int) -> ProvisioningTemplate:
        template = self.get_queryset(request).filter(pk=pk).first() if valid_pk(pk) else None
        if template is None or not self.has_view_permission(request, template):
            raise Http404("No such template")  # another tenant's template does not exist for you
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        return template

    def _context(self, request, template, title, **extra):
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title, "template": template,
                **extra}  # fmt: skip

    def new_claim_view(self, request, pk):
        """A claim on the template: its token exists only in this response."""
        template = self._template(request, pk)
        form = ClaimForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            fields = dict(form.cleaned_data)
            credential, csr = fields.pop("credential") or CredentialKind.TOKEN, fields.pop("csr") or None
            token = issued = key_pem = None
            try:
                if credential == CredentialKind.CERTIFICATE:
                    claim, issued, key_pem = claims.claim_create_with_certificate(template=template, csr=csr, **fields)
                elif csr:
                    raise InvalidInput("A CSR goes with a certificate claim", code="invalid_csr")
                else:
                    claim, token = claims.claim_create(template=template, **fields)
            except DomainError as exc:
                form.add_error("csr" if exc.code.startswith("invalid_csr") or exc.code.startswith("csr") else None,
                               exc.message)  # fmt: skip
            else:
                context = self._context(request, template, "Claim created", claim=claim, token=token,
                                        certificate=issued, private_key_pem=key_pem,
                                        ca_certificate_pem=ca_certificate_pem() if issued else None,
                                        certificate_username=claim_certificate_login(claim.pk),
                                        mqtt_username=f"_claim/{template.tenant_id}")  # fmt: skip
                response = TemplateResponse(request, "admin/devices/provisioningtemplate/claim_once.html", context)
                response["Cache-Control"] = "no-store"  # the token must not linger in caches
                return response
        context = self._context(request, template, f"New claim on {template.name}", form=form)
        return TemplateResponse(request, "admin/devices/provisioningtemplate/new_claim.html", context)

    def revoke_claim_view(self, request, pk, claim_pk):
        template = self._template(request, pk)
        claim = template.claims.filter(pk=claim_pk).first() if valid_pk(claim_pk) else None
        if claim is None:
            raise Http404("No such claim")
        if request.method == "POST":
            claims.claim_revoke(claim=claim)
            messages.success(request, f"Claim {claim.pk} revoked: it registers nobody from now on.")
            return redirect("admin:devices_provisioningtemplate_change", template.pk)
        context = self._context(request, template, f"Revoke claim {claim.pk}", claim=claim)
        return TemplateResponse(request, "admin/devices/provisioningtemplate/revoke_claim.html", context)


@admin.register(Registration)
class RegistrationAdmin(TenantScopedAdmin):
    """Devices registered by claim, read-only (recorded by devices.claims.claim_register)."""

    list_display = ["at", "tenant", "serial", "device", "template_name", "claim", "channel"]
    list_filter = ["channel", ("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["serial", "device__device_id"]
    list_select_related = ["tenant", "device"]
    ordering = ["-at"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Registration._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
