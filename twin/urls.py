from django.urls import path

from twin import device_views, operator_views

DEVICE_ID = "<str:device_id>"

operator_urlpatterns = [
    path(f"customer/devices/{DEVICE_ID}/twin", operator_views.TwinView.as_view(), name="twin"),
    path(f"customer/devices/{DEVICE_ID}/twin/desired", operator_views.DesiredView.as_view(), name="twin-desired"),
    path(f"customer/devices/{DEVICE_ID}/twin/delta", operator_views.DeltaView.as_view(), name="twin-delta"),
]

device_urlpatterns = [
    path("device/v1/shadow", device_views.DeviceShadowView.as_view(), name="device-shadow"),
    path("device/v1/shadow/reported", device_views.DeviceReportedView.as_view(), name="device-shadow-reported"),
]

urlpatterns = operator_urlpatterns + device_urlpatterns
