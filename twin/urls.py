from django.urls import path

from twin import device_views, operator_views

DEVICE_ID = "<str:device_id>"
SHADOW = "<str:shadow_name>"

operator_urlpatterns = [
    path(f"customer/devices/{DEVICE_ID}/twin", operator_views.TwinView.as_view(), name="twin"),
    path(f"customer/devices/{DEVICE_ID}/twin/desired", operator_views.DesiredView.as_view(), name="twin-desired"),
    path(f"customer/devices/{DEVICE_ID}/twin/delta", operator_views.DeltaView.as_view(), name="twin-delta"),
    path(f"customer/devices/{DEVICE_ID}/shadows", operator_views.ShadowsView.as_view(), name="twin-shadows"),
    path(f"customer/devices/{DEVICE_ID}/shadows/{SHADOW}", operator_views.NamedShadowView.as_view(),
         name="twin-shadow"),
    path(f"customer/devices/{DEVICE_ID}/shadows/{SHADOW}/desired", operator_views.NamedDesiredView.as_view(),
         name="twin-shadow-desired"),
]  # fmt: skip

device_urlpatterns = [
    path("device/v1/shadow", device_views.DeviceShadowView.as_view(), name="device-shadow"),
    path("device/v1/shadow/reported", device_views.DeviceReportedView.as_view(), name="device-shadow-reported"),
    path("device/v1/shadow/document", device_views.DeviceShadowDocumentView.as_view(), name="device-shadow-document"),
    path("device/v1/shadow/update", device_views.DeviceShadowUpdateView.as_view(), name="device-shadow-update"),
    path("device/v1/shadows", device_views.DeviceShadowNamesView.as_view(), name="device-shadows"),
    path(f"device/v1/shadows/{SHADOW}", device_views.DeviceNamedShadowDocumentView.as_view(),
         name="device-named-shadow"),
    path(f"device/v1/shadows/{SHADOW}/update", device_views.DeviceNamedShadowUpdateView.as_view(),
         name="device-named-shadow-update"),
    path(f"device/v1/shadows/{SHADOW}/reported", device_views.DeviceNamedReportedView.as_view(),
         name="device-named-shadow-reported"),
]  # fmt: skip

urlpatterns = operator_urlpatterns + device_urlpatterns
