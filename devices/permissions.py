from rest_framework import permissions

from devices.authentication import DevicePrincipal
from devices.choices import WRITE_ROLES
from devices.selectors import operator_membership


class IsOperator(permissions.BasePermission):
    """A signed-in operator with a tenant (or a superuser); viewers only read."""

    message = "You need an operator account in a tenant to use this API."

    def has_permission(self, request, view):
        user = request.user
        if not user or not user.is_authenticated or isinstance(user, DevicePrincipal):
            return False
        if user.is_superuser:
            return True
        membership = operator_membership(user)
        if membership is None:
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        if membership.role not in WRITE_ROLES:
            self.message = f"Your role ({membership.role}) may only read."
            return False
        return True


class IsDevice(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, DevicePrincipal)
