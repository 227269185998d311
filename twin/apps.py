from django.apps import AppConfig


class TwinConfig(AppConfig):
    name = "twin"
    verbose_name = "Device twin"

    def ready(self):
        from devices.signals import device_registered, template_desired_check
        from twin.provisioning import check_template_desired, write_initial_desired

        # Fleet provisioning by claim: a template's initial desired state is checked and written by the twin.
        template_desired_check.connect(check_template_desired, weak=False, dispatch_uid="twin-template-check")
        device_registered.connect(write_initial_desired, weak=False, dispatch_uid="twin-initial-desired")
