"""Operator device API: list, provision, detail, tags, rotate token, decommission."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from devices import services
from devices.filters import AuditFilter, DeviceFilter
from devices.models import AuditEvent, Device
from devices.selectors import audit_for_operator, device_for_operator, devices_for_operator, tenant_for_write
from devices.serializers import (
    AuditEventSerializer,
    DeviceSerializer,
    DeviceUpdateSerializer,
    ProvisionedSerializer,
    ProvisionSerializer,
    TokenSerializer,
)
from iotcloud.api.schema import OPERATOR_ERRORS as ERRORS
from iotcloud.api.schema import TENANT_PARAM
from iotcloud.api.views import TenantScopedViewSet, cursor_pagination


@extend_schema_view(
    list=extend_schema(operation_id="devices_list", parameters=[TENANT_PARAM]),
    retrieve=extend_schema(
        operation_id="devices_get", parameters=[TENANT_PARAM], responses={200: DeviceSerializer, **ERRORS}
    ),
)
class DeviceViewSet(TenantScopedViewSet):
    model = Device
    serializer_class = DeviceSerializer
    filterset_class = DeviceFilter
    pagination_class = cursor_pagination("device_id")
    lookup_field = "device_id"

    def scoped(self, user, tenant_id):
        return devices_for_operator(user, tenant_id=tenant_id)

    def lookup(self, user, key, tenant_id):
        return device_for_operator(user, key, tenant_id=tenant_id)

    @extend_schema(
        operation_id="devices_provision",
        request=ProvisionSerializer,
        responses={201: ProvisionedSerializer, **ERRORS},
        description="Register a device. The response carries its provision token, shown this once.",
    )
    def create(self, request):
        body = ProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = tenant_for_write(request.user, body.validated_data.get("tenant"))
        device, token = services.device_provision(
            tenant=tenant, device_id=body.validated_data["device_id"], tags=body.validated_data.get("tags")
        )
        device.provision_token = token
        return Response(ProvisionedSerializer(device).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="devices_update",
        request=DeviceUpdateSerializer,
        responses={200: DeviceSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
    )
    def partial_update(self, request, device_id=None):
        body = DeviceUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = services.device_set_tags(device=self.get_object(), tags=body.validated_data["tags"])
        return Response(DeviceSerializer(device).data)

    @extend_schema(
        operation_id="devices_rotate_token",
        request=None,
        responses={200: TokenSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Issue a new provision token; the old one stops working at once.",
    )
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request, device_id=None):
        device = self.get_object()
        token = services.device_rotate_token(device=device)
        return Response({"device_id": device.device_id, "provision_token": token})

    @extend_schema(
        operation_id="devices_decommission",
        request=None,
        responses={200: DeviceSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Retire the device: its token stops working. Idempotent.",
    )
    @action(detail=True, methods=["post"])
    def decommission(self, request, device_id=None):
        device = services.device_decommission(device=self.get_object())
        return Response(DeviceSerializer(device).data)


@extend_schema_view(
    list=extend_schema(
        operation_id="audit_list",
        parameters=[TENANT_PARAM],
        description="The audit trail, newest first: desired-state writes (before and after), job actions, device "
        "lifecycle changes; by device, actor, action, job and time (since/until, ISO 8601).",
    ),
)
class AuditViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = AuditEventSerializer
    filterset_class = AuditFilter
    pagination_class = cursor_pagination("-at", page_size=100, max_page_size=1000)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        return audit_for_operator(self.request.user, tenant_id=self.request.query_params.get("tenant"))
