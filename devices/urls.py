from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.auth_views import TokenLoginView, TokenLogoutView
from devices.operator_views import AuditViewSet, DeviceViewSet

router = SimpleRouter(trailing_slash=False)
router.register("customer/devices", DeviceViewSet, basename="device")
router.register("customer/audit", AuditViewSet, basename="audit")

urlpatterns = [
    path("customer/auth/token", TokenLoginView.as_view(), name="auth-token"),
    path("customer/auth/logout", TokenLogoutView.as_view(), name="auth-logout"),
    *router.urls,
]
