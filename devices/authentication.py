"""Device authentication: `X-Provision-Token: <token>`.

The token is looked up by its sha256 digest (the token itself is never
stored) and the stored digest is compared again in constant time. Failures
are 401 with a WWW-Authenticate header, never 403.
"""

import hmac

from rest_framework import authentication, exceptions

from devices.choices import DeviceStatus
from devices.models import Device
from devices.services import device_touch
from devices.tokens import hash_token

HEADER = "HTTP_X_PROVISION_TOKEN"
MAX_TOKEN_LENGTH = 256


class ProvisionTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = request.META.get(HEADER, "").strip()
        if not token:
            raise exceptions.AuthenticationFailed("Missing provision token", code="missing_token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise exceptions.AuthenticationFailed("Invalid provision token", code="invalid_token")
        digest = hash_token(token)
        device = next(iter(Device.objects.filter(provision_token_hash=digest).order_by()[:1]), None)
        if (
            device is None
            or not hmac.compare_digest(device.provision_token_hash, digest)
            or device.status != DeviceStatus.ACTIVE
        ):
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
