"""OpenAPI description of the credentials (the operator ones are knox's and DRF's, hardened)."""

from drf_spectacular.authentication import BasicScheme
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ProvisionTokenScheme(OpenApiAuthenticationExtension):
    target_class = "devices.authentication.ProvisionTokenAuthentication"
    name = "ProvisionToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Provision-Token"}


class ClientCertificateScheme(OpenApiAuthenticationExtension):
    target_class = "devices.authentication.ClientCertificateAuthentication"
    name = "ClientCertificate"

    def get_security_definition(self, auto_schema):
        from django.conf import settings

        return {"type": "apiKey", "in": "header", "name": settings.DEVICE_CERT_HEADER,
                "description": "The device's X.509 certificate (URL-escaped PEM), set by a TLS proxy that verified "
                "it; accepted only from DEVICE_CERT_PROXIES."}  # fmt: skip


class OperatorTokenScheme(KnoxTokenScheme):
    target_class = "devices.authentication.OperatorTokenAuthentication"


class OperatorBasicScheme(BasicScheme):
    target_class = "devices.authentication.OperatorBasicAuthentication"
