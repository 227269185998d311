"""Device twin API: the device is whoever its provision token says.

Beside the seed's two routes (GET /device/v1/shadow, POST /device/v1/shadow/reported), the device
protocol over HTTP, with the same documents and rules as over MQTT (twin.protocol, twin.engine):
the full shadow, partial reports (PATCH), AWS-style updates, and named shadows.
"""

import time

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.response import Response

from iotcloud.api.schema import error_responses
from iotcloud.api.serializers import ErrorSerializer
from iotcloud.api.views import DeviceAPIView
from iotcloud.errors import InvalidInput
from twin.engine import CLASSIC, Mode, ShadowChange, check_shadow_name, shadow_get, shadow_names
from twin.protocol import update_change
from twin.serializers import (
    DeviceShadowSerializer,
    ReportAcceptedSerializer,
    ReportedSerializer,
    ReportPatchSerializer,
    ShadowAcceptedSerializer,
    ShadowDeletedSerializer,
    ShadowDocumentSerializer,
    ShadowNamesSerializer,
    ShadowUpdateSerializer,
)
from twin.services import shadow_apply_one, shadow_delete, twin_record_reported

WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413)


class DeviceShadowView(DeviceAPIView):
    @extend_schema(operation_id="device_shadow_get", responses={200: DeviceShadowSerializer, 401: ErrorSerializer})
    def get(self, request):
        device = self.device
        return Response({"desired": device.desired_state, "version": device.desired_version})


class DeviceReportedView(DeviceAPIView):
    shadow_name = CLASSIC
    locking_methods = frozenset({"POST", "PATCH"})  # the token lookup's read is the report's

    @extend_schema(
        operation_id="device_shadow_report",
        request=ReportedSerializer,
        responses={200: ReportAcceptedSerializer, **error_responses(400, 401, 409, 413)},
        description="Report the device's state for desired `version` (0..desired_version; 409 otherwise).",
    )
    def post(self, request, shadow_name=CLASSIC):
        if shadow_name != CLASSIC:  # a named shadow's whole report: the seed's rules, by name
            return self._report(request, shadow_name, ReportedSerializer, Mode.REPLACE)
        body = ReportedSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = twin_record_reported(
            device=self.device, reported=body.validated_data["reported"], version=body.validated_data["version"],
            locked=self.device_locked,
        )  # fmt: skip
        return Response({"accepted": True, "version": outcome.version})

    @extend_schema(
        operation_id="device_shadow_report_patch",
        request=ReportPatchSerializer,
        responses={200: ShadowAcceptedSerializer, **WRITE_ERRORS},
        description="A partial report: merge into reported (null deletes a key); the other keys stay.",
    )
    def patch(self, request, shadow_name=CLASSIC):
        return self._report(request, shadow_name, ReportPatchSerializer, Mode.MERGE)

    def _report(self, request, shadow_name, serializer, mode):
        check_shadow_name(shadow_name)
        body = serializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = self.device
        result = shadow_apply_one(
            ShadowChange(device.tenant_id, device.device_id, shadow_name, reported=body.validated_data["reported"],
                         reported_mode=mode, report_version=body.validated_data.get("version"), by_device=True),
            locked=self.device_locked,
        )  # fmt: skip
        return Response(_stamped(result.accepted))


class DeviceShadowDocumentView(DeviceAPIView):
    @extend_schema(
        operation_id="device_shadow_document",
        responses={200: ShadowDocumentSerializer, **error_responses(400, 401, 404)},
        description="The whole shadow: desired, reported, delta, per-field metadata, versions.",
    )
    def get(self, request, shadow_name=CLASSIC):
        shadow = shadow_get(device=self.device, shadow_name=shadow_name)
        return Response(_stamped(shadow.full_document(versions=True)))

    @extend_schema(
        operation_id="device_shadow_delete",
        responses={200: ShadowDeletedSerializer, **error_responses(400, 401, 404, 409)},
        description="Delete the shadow (a named one disappears; the classic one empties). Its version goes on.",
    )
    def delete(self, request, shadow_name=CLASSIC):
        check_shadow_name(shadow_name)
        return Response(_stamped(shadow_delete(device=self.device, shadow_name=shadow_name, by_device=True).accepted))


class DeviceShadowUpdateView(DeviceAPIView):
    @extend_schema(
        operation_id="device_shadow_update",
        request=ShadowUpdateSerializer,
        responses={200: ShadowAcceptedSerializer, **WRITE_ERRORS},
        description="AWS IoT's shadow update: merge desired (if the tenant lets devices) and/or reported.",
    )
    def post(self, request, shadow_name=CLASSIC):
        if not isinstance(request.data, dict):
            raise InvalidInput("The body must be a JSON object", code="invalid")
        change = update_change(self.device, shadow_name, request.data)
        result = shadow_apply_one(change)
        return Response(_stamped(result.accepted, change.client_token))


class DeviceShadowNamesView(DeviceAPIView):
    @extend_schema(operation_id="device_shadow_names", responses={200: ShadowNamesSerializer, 401: ErrorSerializer})
    def get(self, request):
        return Response(_stamped({"results": shadow_names(self.device)}))


# The same views on the named-shadow routes, under operation ids of their own.
@extend_schema_view(
    get=extend_schema(operation_id="device_named_shadow_document"),
    delete=extend_schema(operation_id="device_named_shadow_delete"),
)
class DeviceNamedShadowDocumentView(DeviceShadowDocumentView):
    pass


@extend_schema_view(post=extend_schema(operation_id="device_named_shadow_update"))
class DeviceNamedShadowUpdateView(DeviceShadowUpdateView):
    pass


@extend_schema_view(
    post=extend_schema(operation_id="device_named_shadow_report", description="A named shadow's whole report."),
    patch=extend_schema(operation_id="device_named_shadow_report_patch"),
)
class DeviceNamedReportedView(DeviceReportedView):
    pass


def _stamped(document: dict, client_token: str | None = None) -> dict:
    document = {**document, "timestamp": int(time.time())}
    if client_token is not None:
        document["clientToken"] = client_token
    return document
