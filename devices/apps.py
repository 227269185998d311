from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and tenants"

    def ready(self):
        from django.conf import settings
        from django.db.models.signals import post_save

        from devices import schema  # noqa: F401  (registers the OpenAPI auth extension)
        from devices.services import revoke_tokens_on_password_change

        # A new password revokes the operator's bearer tokens, whichever path set it.
        post_save.connect(
            revoke_tokens_on_password_change, sender=settings.AUTH_USER_MODEL, dispatch_uid="revoke-tokens-on-password"
        )
