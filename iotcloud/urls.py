from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView, SpectacularSwaggerView

from iotcloud import views

urlpatterns = [
    # Django tries the patterns in order: the devices' hot paths (twin, jobs) come first.
    path("", include("twin.urls")),
    path("", include("jobs.urls")),
    path("", RedirectView.as_view(url="/api/docs", permanent=False)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="api-docs"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="openapi"), name="api-redoc"),
    path("healthz", views.live, name="healthz"),
    path("readyz", views.ready, name="readyz"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    # Older probe paths, kept as aliases (benchmarks and deployments use them).
    path("healthz/live", views.live, name="health-live"),
    path("healthz/ready", views.ready, name="health-ready"),
    path("", include("devices.urls")),
    path("", include("mqtt_bridge.urls")),
]

handler404 = "iotcloud.views.not_found"
handler500 = "iotcloud.views.server_error"
