"""The twin in the admin: the twin panel of a device's page, and the sync badge and filter of the device list.

The panel (templates/admin/twin/panel.html, iotcloud/static/iotcloud/twin_panel.js) shows one
shadow of the device, the classic one or a named one picked in its shadow picker: desired,
reported and delta, the versions (desired, reported, the AWS-style document version), when each
field was last written (the shadow's metadata), and an editor for desired state. It creates a
named shadow by name and deletes one (after a confirmation). Every write goes through the twin
services, as from the API (twin_update_desired for the classic shadow, shadow_write_desired and
shadow_delete for named ones): the service's DomainError is the answer (JSON for the panel, a
message without JavaScript), nothing is checked twice.

The selected shadow is the `?shadow=<name>` query parameter (absent or empty: the classic shadow)
of the device's change page and of the panel's endpoints, so a selection survives a reload.
devices.admin.DeviceAdmin mixes in TwinPanelAdmin, which serves the panel's pages under the
device admin's URLs (admin:devices_device_twin, admin:devices_device_desired,
admin:devices_device_shadow_create, admin:devices_device_shadow_delete).
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Case, CharField, Value, When
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from devices.admin_scope import may_write
from devices.choices import DeviceStatus
from devices.models import Device
from iotcloud.api.parsers import parse_json_bytes
from iotcloud.errors import DomainError, InvalidInput, PayloadTooLarge
from iotcloud.strict_json import JSONError
from twin.choices import SYNC_STATUSES, SyncStatus
from twin.engine import CLASSIC, shadow_get, shadow_names
from twin.selectors import sync_status_q, twin_document
from twin.services import DesiredMode, shadow_create, shadow_delete, shadow_write_desired, twin_update_desired

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

SHADOW_PARAM = "shadow"  # the selected shadow, in the change page's and the endpoints' query string


class DesiredForm(forms.Form):
    """The desired-state editor, when posted without JavaScript (the panel normally posts JSON)."""

    document = forms.CharField(widget=forms.Textarea)
    mode = forms.ChoiceField(choices=[(m.value, m.value) for m in DesiredMode], initial=DesiredMode.MERGE.value)
    expected_version = forms.IntegerField(required=False)


def twin_payload(device: Device, shadow_name: str = CLASSIC) -> dict:
    """One shadow as the operator API shows it (twin.selectors.twin_document), plus what the panel
    needs: pk, `name` ("" for the classic shadow), the names of the device's named shadows (the
    picker), and for the classic shadow the version published to the broker.

    Raises the service's DomainError for a name that is invalid or names no shadow of the device."""
    if shadow_name == CLASSIC:
        document = twin_document(device)
        document["name"] = CLASSIC
        document["desired_published_version"] = device.desired_published_version
    else:
        document = twin_document(device, shadow_get(device=device, shadow_name=shadow_name))
        document["shadows"] = shadow_names(device)
    document["pk"] = device.pk
    return document


def shadow_query(shadow_name: str) -> str:
    """The query string that selects a shadow ("" for the classic one)."""
    return "?" + urlencode({SHADOW_PARAM: shadow_name}) if shadow_name != CLASSIC else ""


def _selected(request) -> str:
    return request.GET.get(SHADOW_PARAM, CLASSIC)


def _change_page(device: Device, shadow_name: str = CLASSIC) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("admin:devices_device_change", args=[device.pk]) + shadow_query(shadow_name))


def _named(shadow_name) -> str:
    """A named shadow's name. "" is the classic shadow, which always exists and is not deleted here;
    whether a name is valid is the service's to say (iotcloud.rules.SHADOW_NAME)."""
    if shadow_name == CLASSIC:
        raise InvalidInput("A named shadow needs a name", code="invalid_shadow_name")
    return shadow_name


