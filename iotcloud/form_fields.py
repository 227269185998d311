"""Form fields for admin pages that take JSON from operators, parsed as strictly as the API's bodies."""

from __future__ import annotations

from django import forms

from iotcloud.api.parsers import parse_json_bytes
from iotcloud.strict_json import JSONError


def parse_json_text(text: str, *, what: str):
    """JSON typed into a form: the API's strict parsing (depth, NaN, surrogates, size), as a ValidationError."""
    try:
        return parse_json_bytes(text.encode("utf-8", "surrogatepass"))
    except JSONError as exc:
        raise forms.ValidationError(f"Not valid JSON in {what}: {exc.reason}") from None


class StrictJSONField(forms.JSONField):
    """Django's JSONField lets a deeply nested document raise RecursionError (a 500); this one refuses it."""

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if isinstance(value, (list, dict, int, float, forms.fields.JSONString)):
            return value
        return parse_json_text(value, what=str(self.label or "this field").lower())

    def bound_data(self, data, initial):
        # Re-rendering a form with errors parses the input again: the same strict parser, never a crash.
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return parse_json_bytes(data.encode("utf-8", "surrogatepass"))
        except JSONError:
            return forms.fields.InvalidJSONInput(data)
