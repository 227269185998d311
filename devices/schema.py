"""OpenAPI description of the device credential."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ProvisionTokenScheme(OpenApiAuthenticationExtension):
    target_class = "devices.authentication.ProvisionTokenAuthentication"
    name = "ProvisionToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Provision-Token"}
