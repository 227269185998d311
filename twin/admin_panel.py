"""The twin in the admin: the twin panel of a device's page, and the sync badge and filter of the device list.

The panel (templates/admin/twin/panel.html, iotcloud/static/iotcloud/twin_panel.js) shows
desired, reported and delta, the versions, and an editor for desired state. Saving goes
through twin.services.twin_update_desired, as from the API: the service's DomainError is
the answer (JSON for the panel, a message without JavaScript), nothing is checked twice.

devices.admin.DeviceAdmin mixes in TwinPanelAdmin, which serves the panel's pages under the
device admin's URLs (admin:devices_device_twin, admin:devices_device_desired).
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Case, CharField, Value, When
from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html

from devices.admin_scope import may_write
from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud.api.parsers import parse_json_bytes
from iotcloud.errors import DomainError, InvalidInput, PayloadTooLarge
from iotcloud.strict_json import JSONError
from twin.choices import SYNC_STATUSES, SyncStatus
from twin.selectors import sync_status_q, twin_document
from twin.services import DesiredMode, twin_update_desired

# --- the device list: sync badge and filter ----------------------------------------------------------


class SyncStatusFilter(admin.SimpleListFilter):
    title = "sync status"
    parameter_name = "sync"

    def lookups(self, request, model_admin):
        return [(status.value, status.label) for status in SYNC_STATUSES]

    def queryset(self, request, queryset):
        return queryset.filter(sync_status_q(self.value())) if self.value() in SYNC_STATUSES else queryset


def sync_annotation():
    """The sync status as one CASE in the SELECT: a list shows 100 badges without 100 queries."""
    return Case(
        When(sync_status_q(SyncStatus.STALE), then=Value(SyncStatus.STALE.value)),
        When(sync_status_q(SyncStatus.SYNCED), then=Value(SyncStatus.SYNCED.value)),
        default=Value(SyncStatus.PENDING.value),
        output_field=CharField(),
    )


def sync_badge(device: Device, sync: str):
    """The badge the device list's JS finds (data-badge) and refreshes."""
    return format_html(
        '<span class="iot-badge iot-badge-{}" data-badge data-pk="{}" data-tenant="{}" data-key="{}/{}">{}</span>',
        sync, device.pk, device.tenant_id, device.tenant_id, device.device_id, sync,
    )  # fmt: skip


# --- the panel on a device's page -----------------------------------------------------------------------


class DesiredForm(forms.Form):
    """The desired-state editor, when posted without JavaScript (the panel normally posts JSON)."""

    document = forms.CharField(widget=forms.Textarea)
    mode = forms.ChoiceField(choices=[(m.value, m.value) for m in DesiredMode], initial=DesiredMode.MERGE.value)
    expected_version = forms.IntegerField(required=False)


def twin_payload(device: Device) -> dict:
    """The twin as the operator API shows it, plus what the panel needs (pk, published version)."""
    document = twin_document(device)
    document["pk"] = device.pk
    document["desired_published_version"] = device.desired_published_version
    return document


class TwinPanelAdmin:
    """For the device ModelAdmin: the panel's pages (twin_panel_urls) and its context (twin_panel_context).

    The ModelAdmin provides `_device(request, pk, write=False)`: the device the user may see
    (Http404 otherwise), and may change with write=True (PermissionDenied otherwise).
    """

    def twin_panel_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/twin.json", view(self.twin_json), name="devices_device_twin"),
            path("<int:pk>/desired/", view(self.desired_view), name="devices_device_desired"),
        ]

    def twin_panel_context(self, request, device: Device) -> dict:
        return {
            "twin": twin_payload(device),
            "twin_urls": {
                "twin": reverse("admin:devices_device_twin", args=[device.pk]),
                "desired": reverse("admin:devices_device_desired", args=[device.pk]),
            },
            "twin_writable": may_write(request) and device.status == DeviceStatus.ACTIVE,
            "desired_pretty": json.dumps(device.desired_state, indent=2, sort_keys=True),
        }

    def twin_json(self, request, pk):
        return JsonResponse(twin_payload(self._device(request, pk)))

    def desired_view(self, request, pk):
        """Save desired state through twin_update_desired; answers JSON (the panel) or redirects (no JS)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        device = self._device(request, pk, write=True)
        wants_json = request.content_type == "application/json"
        try:
            document, mode, expected_version = (_desired_from_json if wants_json else _desired_from_form)(request)
            device = twin_update_desired(device=device, document=document, mode=mode, expected_version=expected_version)
        except DomainError as exc:
            if wants_json:
                return JsonResponse(exc.body(), status=exc.status)
            self.message_user(request, f"Desired state not saved: {exc.message}", messages.ERROR)
        else:
            if wants_json:
                return JsonResponse(twin_payload(Device.objects.get(pk=device.pk)))
            self.message_user(request, f"Desired state saved: version {device.desired_version}.", messages.SUCCESS)
        return redirect("admin:devices_device_change", device.pk)


def _desired_from_json(request):
    body = _strict_json(request.body, what="The request")
    if not isinstance(body, dict):
        raise DomainError('Send {"document": {...}, "mode": "merge"|"replace", "expected_version": n}')
    return body.get("document"), _mode(body.get("mode", "merge")), body.get("expected_version")


def _desired_from_form(request):
    form = DesiredForm(request.POST)
    if not form.is_valid():
        raise DomainError("; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    document = _strict_json(form.cleaned_data["document"].encode("utf-8", "surrogatepass"), what="Desired state")
    return document, _mode(form.cleaned_data["mode"]), form.cleaned_data["expected_version"]


def _strict_json(raw: bytes, *, what: str):
    """The project's strict JSON parsing (size, depth, NaN, surrogates) as a DomainError the panel shows."""
    try:
        return parse_json_bytes(raw)
    except JSONError as exc:
        error = PayloadTooLarge if exc.status == 413 else InvalidInput
        raise error(f"{what} is not valid JSON: {exc.reason}", code="invalid_json") from None


def _mode(mode) -> DesiredMode:
    # The document and expected_version are the service's to check; the mode picks which write it is.
    if not isinstance(mode, str) or mode not in {m.value for m in DesiredMode}:
        raise DomainError('mode must be "merge" or "replace"', code="invalid_mode")
    return DesiredMode(mode)
