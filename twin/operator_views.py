"""Operator twin API: read the twin, write desired state, read the delta; the same for named shadows."""

import time

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.selectors import device_for_operator
from iotcloud.api.schema import OPERATOR_ERRORS as ERRORS
from iotcloud.api.schema import TENANT_PARAM
from iotcloud.errors import InvalidInput
from twin.engine import CLASSIC, check_shadow_name, shadow_get
from twin.selectors import named_shadow_summaries, twin_delta, twin_document
from twin.serializers import (
    DeltaSerializer,
    DesiredWriteSerializer,
    NamedShadowSummarySerializer,
    ShadowDeletedSerializer,
    TwinDocumentSerializer,
)
from twin.services import DesiredMode, shadow_delete, shadow_write_desired, twin_update_desired


def _device(request, device_id, **kwargs):
    return device_for_operator(request.user, device_id, tenant_id=request.query_params.get("tenant"), **kwargs)


def _twin_response(device, shadow=None):
    # The ETag is the desired version, usable as If-Match for the next write.
    version = shadow.desired_version if shadow is not None else device.desired_version
    return Response(TwinDocumentSerializer(twin_document(device, shadow)).data, headers={"ETag": f'"{version}"'})


class TwinView(APIView):
    @extend_schema(
        operation_id="twin_get", responses={200: TwinDocumentSerializer, **ERRORS}, parameters=[TENANT_PARAM]
    )
    def get(self, request, device_id):
        return _twin_response(_device(request, device_id))


class DesiredView(APIView):
    @extend_schema(
        operation_id="twin_desired_merge",
        request=DesiredWriteSerializer,
        responses={200: TwinDocumentSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Merge a JSON merge patch (RFC 7386) into desired; desired_version advances by one.",
    )
    def patch(self, request, device_id):
        return self._write(request, device_id, DesiredMode.MERGE)

    @extend_schema(
        operation_id="twin_desired_replace",
        request=DesiredWriteSerializer,
        responses={200: TwinDocumentSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Replace desired; desired_version advances by one.",
    )
    def put(self, request, device_id):
        return self._write(request, device_id, DesiredMode.REPLACE)

    def _write(self, request, device_id, mode):
        body = DesiredWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        expected_version = _expected_version(request, body.validated_data.get("expected_version"))
        # One transaction: the device is found and locked in one read, which the engine then writes from.
        with transaction.atomic():
            device = _device(request, device_id, for_update=True)
            device = twin_update_desired(device=device, document=body.validated_data["desired"], mode=mode,
                                         expected_version=expected_version, locked=True)  # fmt: skip
            return _twin_response(device)


class DeltaView(APIView):
    @extend_schema(operation_id="twin_delta", responses={200: DeltaSerializer, **ERRORS}, parameters=[TENANT_PARAM])
    def get(self, request, device_id):
        return Response(DeltaSerializer(twin_delta(_device(request, device_id))).data)


def _expected_version(request, from_body):
    header = request.headers.get("If-Match")
    if header is None:
        return from_body
    try:
        from_header = int(header.strip().removeprefix("W/").strip('"'))
    except ValueError:
        raise InvalidInput(
            f'If-Match must be a version number like "3", got {header!r}', code="invalid_version"
        ) from None
    if from_body is not None and from_body != from_header:
        raise InvalidInput("If-Match and expected_version disagree", code="invalid_version")
    return from_header


class ShadowsView(APIView):
    @extend_schema(
        operation_id="twin_shadows",
        responses={200: NamedShadowSummarySerializer(many=True), **ERRORS},
        parameters=[TENANT_PARAM],
        description="The device's named shadows (the classic one is /twin).",
    )
    def get(self, request, device_id):
        return Response(
            NamedShadowSummarySerializer(named_shadow_summaries(_device(request, device_id)), many=True).data
        )


class NamedShadowView(APIView):
    @extend_schema(
        operation_id="twin_shadow_get", responses={200: TwinDocumentSerializer, **ERRORS}, parameters=[TENANT_PARAM]
    )
    def get(self, request, device_id, shadow_name):
        device = _device(request, device_id)
        return _twin_response(device, shadow_get(device=device, shadow_name=_named(shadow_name)))

    @extend_schema(
        operation_id="twin_shadow_delete",
        responses={200: ShadowDeletedSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Delete a named shadow; written again, it goes on from its last version (as AWS IoT).",
    )
    def delete(self, request, device_id, shadow_name):
        result = shadow_delete(device=_device(request, device_id), shadow_name=_named(shadow_name))
        return Response({"version": result.version, "timestamp": int(time.time())})


class NamedDesiredView(APIView):
    @extend_schema(
        operation_id="twin_shadow_desired_merge",
        request=DesiredWriteSerializer,
        responses={200: TwinDocumentSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Merge into a named shadow's desired (created by its first write).",
    )
    def patch(self, request, device_id, shadow_name):
        return self._write(request, device_id, shadow_name, DesiredMode.MERGE)

    @extend_schema(
        operation_id="twin_shadow_desired_replace",
        request=DesiredWriteSerializer,
        responses={200: TwinDocumentSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
    )
    def put(self, request, device_id, shadow_name):
        return self._write(request, device_id, shadow_name, DesiredMode.REPLACE)

    def _write(self, request, device_id, shadow_name, mode):
        body = DesiredWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = _device(request, device_id)
        name = _named(shadow_name)
        shadow_write_desired(
            device=device, shadow_name=name, document=body.validated_data["desired"], mode=mode,
            expected_version=_expected_version(request, body.validated_data.get("expected_version")),
        )  # fmt: skip
        device.refresh_from_db()
        return _twin_response(device, shadow_get(device=device, shadow_name=name))


def _named(shadow_name: str) -> str:
    if shadow_name == CLASSIC:
        raise InvalidInput("A named shadow needs a name", code="invalid_shadow_name")
    return check_shadow_name(shadow_name)
