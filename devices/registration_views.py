"""The device's side of fleet provisioning by claim: POST /device/v1/register (devices.claims.claim_register).

The device has no identity yet: it presents the claim token baked into its firmware (`X-Claim-Token`), or
its claim certificate to the TLS proxy (forwarded as a device's is: devices.authentication), and its
serial, and gets its own identity back, once. Rate-limited per claim (CLAIM_RATE_LIMIT).
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.authentication import forwarded_certificate
from devices.certificates import claim_for_certificate
from devices.claims import ClaimRefused, claim_register, identity_document
from devices.provisioning_serializers import RegisteredSerializer, RegisterSerializer
from devices.throttling import ClaimRateThrottle, RateLimitedViewMixin
from iotcloud.api.schema import error_responses

CLAIM_HEADER = OpenApiParameter(
    "X-Claim-Token", str, location=OpenApiParameter.HEADER, required=False,
    description="The claim token (iotc_...) of a provisioning claim; without it, the claim certificate the "
    "TLS proxy forwards (DEVICE_CERT_HEADER from DEVICE_CERT_PROXIES).",
)  # fmt: skip


class RegisterView(RateLimitedViewMixin, APIView):
    authentication_classes = []  # the claim token is checked by the service, with its distinct refusals
    permission_classes = [AllowAny]
    throttle_classes = [ClaimRateThrottle]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        operation_id="device_register",
        auth=[],
        parameters=[CLAIM_HEADER],
        request=RegisterSerializer,
        responses={201: RegisteredSerializer, **error_responses(400, 401, 403, 409, 413, 429, 503)},
        description="Register a device by claim: its identity (tenant, device id, provision token) comes back "
        "this once. 401 invalid_claim / claim_revoked / claim_expired; 403 template_disabled, serial_not_allowed, "
        "registration_denied (the template's pre-provisioning hook said no), claim_exhausted; 409 "
        "serial_registered (a serial registers once), device_exists; 429 over CLAIM_RATE_LIMIT; 503 "
        "hook_unavailable (the pre-provisioning hook did not answer usably: retry later).",
    )
    def post(self, request):
        token = request.META.get("HTTP_X_CLAIM_TOKEN", "")
        certificate = forwarded_certificate(request) if not token else None
        if not token and certificate is None:
            raise ClaimRefused("Missing claim: send X-Claim-Token, or present the claim certificate to the TLS proxy",
                               code="missing_claim_token")  # fmt: skip
        claim = None
        if certificate is not None:
            claim = claim_for_certificate(certificate)
            if claim is None:
                raise ClaimRefused("Invalid claim certificate", code="invalid_claim")
        body = RegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        registered = claim_register(claim_token=token or None, claim=claim, serial=body.validated_data["serial"],
                                    channel="http", csr=body.validated_data.get("csr"))  # fmt: skip
        data = identity_document(registered)
        return Response(RegisteredSerializer(data).data, status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if response.status_code == status.HTTP_401_UNAUTHORIZED:
            response["WWW-Authenticate"] = 'ClaimToken header="X-Claim-Token"'
        return response
