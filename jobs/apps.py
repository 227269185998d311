from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self):
        from devices.signals import device_decommissioned
        from jobs.services import executions_cancel_for_device

        def cancel_its_executions(sender, *, device, reason, **kwargs):
            executions_cancel_for_device(device=device, reason=reason)

        # Decommissioning a device cancels its QUEUED and IN_PROGRESS executions, so its jobs still complete.
        device_decommissioned.connect(cancel_its_executions, weak=False, dispatch_uid="jobs-cancel-on-decommission")
