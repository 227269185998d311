from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.models import AuditEvent, Device, DeviceCertificate
from iotcloud.api.fields import JSONObjectField, StrictCharField, StrictSerializer
from iotcloud.api.serializers import ErrorSerializer
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
    certificate = serializers.BooleanField(
        required=False, default=False, help_text="Also issue an X.509 certificate (a key pair made now, its private "
        "key returned once), or give csr.",
    )  # fmt: skip
    csr = StrictCharField(
        required=False,
        allow_blank=False,
        max_length=16384,
        trim_whitespace=False,
        help_text="The device's CSR: a certificate is issued for its key (implies certificate).",
    )

    def to_internal_value(self, data):
        if isinstance(data, dict) and "certificate" in data and not isinstance(data["certificate"], bool):
            raise serializers.ValidationError({"certificate": ["Must be true or false."]})
        return super().to_internal_value(data)


class ProvisionedSerializer(DeviceSerializer):
    provision_token = serializers.CharField(help_text="Shown once; store it on the device.")
    certificate = serializers.JSONField(required=False, help_text="With certificate or csr: as "
                                        "POST /customer/devices/{id}/certificates answers.")  # fmt: skip

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "provision_token", "certificate"]
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


# Bulk provisioning, POST /customer/devices/bulk. The JSON body is read by devices.bulk.read_json (every row's
# error reported at once, not only the first serializer error); these declare it for the OpenAPI schema.
class BulkDeviceSerializer(StrictSerializer):
    device_id = StrictCharField(help_text=f"{DEVICE_ID.text} (no / + #); unique within the tenant and the upload.")
    tags = JSONObjectField(required=False, help_text='Flat string tags, e.g. {"site": "paris"}.')


class BulkProvisionSerializer(StrictSerializer):
    devices = BulkDeviceSerializer(many=True, help_text="At most DEVICES_BULK_MAX_ROWS (10,000) devices.")
    tenant = StrictCharField(required=False, help_text="Superusers only: the tenant to provision into.")


class BulkProvisionedDeviceSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    provision_token = serializers.CharField(help_text="Shown once; store it on the device.")


class BulkProvisionedSerializer(serializers.Serializer):
    tenant = serializers.CharField()
    count = serializers.IntegerField(help_text="How many devices were created: every row of the upload.")
    devices = BulkProvisionedDeviceSerializer(many=True, help_text="In the order of the upload.")


class BulkRowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="1-based: the position in `devices`, or the line of the CSV file.")
    device_id = serializers.CharField(help_text='As given (shortened); "" when it is not text.')
    detail = serializers.CharField()
    code = serializers.CharField()


class BulkRefusedSerializer(ErrorSerializer):
    rows = BulkRowErrorSerializer(many=True, required=False, help_text="The rows refused (the first 100).")
    rows_refused = serializers.IntegerField(required=False, help_text="How many rows were refused in all.")
    rows_total = serializers.IntegerField(required=False, help_text="How many rows the upload had.")


class CertificateRequestSerializer(StrictSerializer):
    csr = StrictCharField(
        required=False, allow_blank=False, max_length=16384, trim_whitespace=False,
        help_text="The device's certificate signing request (PEM; subject CN empty or '<tenant>/<device_id>'). "
        "Without it a key pair is made and its private key returned once.",
    )  # fmt: skip


class DeviceCertificateSerializer(serializers.ModelSerializer):
    device_id = serializers.CharField(source="device.device_id", read_only=True)

    class Meta:
        model = DeviceCertificate
        fields = ["device_id", "serial", "fingerprint", "not_after", "created_at", "revoked_at", "revoke_reason",
                  "certificate_pem"]  # fmt: skip
        read_only_fields = fields


class IssuedCertificateSerializer(DeviceCertificateSerializer):
    private_key_pem = serializers.CharField(allow_null=True, help_text="Only when no CSR was given; shown only now.")
    ca_certificate_pem = serializers.CharField(help_text="The CA the broker trusts for device certificates.")
    username = serializers.CharField(help_text="The broker username the certificate stands for (its CN).")

    class Meta(DeviceCertificateSerializer.Meta):
        fields = [*DeviceCertificateSerializer.Meta.fields, "private_key_pem", "ca_certificate_pem", "username"]
        read_only_fields = fields


class RevokedSerializer(serializers.Serializer):
    revoked = serializers.IntegerField(help_text="How many certificates were revoked now.")
