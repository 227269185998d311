"""Request and response shapes of the twin API (also the OpenAPI schema)."""

from rest_framework import serializers

from iotcloud.api.fields import JSONObjectField, StrictIntegerField, StrictSerializer
from twin.choices import SYNC_STATUSES


class DesiredWriteSerializer(StrictSerializer):
    desired = JSONObjectField(help_text="PATCH: a JSON merge patch (null deletes a key). PUT: the whole document.")
    expected_version = StrictIntegerField(
        required=False,
        min_value=0,
        help_text="Optional optimistic lock: 409 unless it equals the current desired_version (If-Match works too).",
    )


class TwinSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    tenant = serializers.CharField()
    status = serializers.CharField()
    desired = serializers.JSONField()
    reported = serializers.JSONField()
    delta = serializers.JSONField()
    desired_version = serializers.IntegerField()
    reported_version = serializers.IntegerField()
    sync_status = serializers.ChoiceField(choices=SYNC_STATUSES)
    shadow_updated_at = serializers.DateTimeField(allow_null=True)
    reported_updated_at = serializers.DateTimeField(allow_null=True)
    last_seen = serializers.DateTimeField(allow_null=True)


class DeltaSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    delta = serializers.JSONField()
    in_sync = serializers.BooleanField()
    desired_version = serializers.IntegerField()
    reported_version = serializers.IntegerField()


class DeviceShadowSerializer(serializers.Serializer):
    desired = serializers.JSONField()
    version = serializers.IntegerField()


class ReportedSerializer(StrictSerializer):
    reported = JSONObjectField()
    version = StrictIntegerField(help_text="The desired_version this report acknowledges (0..desired_version).")


class ReportAcceptedSerializer(serializers.Serializer):
    accepted = serializers.BooleanField()
    version = serializers.IntegerField()
