"""Device twin API: the device is whoever its provision token says."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from iotcloud.api.schema import error_responses
from iotcloud.api.serializers import ErrorSerializer
from iotcloud.api.views import DeviceAPIView
from twin.serializers import DeviceShadowSerializer, ReportAcceptedSerializer, ReportedSerializer
from twin.services import twin_record_reported


class DeviceShadowView(DeviceAPIView):
    @extend_schema(operation_id="device_shadow_get", responses={200: DeviceShadowSerializer, 401: ErrorSerializer})
    def get(self, request):
        device = self.device
        return Response({"desired": device.desired_state, "version": device.desired_version})


class DeviceReportedView(DeviceAPIView):
    @extend_schema(
        operation_id="device_shadow_report",
        request=ReportedSerializer,
        responses={200: ReportAcceptedSerializer, **error_responses(400, 401, 409, 413)},
        description="Report the device's state for desired `version` (0..desired_version; 409 otherwise).",
    )
    def post(self, request):
        body = ReportedSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = twin_record_reported(
            device=self.device, reported=body.validated_data["reported"], version=body.validated_data["version"]
        )
        return Response({"accepted": True, "version": outcome.version})
