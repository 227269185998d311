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


# --- the device protocol over HTTP (the AWS IoT shadow documents) and named shadows ---------------


class TwinDocumentSerializer(TwinSerializer):
    version = serializers.IntegerField(help_text="AWS IoT's single document version: +1 per accepted change.")
    metadata = serializers.JSONField(help_text='{"desired": ..., "reported": ...}: a {"timestamp": epoch s} per leaf.')
    shadows = serializers.ListField(child=serializers.CharField(), required=False, help_text="Named shadows.")
    name = serializers.CharField(required=False, help_text="The named shadow (absent for the classic one).")


class NamedShadowSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    desired_version = serializers.IntegerField()
    reported_version = serializers.IntegerField()
    version = serializers.IntegerField()
    sync_status = serializers.ChoiceField(choices=SYNC_STATUSES)
    shadow_updated_at = serializers.DateTimeField(allow_null=True)
    reported_updated_at = serializers.DateTimeField(allow_null=True)


class ShadowStateSerializer(serializers.Serializer):
    desired = serializers.JSONField(required=False)
    reported = serializers.JSONField(required=False)
    delta = serializers.JSONField(required=False, help_text="Present only when desired and reported differ.")


class ShadowDocumentSerializer(serializers.Serializer):
    """A full shadow document (AWS IoT's get/accepted), with the seed's versions beside AWS's one."""

    state = ShadowStateSerializer()
    metadata = serializers.JSONField()
    version = serializers.IntegerField()
    desired_version = serializers.IntegerField()
    reported_version = serializers.IntegerField()
    timestamp = serializers.IntegerField(help_text="Epoch seconds of the answer.")


class ShadowUpdateSerializer(serializers.Serializer):
    """AWS IoT's request state document (only for the schema: twin.protocol checks the body)."""

    state = ShadowStateSerializer(help_text="desired and/or reported: merges (null deletes a key, or all of it).")
    version = serializers.IntegerField(required=False, help_text="Refused (409) unless it is the current version.")
    clientToken = serializers.CharField(required=False, max_length=64, help_text="Echoed in the answer.")


class ShadowAcceptedSerializer(serializers.Serializer):
    state = serializers.JSONField(help_text="What the request wrote, as it wrote it.")
    metadata = serializers.JSONField()
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField()
    clientToken = serializers.CharField(required=False)


class ShadowDeletedSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField()


class ShadowNamesSerializer(serializers.Serializer):
    results = serializers.ListField(child=serializers.CharField())
    timestamp = serializers.IntegerField()


class ReportPatchSerializer(StrictSerializer):
    reported = JSONObjectField(help_text="A JSON merge patch of reported (null deletes a key).")
    version = StrictIntegerField(
        required=False, help_text="Optional: the desired_version this state reflects (as POST); else reported "
        "catches up with desired_version when the patch leaves no delta.",
    )  # fmt: skip
