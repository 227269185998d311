from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.models import AuditEvent, Device
from iotcloud.api.fields import JSONObjectField, StrictCharField, StrictSerializer
from iotcloud.rules import DEVICE_ID
from twin.choices import SYNC_STATUSES
from twin.selectors import device_sync_status


class DeviceSerializer(serializers.ModelSerializer):
    tenant = serializers.CharField(source="tenant_id", read_only=True)
    sync_status = serializers.SerializerMethodField()

    class Meta:
        model = Device
        fields = [
            "device_id",
            "tenant",
            "status",
            "tags",
            "sync_status",
            "desired_version",
            "reported_version",
            "desired_published_version",
            "last_seen",
            "shadow_updated_at",
            "created_at",
            "decommissioned_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=SYNC_STATUSES))
    def get_sync_status(self, device) -> str:
        return device_sync_status(device)


class ProvisionSerializer(StrictSerializer):
    device_id = StrictCharField(allow_blank=True, help_text=f"{DEVICE_ID.text} (no / + #).")
    tags = JSONObjectField(required=False, help_text='Flat string tags, e.g. {"site": "paris"}.')
    tenant = StrictCharField(required=False, help_text="Superusers only: the tenant to provision into.")


class ProvisionedSerializer(DeviceSerializer):
    provision_token = serializers.CharField(help_text="Shown once; store it on the device.")

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "provision_token"]
        read_only_fields = fields


class DeviceUpdateSerializer(StrictSerializer):
    tags = JSONObjectField(help_text="Replaces the device's tags.")


class TokenSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    provision_token = serializers.CharField()


class AuditEventSerializer(serializers.ModelSerializer):
    device_id = serializers.CharField(source="device.device_id", allow_null=True, default=None)
    tenant = serializers.CharField(source="tenant_id")

    class Meta:
        model = AuditEvent
        fields = ["at", "tenant", "actor", "channel", "action", "device_id", "shadow", "job_id", "before", "after",
                  "version"]  # fmt: skip
        read_only_fields = fields
