from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.auth_views import TokenLoginView, TokenLogoutView
from devices.operator_views import AuditViewSet, DeviceViewSet
from devices.provisioning_views import ProvisioningTemplateViewSet, RegistrationViewSet
from devices.registration_views import RegisterView

router = SimpleRouter(trailing_slash=False)
router.register("customer/devices", DeviceViewSet, basename="device")
router.register("customer/audit", AuditViewSet, basename="audit")
router.register("customer/provisioning/templates", ProvisioningTemplateViewSet, basename="provisioning-template")
router.register("customer/provisioning/registrations", RegistrationViewSet, basename="provisioning-registration")

urlpatterns = [
    path("customer/auth/token", TokenLoginView.as_view(), name="auth-token"),
    path("customer/auth/logout", TokenLogoutView.as_view(), name="auth-logout"),
    path("device/v1/register", RegisterView.as_view(), name="device-register"),
    *router.urls,
]
