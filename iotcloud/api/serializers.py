"""Response shapes every API shares (also the OpenAPI schema)."""

from rest_framework import serializers


# Every error body (iotcloud.errors.error_body): `detail` names the problem, `code` is stable. No docstring:
# it would become the schema component's description.
class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
