"""Shared machinery of the operator API viewsets."""

from rest_framework import mixins, viewsets
from rest_framework.pagination import CursorPagination


def cursor_pagination(ordering: str, *, page_size: int = 100, max_page_size: int = 1000) -> type[CursorPagination]:
    """Keyset pagination: page N of a million rows costs the same as page 1 (no COUNT, no OFFSET)."""
    return type(
        "CursorPagination",
        (CursorPagination,),
        {"ordering": ordering, "page_size": page_size, "page_size_query_param": "page_size",
         "max_page_size": max_page_size},
    )  # fmt: skip


class TenantScopedViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """List and retrieve objects of the caller's tenant; superusers see all (or ?tenant=<id>).

    Subclasses name the model and two selectors: `scoped(user, tenant_id)` for
    the list and `lookup(user, key, tenant_id)` for one object (NotFound for
    another tenant's object).
    """

    lookup_value_regex = "[^/]+"
    model = None

    def scoped(self, user, tenant_id):
        raise NotImplementedError

    def lookup(self, user, key, tenant_id):
        raise NotImplementedError

    @property
    def tenant_param(self) -> str | None:
        return self.request.query_params.get("tenant")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return self.model.objects.none()
        return self.scoped(self.request.user, self.tenant_param)

    def get_object(self):
        return self.lookup(self.request.user, self.kwargs[self.lookup_field], self.tenant_param)