def _refetched(device: Device) -> Device:
    return Device.objects.get(pk=device.pk)


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
            path("<int:pk>/shadows/", view(self.shadow_create_view), name="devices_device_shadow_create"),
            path("<int:pk>/shadows/delete/", view(self.shadow_delete_view), name="devices_device_shadow_delete"),
        ]

    def twin_panel_context(self, request, device: Device) -> dict:
        shadow_name = _selected(request)
        try:
            twin = twin_payload(device, shadow_name)
        except DomainError as exc:  # an invalid name, or a shadow deleted since: the classic one instead
            self.message_user(request, f"Shadow not shown: {exc.message}", messages.ERROR)
            shadow_name, twin = CLASSIC, twin_payload(device)
        return {
            "twin": twin,
            "twin_urls": {
                "twin": reverse("admin:devices_device_twin", args=[device.pk]),
                "desired": reverse("admin:devices_device_desired", args=[device.pk]),
                "create": reverse("admin:devices_device_shadow_create", args=[device.pk]),
                "delete": reverse("admin:devices_device_shadow_delete", args=[device.pk]),
                "change": reverse("admin:devices_device_change", args=[device.pk]),
            },
            "shadow_query": shadow_query(shadow_name),
            "twin_writable": may_write(request) and device.status == DeviceStatus.ACTIVE,
            "desired_pretty": json.dumps(twin["desired"], indent=2, sort_keys=True),
        }

    def twin_json(self, request, pk):
        device = self._device(request, pk)
        try:
            return JsonResponse(twin_payload(device, _selected(request)))
        except DomainError as exc:
            return JsonResponse(exc.body(), status=exc.status)

    def desired_view(self, request, pk):
        """Save desired state of the selected shadow through the twin services (twin_update_desired for
        the classic one, shadow_write_desired for a named one); answers JSON (the panel) or redirects (no JS)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        device = self._device(request, pk, write=True)
        shadow_name = _selected(request)
        wants_json = request.content_type == "application/json"
        try:
            document, mode, expected_version = (_desired_from_json if wants_json else _desired_from_form)(request)
            if shadow_name == CLASSIC:
                version = twin_update_desired(
                    device=device, document=document, mode=mode, expected_version=expected_version
                ).desired_version
            else:
                version = shadow_write_desired(
                    device=device, shadow_name=shadow_name, document=document, mode=mode,
                    expected_version=expected_version,
                ).desired_version  # fmt: skip
        except DomainError as exc:
            if wants_json:
                return JsonResponse(exc.body(), status=exc.status)
            self.message_user(request, f"Desired state not saved: {exc.message}", messages.ERROR)
        else:
            if wants_json:
                return JsonResponse(twin_payload(_refetched(device), shadow_name))
            self.message_user(request, f"Desired state saved: version {version}.", messages.SUCCESS)
        return _change_page(device, shadow_name)

    def shadow_create_view(self, request, pk):
        """Create a named shadow: its first desired write (an empty document), as the services create one."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        device = self._device(request, pk, write=True)
        wants_json = request.content_type == "application/json"
        try:
            shadow_name = _named(_name_from_json(request) if wants_json else request.POST.get("name", "").strip())
            _create_named_shadow(device, shadow_name)
        except DomainError as exc:
            if wants_json:
                return JsonResponse(exc.body(), status=exc.status)
            self.message_user(request, f"Shadow not created: {exc.message}", messages.ERROR)
            return _change_page(device)
        if wants_json:
            return JsonResponse(twin_payload(_refetched(device), shadow_name), status=201)
        self.message_user(request, f"Named shadow {shadow_name!r} created.", messages.SUCCESS)
        return _change_page(device, shadow_name)

    def shadow_delete_view(self, request, pk):
        """Delete the selected named shadow through shadow_delete: a confirmation page first (GET), or
        the panel's JSON POST (it asked for the confirmation itself)."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        device = self._device(request, pk, write=True)
        shadow_name = _selected(request)
        wants_json = request.content_type == "application/json"
        try:
            if request.method == "GET":
                shadow_get(device=device, shadow_name=_named(shadow_name))
                return self._confirm_shadow_delete(request, device, shadow_name)
            result = shadow_delete(device=device, shadow_name=_named(shadow_name))
        except DomainError as exc:
            if wants_json:
                return JsonResponse(exc.body(), status=exc.status)
            self.message_user(request, f"Shadow not deleted: {exc.message}", messages.ERROR)
            return _change_page(device, shadow_name)
        if wants_json:
            return JsonResponse({"deleted": shadow_name, "version": result.version})
        self.message_user(request, f"Named shadow {shadow_name!r} deleted.", messages.SUCCESS)
        return _change_page(device)

    def _confirm_shadow_delete(self, request, device: Device, shadow_name: str):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Delete shadow {shadow_name!r} of {device.device_id}",
            "device": device,
            "shadow_name": shadow_name,
            "back_url": reverse("admin:devices_device_change", args=[device.pk]) + shadow_query(shadow_name),
        }
        return TemplateResponse(request, "admin/twin/delete_shadow.html", context)


def _create_named_shadow(device: Device, shadow_name: str) -> None:
    """Create never writes into a shadow someone is using: the service refuses an existing one (409)."""
    shadow_create(device=device, shadow_name=shadow_name)


def _name_from_json(request):
    body = _strict_json(request.body, what="The request")
    if not isinstance(body, dict):
        raise DomainError('Send {"name": "<shadow name>"}')
    return body.get("name", CLASSIC)


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
