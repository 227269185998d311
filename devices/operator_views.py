"""Operator device API: list, provision (one, or many from JSON or CSV), detail, tags, rotate token, decommission."""

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from devices import bulk, services
from devices.certificates import ca_certificate_pem, certificate_issue, certificates_revoke, identity
from devices.filters import AuditFilter, DeviceFilter
from devices.models import AuditEvent, Device
from devices.selectors import audit_for_operator, device_for_operator, devices_for_operator, tenant_for_write
from devices.serializers import (
    AuditEventSerializer,
    BulkProvisionedSerializer,
    BulkProvisionSerializer,
    BulkRefusedSerializer,
    CertificateRequestSerializer,
    DeviceCertificateSerializer,
    DeviceSerializer,
    DeviceUpdateSerializer,
    IssuedCertificateSerializer,
    ProvisionedSerializer,
    ProvisionSerializer,
    RevokedSerializer,
    TokenSerializer,
)
from iotcloud.api.parsers import LimitedCSVParser, LimitedJSONParser
from iotcloud.api.schema import OPERATOR_ERRORS as ERRORS
from iotcloud.api.schema import TENANT_PARAM
from iotcloud.api.serializers import ErrorSerializer
from iotcloud.api.views import TenantScopedViewSet, cursor_pagination
from iotcloud.errors import InvalidInput
from iotcloud.limits import setting_limit


class BulkJSONParser(LimitedJSONParser):
    limit_setting = "DEVICES_BULK_MAX_BYTES"


class BulkCSVParser(LimitedCSVParser):
    limit_setting = "DEVICES_BULK_MAX_BYTES"


class TokensCSVRenderer(renderers.BaseRenderer):
    """A bulk provisioning's tokens as a file to download: device_id,provision_token (devices.bulk.tokens_csv)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return bulk.tokens_csv((d["device_id"], d["provision_token"]) for d in data["devices"]).encode()


BULK_DESCRIPTION = f"""Register up to DEVICES_BULK_MAX_ROWS (10,000) devices in one call, all or none.

The body is JSON (`{{"devices": [{{"device_id": "pump-1", "tags": {{"site": "paris"}}}}, ...]}}`) or a CSV file
(`Content-Type: text/csv`, UTF-8): a header `device_id` plus one `tag:<key>` column per tag, e.g.
`{bulk.CSV_EXAMPLE}`, then a device per line (an empty cell: no such tag); any other column is refused.
At most DEVICES_BULK_MAX_BYTES (8 MiB) either way.

Every row is checked (id, tags, ids given twice, ids the tenant already has) before anything is created: a
refusal (400 `invalid_rows`) lists the rows with their number (1-based position in `devices`, or the line of
the CSV file), device id and problem, and nothing is created. An id created meanwhile by someone else is 409
`device_exists`, also naming the rows, and nothing is created.

