from django.db import models


class DeviceStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DECOMMISSIONED = "decommissioned", "Decommissioned"


class Role(models.TextChoices):
    """What an operator may do inside their tenant."""

    ADMIN = "admin", "Admin"  # everything, including managing operators
    OPERATOR = "operator", "Operator"  # read and write devices, twins and jobs
    VIEWER = "viewer", "Viewer"  # read only


WRITE_ROLES = frozenset({Role.ADMIN, Role.OPERATOR})


class DesiredWrites(models.TextChoices):
    """Whether a tenant's devices may write their own desired state (shadow update over MQTT or HTTP)."""

    DENY = "deny", "No: desired state is the operators' (403)"
    VERSIONED = "versioned", "Yes, with the shadow's version (stale writes 409)"
    ALLOW = "allow", "Yes, as AWS IoT does (a merge; version optional)"


class CredentialKind(models.TextChoices):
    """What identity a provisioning template issues to a device registering with one of its claims.

    A provision token, or an X.509 certificate from the platform's device CA (devices.certificates),
    for the device's CSR sent with its registration or with a key pair made then (returned once).
    """

    TOKEN = "token", "Provision token"
    CERTIFICATE = "certificate", "X.509 certificate"
