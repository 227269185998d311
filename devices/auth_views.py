"""Operator bearer tokens: exchange a password (or a session) for a token, revoke it.

Thin wrappers over django-rest-knox, which stores tokens as digests and
compares them in constant time.
"""

from drf_spectacular.utils import extend_schema, inline_serializer
from knox import views as knox_views
from rest_framework import serializers
from rest_framework.authentication import BasicAuthentication, SessionAuthentication

from devices.permissions import IsOperator

TOKEN_RESPONSE = inline_serializer(
    "OperatorToken", {"token": serializers.CharField(), "expiry": serializers.DateTimeField(allow_null=True)}
)


class TokenLoginView(knox_views.LoginView):
    """POST with HTTP Basic (username:password) or a session: returns a new bearer token, once."""

    authentication_classes = [BasicAuthentication, SessionAuthentication]
    permission_classes = [IsOperator]

    @extend_schema(operation_id="auth_token_create", request=None, responses={200: TOKEN_RESPONSE})
    def post(self, request, format=None):
        return super().post(request, format)

    def get_post_response_data(self, request, token, instance):
        return {"token": token, "expiry": instance.expiry}


class TokenLogoutView(knox_views.LogoutView):
    """Revoke the bearer token this request carries."""

    @extend_schema(operation_id="auth_token_revoke", request=None, responses={204: None})
    def post(self, request, format=None):
        return super().post(request, format)
