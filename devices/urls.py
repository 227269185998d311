from rest_framework.routers import SimpleRouter

from devices.operator_views import DeviceViewSet

router = SimpleRouter(trailing_slash=False)
router.register("customer/devices", DeviceViewSet, basename="device")

urlpatterns = router.urls
