"""App configs: the iotcloud project app, and the admin with iotcloud's own site (dashboard)."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps  # the module, not the class: it is marked default=True


class IotcloudConfig(AppConfig):
    default = True
    name = "iotcloud"

    def ready(self):
        from django.conf import settings

        from iotcloud import outbox
        from iotcloud.live import events
        from iotcloud.live.sessions import connect_signals

        connect_signals()  # a live websocket closes when its session ends
        if settings.LIVE_UPDATES:  # off: no listener, so writes do not even schedule an event
            outbox.changed.connect(events.on_change, dispatch_uid="live-updates")  # changes reach operator screens


class IotcloudAdminConfig(admin_apps.AdminConfig):
    """Replaces "django.contrib.admin" in INSTALLED_APPS, so admin.site is IotcloudAdminSite."""

    default = False
    default_site = "iotcloud.admin_site.IotcloudAdminSite"