The response carries every device's provision token, this once: JSON, or with `Accept: text/csv` (or
`?format=csv`) a CSV file to download (`device_id,provision_token`). Errors are always JSON."""

BULK_TENANT_PARAM = OpenApiParameter(
    "tenant", str, description='Superusers: the tenant to provision into (a JSON body may say "tenant" instead).'
)
BULK_FORMAT_PARAM = OpenApiParameter(
    "format", str, enum=["json", "csv"], description="csv: the tokens as a file (same as Accept: text/csv)."
)
BULK_RESPONSES = {
    (201, "application/json"): BulkProvisionedSerializer,
    (201, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="device_id,provision_token per device."),
    **{(code, "application/json"): BulkRefusedSerializer if code in (400, 409) else ErrorSerializer
       for code in [*ERRORS, 415]},
}  # fmt: skip


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

    def finalize_response(self, request, response, *args, **kwargs):
        # Only a bulk provisioning's tokens come as a CSV file: its errors (and the device named "bulk") are JSON.
        if isinstance(getattr(request, "accepted_renderer", None), TokensCSVRenderer) and not (
            self.action == "bulk" and response.status_code == status.HTTP_201_CREATED
        ):
            request.accepted_renderer, request.accepted_media_type = renderers.JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        operation_id="devices_provision",
        request=ProvisionSerializer,
        responses={201: ProvisionedSerializer, **ERRORS},
        description="Register a device. The response carries its provision token, shown this once.",
    )
    def create(self, request):
        body = ProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        tenant = tenant_for_write(request.user, data.get("tenant"))
        fields = {"tenant": tenant, "device_id": data["device_id"], "tags": data.get("tags")}
        issued = None
        if data.get("csr") is not None or data["certificate"]:
            device, token, *issued = services.device_provision_with_certificate(**fields, csr_pem=data.get("csr"))
        else:
            device, token = services.device_provision(**fields)
        device.provision_token = token
        answer = ProvisionedSerializer(device).data
        if issued is not None:
            answer["certificate"] = self._issued(device, *issued)
        return Response(answer, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @staticmethod
    def _issued(device, certificate, key_pem) -> dict:
        return {**DeviceCertificateSerializer(certificate).data, "private_key_pem": key_pem,
                "ca_certificate_pem": ca_certificate_pem(), "username": identity(device)}  # fmt: skip

    @extend_schema(
        operation_id="devices_provision_bulk",
        request={"application/json": BulkProvisionSerializer, "text/csv": OpenApiTypes.STR},
        parameters=[BULK_TENANT_PARAM, BULK_FORMAT_PARAM],
        responses=BULK_RESPONSES,
        description=BULK_DESCRIPTION,
    )
    @action(
        detail=False,
        methods=["post"],
        parser_classes=[BulkJSONParser, BulkCSVParser],
        renderer_classes=[renderers.JSONRenderer, renderers.BrowsableAPIRenderer, TokensCSVRenderer],
    )
    def bulk(self, request):
        csv_body = request.content_type.partition(";")[0].strip().lower() == "text/csv"
        data = request.data  # parsed here: 413 over DEVICES_BULK_MAX_BYTES, 400 for broken JSON, 415 other types
        if csv_body:  # an empty body is no bytes at all (DRF skips the parser)
            named, raw = None, data if isinstance(data, bytes) else b""
            rows = bulk.read_csv(raw, max_rows=setting_limit("DEVICES_BULK_MAX_ROWS"))
        else:
            named, rows = bulk.read_json(data)
        tenant = self._bulk_tenant(request, named, csv_body=csv_body)
        created = services.devices_provision_bulk(tenant=tenant, rows=rows)
        body = BulkProvisionedSerializer({
            "tenant": tenant.id,
            "count": len(created),
            "devices": [{"device_id": d.device_id, "tags": d.tags, "provision_token": token} for d, token in created],
        }).data  # fmt: skip
        headers = {"Cache-Control": "no-store"}  # the tokens must not linger in caches
        if isinstance(request.accepted_renderer, TokensCSVRenderer):
            filename = bulk.tokens_filename(tenant.id, timezone.now())
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    def _bulk_tenant(self, request, named: str | None, *, csv_body: bool):
        """The tenant of a bulk provisioning: the operator's own, or the one a superuser names (body or ?tenant=)."""
        query = request.query_params.get("tenant")
        if named is not None and query is not None and named != query:
            raise InvalidInput(
                f"Two tenants named: {named[:80]!r} in the body, {query[:80]!r} in the query string",
                code="tenant_mismatch",
            )
        try:
            return tenant_for_write(request.user, named if named is not None else query)
        except InvalidInput as exc:
            if exc.code == "tenant_required":
                where = "add ?tenant=<tenant id> to the URL" if csv_body else 'add "tenant": "<id>" (or ?tenant=<id>)'
                raise InvalidInput(f"Say which tenant: {where}", code="tenant_required") from None
            raise

    @extend_schema(exclude=True)  # the detail operations of a device whose id is "bulk", documented there
    @bulk.mapping.get
    @bulk.mapping.patch
    def bulk_device(self, request):
        """GET and PATCH /customer/devices/bulk: the device named "bulk" (its detail path is the bulk route's)."""
        self.kwargs[self.lookup_field] = "bulk"
        if request.method == "PATCH":
            return self.partial_update(request, device_id="bulk")
        return self.retrieve(request)

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
        operation_id="devices_certificate_issue",
        request=CertificateRequestSerializer,
        responses={201: IssuedCertificateSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Issue an X.509 certificate for the device (CN '<tenant>/<device_id>', its broker username), "
        "from its CSR or with a key pair made now (the private key returned only in this answer). The device's "
        "previous certificates are revoked.",
    )
    @action(detail=True, methods=["post"])
    def certificates(self, request, device_id=None):
        body = CertificateRequestSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        device = self.get_object()
        issued = certificate_issue(device=device, csr_pem=body.validated_data.get("csr"))
        return Response(self._issued(device, *issued), status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    @extend_schema(
        operation_id="devices_certificates_list", responses={200: DeviceCertificateSerializer(many=True), **ERRORS},
        parameters=[TENANT_PARAM], description="The device's certificates, newest first, revoked ones included.",
    )  # fmt: skip
    @certificates.mapping.get
    def certificates_list(self, request, device_id=None):
        rows = self.get_object().certificates.select_related("device").order_by("-created_at", "-pk")
        return Response(DeviceCertificateSerializer(rows, many=True).data)

    @extend_schema(
        operation_id="devices_certificates_revoke", request=None, responses={200: RevokedSerializer, **ERRORS},
        parameters=[TENANT_PARAM], description="Revoke every certificate of the device: the broker refuses them "
        "at their next connect once it has reloaded the revocation list (manage.py broker_crl).",
    )  # fmt: skip
    @action(detail=True, methods=["post"], url_path="certificates/revoke")
    def revoke_certificates(self, request, device_id=None):
        return Response({"revoked": certificates_revoke(device=self.get_object(), reason="revoked by an operator")})

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
