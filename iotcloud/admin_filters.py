"""Admin lists filter and sort only by what they declare; secrets never.

Django's ModelAdmin.lookup_allowed lets any lookup on a model's own fields
through, and the change list applies every query parameter no list filter
took as `queryset.filter(**rest)`: `?provision_token_hash__startswith=ab`
narrowed the device list, so anyone who may view the list could read a
token digest prefix by prefix. Here a change list accepts:

- the parameters of its declared list filters (field filters, and the
  project's own: sync status, tag, job, tenant for superusers), which the
  filters consume; anything left over makes Django's "invalid lookup" answer
  (a redirect to `?e=1`), never a filtered list. Left over but accepted: the
  date hierarchy's bounds and the `limit_choices_to` pairs of raw-id popups,
  as Django accepts them;
- search (`q`), ordering by the columns it shows as sortable (`o`), page
  (`p`), `_popup`, `_to_field` (Django checks that one), `all`, `_facets`.

Fields holding secrets (`SECRET_FIELDS`: token digests, broker secrets,
password hashes...) are never a lookup (a 400: Django's
DisallowedModelAdminLookup), an ordering or a search field, whatever an
admin declares. TenantScopedAdmin has this built in; the admin site wraps
every other ModelAdmin registered with it (auth, knox, axes) in it.
"""

from __future__ import annotations

from django.contrib.admin import widgets
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models.constants import LOOKUP_SEP

# Column names of secrets anywhere in the project and its apps: never filtered, searched or sorted on.
SECRET_FIELDS = frozenset(
    {
        "provision_token_hash",  # devices.Device: sha256 of the device token
        "broker_secret",  # devices.Device: the device's broker password, encrypted, on its way to the broker
        "digest",  # knox.AuthToken: hash of an operator bearer token
        "token_key",  # knox.AuthToken: the token's first characters
        "password",  # auth.User: password hash
        "session_key",  # sessions.Session
        "session_data",
    }
)


def is_secret(path: str) -> bool:
    """Whether a lookup, ordering or search path touches a secret field (at any step of it)."""
    return any(part in SECRET_FIELDS for part in path.lstrip("-^=@").split(LOOKUP_SEP))


def _expression_is_secret(expression) -> bool:
    nodes = expression.flatten() if hasattr(expression, "flatten") else [expression]
    return any(is_secret(getattr(node, "name", "") or "") for node in nodes)


class DeclaredFiltersChangeList:
    """Mixed into the admin's ChangeList class (see DeclaredFiltersOnly.get_changelist)."""

    def get_filters(self, request):
        filter_specs, has_filters, remaining, may_have_duplicates, has_active_filters = super().get_filters(request)
        undeclared = sorted(key for key in remaining if not self._tolerated(key))
        if undeclared:
            raise IncorrectLookupParameters(f"Not a filter of this list: {', '.join(undeclared)[:200]}")
        return filter_specs, has_filters, remaining, may_have_duplicates, has_active_filters

    def _tolerated(self, key: str) -> bool:
        """Parameters Django applies without a list filter that are still declared by the admin."""
        hierarchy = self.date_hierarchy
        if hierarchy and key in (f"{hierarchy}__gte", f"{hierarchy}__lt"):
            return True  # what the date hierarchy made of its own __year/__month/__day
        values = self.get_filters_params().get(key, [])
        for fk_lookup in self.model._meta.related_fkey_lookups:  # raw-id popups send limit_choices_to
            fk_lookup = fk_lookup() if callable(fk_lookup) else fk_lookup
            pairs = widgets.url_params_from_lookup_dict(fk_lookup).items()
            if values and all((key, value) in pairs for value in values):
                return True
        return False

    def get_ordering_field(self, field_name):
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None  # `o=<index>` of a column the list does not offer to sort by
        order_field = super().get_ordering_field(field_name)
        if order_field is None:
            return None
        if isinstance(order_field, str) and is_secret(order_field):
            return None
        if not isinstance(order_field, str) and _expression_is_secret(order_field):
            return None
        return order_field


_strict_changelists: dict[type, type] = {}


class DeclaredFiltersOnly:
    """ModelAdmin mixin: the change list takes its declared filters only, and no secret anywhere."""

    def lookup_allowed(self, lookup, value, request=None):
        if is_secret(lookup):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_changelist(self, request, **kwargs):
        base = super().get_changelist(request, **kwargs)
        if issubclass(base, DeclaredFiltersChangeList):
            return base
        strict = _strict_changelists.get(base)
        if strict is None:
            strict = type(base.__name__, (DeclaredFiltersChangeList, base), {"__module__": __name__})
            _strict_changelists[base] = strict
        return strict

    def get_search_fields(self, request):
        return [name for name in super().get_search_fields(request) if not is_secret(name)]

    def get_sortable_by(self, request):
        return [name for name in super().get_sortable_by(request) if not (isinstance(name, str) and is_secret(name))]


def declared_filters_only(admin_class: type) -> type:
    """admin_class itself when it has DeclaredFiltersOnly, else a subclass that has it."""
    if issubclass(admin_class, DeclaredFiltersOnly):
        return admin_class
    return type(admin_class.__name__, (DeclaredFiltersOnly, admin_class), {"__module__": admin_class.__module__})
