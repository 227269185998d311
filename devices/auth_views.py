"""Operator bearer tokens: exchange a password (or a session) for a token, revoke it.

Thin wrappers over django-rest-knox, which stores tokens as digests and
compares them in constant time. Issuing goes through devices.services
(token lifetime and the per-operator cap).
"""

from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from knox import views as knox_views
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response

from devices import services
from devices.authentication import OperatorBasicAuthentication, OperatorTokenAuthentication
from devices.permissions import IsOperator

TOKEN_RESPONSE = inline_serializer(
    "OperatorToken", {"token": serializers.CharField(), "expiry": serializers.DateTimeField(allow_null=True)}
)


class TokenLoginView(knox_views.LoginView):
    """POST with HTTP Basic (username:password) or a session: returns a new bearer token, once.

    The token expires after OPERATOR_TOKEN_TTL_HOURS (`expiry`; null: never). An operator holds at
    most OPERATOR_TOKEN_LIMIT tokens: beyond that, 409 `token_limit` until one is revoked or expires.
    Repeated wrong passwords lock the account and the address out for a while: 429 with Retry-After.
    """

    authentication_classes = [OperatorBasicAuthentication, SessionAuthentication]
    permission_classes = [IsOperator]

    @extend_schema(
        operation_id="auth_token_create",
        request=None,
        responses={
            200: TOKEN_RESPONSE,
            401: OpenApiResponse(description="Wrong or malformed credentials"),
            409: OpenApiResponse(description="The operator already holds OPERATOR_TOKEN_LIMIT tokens"),
            429: OpenApiResponse(description="Too many failed sign-ins: locked out for a while (Retry-After)"),
        },
    )
    def post(self, request, format=None):
        instance, token = services.operator_token_issue(user=request.user)
        # As Django does on sign-in (last_login; axes): with the Django request, not the DRF wrapper.
        user_logged_in.send(sender=request.user.__class__, request=request._request, user=request.user)
        return Response({"token": token, "expiry": instance.expiry})

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        extra = getattr(exc, "extra", None)  # e.g. retry_after of a lockout
        if extra and isinstance(response.data, dict):
            response.data.update(extra)
        return response


class TokenLogoutView(knox_views.LogoutView):
    """Revoke the bearer token this request carries."""

    authentication_classes = [OperatorTokenAuthentication]

    @extend_schema(operation_id="auth_token_revoke", request=None, responses={204: None})
    def post(self, request, format=None):
        return super().post(request, format)
