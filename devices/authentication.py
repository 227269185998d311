"""Device authentication: `X-Provision-Token: <token>`.

The token is looked up by its sha256 digest (the token itself is never
stored) and the stored digest is compared again in constant time. Failures
are 401 with a WWW-Authenticate header, never 403.
"""

from rest_framework import authentication, exceptions

from devices.models import Device
from devices.selectors import active_device_for_token
from devices.services import device_touch

HEADER = "HTTP_X_PROVISION_TOKEN"


class ProvisionTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = request.META.get(HEADER, "").strip()
        if not token:
            raise exceptions.AuthenticationFailed("Missing provision token", code="missing_token")
        device = active_device_for_token(token)
        if device is None:
            raise exceptions.AuthenticationFailed("Invalid provision token", code="invalid_token")
        device_touch(device=device)
        return DevicePrincipal(device), token

    def authenticate_header(self, request):
        return 'ProvisionToken header="X-Provision-Token"'


class DevicePrincipal:
    """request.user for device requests: the device the token belongs to."""

    is_authenticated = True
    is_anonymous = False
    is_superuser = False
    is_staff = False

    def __init__(self, device: Device):
        self.device = device

    def __str__(self):
        return f"device:{self.device}"
