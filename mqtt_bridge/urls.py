from django.urls import path

from mqtt_bridge.accounts import hook_views

urlpatterns = [
    path("mqtt/auth", hook_views.auth, name="mqtt-hook-auth"),
    path("mqtt/acl", hook_views.acl, name="mqtt-hook-acl"),
]
