"""Strict JSON from bytes: the one parser for the JSON the project reads. Standard library only.

The API's bodies (iotcloud.api.parsers), the admin's JSON editors and fields, the broker
hooks and MQTT reports (twin.services.parse_report_payload) all parse with `loads`, so none
of them can be made to raise a 500 or store what PostgreSQL refuses: NaN and Infinity are
not JSON, nesting deep enough to exhaust the stack is an error (not a RecursionError), the
bytes must be UTF-8, and a \\uD800-style escape that decodes to a lone surrogate is refused.
Size limits are the callers' (each names its own setting).
"""

from __future__ import annotations

import json
from typing import Any, Literal

SYNTAX_PREFIX = "JSON parse error - "

Kind = Literal["too_large", "empty", "encoding", "syntax"]


class JSONError(ValueError):
    """Why bytes are not acceptable JSON.

    `message` is the sentence to show; `reason` the problem alone, without the
    "JSON parse error - " of syntax errors (a form says it after its own words);
    `kind` says which rule was broken; `status` is 413 for a size refusal, else 400.
    """

    def __init__(self, message: str, *, kind: Kind, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind: Kind = kind
        self.reason = message if reason is None else reason

    @property
    def status(self) -> int:
        return 413 if self.kind == "too_large" else 400

    def __str__(self) -> str:
        return self.message


def syntax_error(reason: str) -> JSONError:
    return JSONError(SYNTAX_PREFIX + reason, kind="syntax", reason=reason)


def loads(raw: bytes, *, what: str = "Request body", refuse_lone_surrogates: bool = True) -> Any:
    """The JSON value in `raw`, or JSONError. `what` names the input in messages ("Request body").

    With refuse_lone_surrogates=False a lone surrogate is left for the document rules
    (twin.shadow.validate_document), which name where it is.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONError(f"{what} is not valid UTF-8: {exc.reason}", kind="encoding") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise syntax_error("document is nested too deeply") from None
    except ValueError as exc:
        raise syntax_error(str(exc)) from None
    # A \uD800-style escape decodes to text that can be neither stored nor echoed back in an
    # error; refuse it here, once, for every endpoint.
    if refuse_lone_surrogates and b"\\u" in raw and _has_lone_surrogate(data):
        raise syntax_error("unpaired surrogate escape (\\uD800-\\uDFFF)")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
