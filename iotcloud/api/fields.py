"""Serializer fields that refuse what DRF would quietly coerce."""

from rest_framework import serializers

from iotcloud.rules import is_integer


class StrictIntegerField(serializers.IntegerField):
    """An integer in the JSON sense: 3 is fine; "3", 3.0 and true are not."""

    default_error_messages = {"invalid": "Must be an integer (a JSON number without a fraction), got {kind}."}

    def to_internal_value(self, data):
        if not is_integer(data):
            self.fail("invalid", kind=json_kind(data))
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string, taken as sent: no number-to-text coercion, no trimming."""

    default_error_messages = {"not_string": "Must be a string, got {kind}."}

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_string", kind=json_kind(data))
        return super().to_internal_value(data)


class JSONObjectField(serializers.JSONField):
    default_error_messages = {"not_object": "Must be a JSON object, got {kind}."}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object", kind=json_kind(data))
        return super().to_internal_value(data)


def json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class StrictSerializer(serializers.Serializer):
    """Refuses unknown fields, so a typo ("desierd") is an error, not a no-op."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": [f"Expected a JSON object, got {json_kind(data)}."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({"non_field_errors": [f"Unknown field(s): {', '.join(unknown)}."]})
        return super().to_internal_value(data)
