from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and tenants"

    def ready(self):
        from devices import schema  # noqa: F401  (registers the OpenAPI auth extension)
