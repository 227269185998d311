"""Tenant scoping for every admin page.

A staff operator sees and changes only their own tenant's objects: lists,
change pages, actions (they run on the scoped queryset), autocomplete (it
searches the related admin's scoped queryset), list filters and foreign-key
choices; a list filters only by its declared filters, never by a secret
(iotcloud.admin_filters). What they may do follows their membership role
(admin, operator, viewer), not Django's per-model permissions, so the roles
mean the same in admin and in the API. Superusers see everything.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet

from devices.choices import WRITE_ROLES, Role
from devices.models import Device, Tenant
from devices.selectors import operator_membership
from iotcloud.admin_filters import DeclaredFiltersOnly


def admin_tenant(request) -> Tenant | None:
    """The tenant a staff operator works in (None for a superuser without a membership)."""
    membership = operator_membership(request.user)
    return membership.tenant if membership else None


def admin_role(request) -> str | None:
    if request.user.is_superuser:
        return Role.ADMIN
    membership = operator_membership(request.user)
    return membership.role if membership else None


def may_write(request) -> bool:
    return request.user.is_superuser or admin_role(request) in WRITE_ROLES


class TenantScopedAdmin(DeclaredFiltersOnly, admin.ModelAdmin):
    """ModelAdmin whose rows belong to a tenant through `tenant_path`.

    Its change list accepts only its declared filters, and never a secret field (iotcloud.admin_filters).
    """

    tenant_path = "tenant"
    # Which roles may add / change; deleting is for superusers unless a subclass says otherwise.
    add_roles: frozenset[str] = WRITE_ROLES
    change_roles: frozenset[str] = WRITE_ROLES

    def scope(self, request, queryset: QuerySet) -> QuerySet:
        if request.user.is_superuser:
            return queryset
        tenant = admin_tenant(request)
        return queryset.filter(**{self.tenant_path: tenant}) if tenant else queryset.none()

    def get_queryset(self, request):
        return self.scope(request, super().get_queryset(request))

    def _member(self, request) -> bool:
        return request.user.is_active and request.user.is_staff and admin_role(request) is not None

    def _owns(self, request, obj) -> bool:
        if obj is None or request.user.is_superuser:
            return True
        tenant = admin_tenant(request)
        return tenant is not None and self._tenant_id_of(obj) == tenant.id

    def _tenant_id_of(self, obj) -> str:
        target = obj
        for part in self.tenant_path.split("__")[:-1]:
            target = getattr(target, part)
        return getattr(target, self.tenant_path.split("__")[-1] + "_id")

    def has_module_permission(self, request):
        return request.user.is_superuser or self._member(request)

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser or (self._member(request) and self._owns(request, obj))

    def has_change_permission(self, request, obj=None):
        if request.user.is_superuser:
            return True
        return self._member(request) and admin_role(request) in self.change_roles and self._owns(request, obj)

    def has_add_permission(self, request):
        return request.user.is_superuser or (self._member(request) and admin_role(request) in self.add_roles)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        # Choices (and what a forged POST may name) stay inside the tenant.
        if not request.user.is_superuser:
            tenant = admin_tenant(request)
            if db_field.related_model is Tenant:
                kwargs["queryset"] = Tenant.objects.filter(pk=tenant.pk if tenant else None)
            elif db_field.related_model is Device:
                kwargs["queryset"] = Device.objects.filter(tenant=tenant)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_list_filter(self, request):
        filters = list(super().get_list_filter(request))
        if not request.user.is_superuser:  # one tenant: a tenant filter says nothing and would list others
            filters = [f for f in filters if f != "tenant" and not (isinstance(f, tuple) and f[0] == "tenant")]
        return filters

    def get_list_display(self, request):
        fields = list(super().get_list_display(request))
        return fields if request.user.is_superuser else [f for f in fields if f != "tenant"]
