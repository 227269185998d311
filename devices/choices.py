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
