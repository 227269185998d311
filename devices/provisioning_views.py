"""Operator API of fleet provisioning by claim: templates (list, create, get, update, delete), their claims
(create: the claim token shown once; list; revoke) and the registrations (devices.claims)."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from devices import claims
from devices.certificates import ca_certificate_pem
from devices.choices import CredentialKind
from devices.models import ProvisioningTemplate, Registration
from devices.provisioning_serializers import (
    ClaimCreatedSerializer,
    ClaimCreateSerializer,
    ClaimSerializer,
    ProvisioningTemplateSerializer,
    ProvisioningTemplateUpdateSerializer,
    ProvisioningTemplateWriteSerializer,
    RegistrationSerializer,
)
from devices.selectors import tenant_for_write
from iotcloud.api.schema import OPERATOR_ERRORS as ERRORS
from iotcloud.api.schema import TENANT_PARAM
from iotcloud.api.views import TenantScopedViewSet, cursor_pagination
from iotcloud.errors import InvalidInput

CLAIM_DESCRIPTION = """A claim credential on the template: a claim token (`iotc_...`), shown this once, to bake
into firmware; or, with `"credential": "certificate"`, a claim certificate (CN `_claim-cert/<claim id>`) for the
factory's `csr`, or with a key pair made now and shown this once. A device presenting it and its serial registers
(POST /device/v1/register, or MQTT) and gets its own identity. Optional: `max_registrations` (at most that many
devices), `expires_at` (a claim certificate ends then too)."""


@extend_schema_view(
    list=extend_schema(operation_id="provisioning_templates_list", parameters=[TENANT_PARAM]),
    retrieve=extend_schema(
        operation_id="provisioning_templates_get",
        parameters=[TENANT_PARAM],
        responses={200: ProvisioningTemplateSerializer, **ERRORS},
    ),
)
class ProvisioningTemplateViewSet(TenantScopedViewSet):
    model = ProvisioningTemplate
    serializer_class = ProvisioningTemplateSerializer
    pagination_class = cursor_pagination("name")
    lookup_field = "name"

    def scoped(self, user, tenant_id):
        return claims.templates_for_operator(user, tenant_id=tenant_id)

    def lookup(self, user, key, tenant_id):
        return claims.template_for_operator(user, key, tenant_id=tenant_id)

    @extend_schema(
        operation_id="provisioning_templates_create",
        request=ProvisioningTemplateWriteSerializer,
        responses={201: ProvisioningTemplateSerializer, **ERRORS},
        description="A provisioning template: what a device registering by claim becomes (device id = "
        "device_id_prefix + serial, tags, initial desired state of its shadows, credential: a provision token).",
    )
    def create(self, request):
        body = ProvisioningTemplateWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        tenant = tenant_for_write(request.user, data.pop("tenant", None) or self.tenant_param)
        template = claims.template_create(tenant=tenant, **data)
        return Response(ProvisioningTemplateSerializer(template).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="provisioning_templates_update",
        request=ProvisioningTemplateUpdateSerializer,
        responses={200: ProvisioningTemplateSerializer, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Change some fields; the others stay. enabled=false: none of its claims registers anybody.",
    )
    def partial_update(self, request, name=None):
        body = ProvisioningTemplateUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        template = claims.template_update(template=self.get_object(), **body.validated_data)
        return Response(ProvisioningTemplateSerializer(template).data)

    @extend_schema(
        operation_id="provisioning_templates_delete",
        responses={204: None, **ERRORS},
        parameters=[TENANT_PARAM],
        description="Delete the template and its claims; the devices registered and their registrations stay.",
    )
    def destroy(self, request, name=None):
        claims.template_delete(template=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="provisioning_claims_list", methods=["get"], parameters=[TENANT_PARAM],
        request=None, responses={200: ClaimSerializer(many=True), **ERRORS},
    )  # fmt: skip
    @extend_schema(
        operation_id="provisioning_claims_create", methods=["post"], parameters=[TENANT_PARAM],
        request=ClaimCreateSerializer, responses={201: ClaimCreatedSerializer, **ERRORS},
        description=CLAIM_DESCRIPTION,
    )  # fmt: skip
    @action(detail=True, methods=["get", "post"], url_path="claims")
    def claims(self, request, name=None):
        template = self.get_object()
        if request.method == "GET":
            return Response(ClaimSerializer(template.claims.prefetch_related("certificates"), many=True).data)
        body = ClaimCreateSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        credential, csr = fields.pop("credential", CredentialKind.TOKEN), fields.pop("csr", None)
        if credential == CredentialKind.CERTIFICATE:
            claim, issued, key_pem = claims.claim_create_with_certificate(template=template, csr=csr, **fields)
            claim.claim_token = None
            claim.certificate_pem, claim.private_key_pem = issued.certificate_pem, key_pem
            claim.ca_certificate_pem = ca_certificate_pem()
        else:
            if csr is not None:
                raise InvalidInput(
                    'csr goes with "credential": "certificate" (a claim certificate)', code="invalid_csr"
                )
            claim, claim.claim_token = claims.claim_create(template=template, **fields)
        return Response(ClaimCreatedSerializer(claim).data, status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    @extend_schema(
        operation_id="provisioning_claims_revoke", request=None, parameters=[TENANT_PARAM],
        responses={200: ClaimSerializer, **ERRORS},
        description="Revoke a claim: it registers nobody from now on; devices it registered keep their identity.",
    )  # fmt: skip
    @action(detail=True, methods=["post"], url_path=r"claims/(?P<claim_id>[^/]+)/revoke")
    def revoke_claim(self, request, name=None, claim_id=None):
        claim = claims.claim_revoke(claim=claims.claim_for_template(self.get_object(), claim_id))
        return Response(ClaimSerializer(claim).data)


@extend_schema_view(
    list=extend_schema(
        operation_id="provisioning_registrations_list",
        parameters=[TENANT_PARAM],
        description="Devices registered by claim, newest first: serial, device, template, claim, channel, time.",
    ),
)
class RegistrationViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = RegistrationSerializer
    pagination_class = cursor_pagination("-at")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Registration.objects.none()
        return claims.registrations_for_operator(self.request.user, tenant_id=self.request.query_params.get("tenant"))
