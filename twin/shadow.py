"""Device-shadow helpers, in the spirit of the AWS IoT Device Shadow.

A shadow holds two JSON documents: ``desired`` (what the cloud wants) and
``reported`` (what the device says it has). This module holds the pure logic
around them: JSON-typed comparison, the desired-vs-reported delta, RFC 7386
merge patches, sync status and document validation.

Standard library only, no Django: the web layer passes settings in through
``Limits`` (each an ``iotcloud.rules.Limit`` carrying its setting's name, which
the messages quote) and turns ``DocumentError`` into HTTP 400s.

``compute_delta`` and ``merge_patch`` recurse once per nesting level, so run
untrusted documents through ``validate_document`` first; it walks iteratively
and refuses anything deeper than ``Limits.max_depth``.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from iotcloud.rules import Limit

__all__ = [
    "DEFAULT_STALE_AFTER",
    "PENDING",
    "STALE",
    "SYNCED",
    "DocumentError",
    "Limits",
    "compute_delta",
    "delta_metadata",
    "documents_equal",
    "encoded_size",
    "leaf_metadata",
    "merge_metadata",
    "merge_patch",
    "sync_status",
    "validate_document",
]

SYNCED, PENDING, STALE = "synced", "pending", "stale"
DEFAULT_STALE_AFTER = timedelta(minutes=30)

ErrorCode = Literal["not_an_object", "too_large", "too_deep", "key_too_long", "invalid_value"]


@dataclass(frozen=True)
class Limits:
    """Size limits for one shadow document (mirrors the TWIN_MAX_* settings).

    Each is a ``Limit`` naming its setting; a plain number keeps the default's name.
    """

    max_bytes: int = Limit(8192, "TWIN_MAX_DOCUMENT_BYTES")  # compact UTF-8 JSON of the whole document
    max_depth: int = Limit(6, "TWIN_MAX_DEPTH")  # top-level object is 1; each nested object/array adds 1
    max_key_length: int = Limit(128, "TWIN_MAX_KEY_LENGTH")  # characters

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, Limit):
                object.__setattr__(self, field.name, Limit(value, field.default.name))


class DocumentError(ValueError):
    """A document breaks a rule.

    ``code`` is machine-readable (one of ``ErrorCode``); ``message`` is a sentence
    naming the path and the limit with its setting name, and is also ``str(err)``.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------
# Comparison, delta, merge patch
# ---------------------------------------------------------------------------


def _kind(value: object) -> str:
    """The JSON type of a Python value ("other" for anything JSON cannot hold)."""
    # bool first: it is a subclass of int, but JSON keeps booleans and numbers apart.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "other"


def documents_equal(a: Any, b: Any) -> bool:
    """Compare two JSON values by JSON semantics rather than Python's.

    ``True`` never equals ``1`` (Python says it does), while ``1`` equals
    ``1.0`` (the same JSON number). Walks iteratively, so depth is not a risk.
    """
    stack: list[tuple[Any, Any]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = _kind(x)
        if kind != _kind(y):
            return False
        if kind == "object":
            if x.keys() != y.keys():
                return False
            stack.extend((x[key], y[key]) for key in x)
        elif kind == "array":
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _copy(value: Any) -> Any:
    """Deep-copy the JSON containers in ``value``.

    Unlike ``copy.deepcopy`` there is no memo: a sub-object that appears twice
    in the input becomes two independent copies, so editing one in place (as
    ``merge_patch`` does) can never show up under another key.
    """
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value  # JSON scalars are immutable


def compute_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``desired`` that ``reported`` does not match yet.

    Keys only in ``reported`` are ignored (the device may report more than is
    desired). Objects on both sides are compared key by key; anything else,
    including arrays, is compared whole. The result shares no containers with
    the inputs.

    >>> compute_delta({"a": 1, "b": 2}, {"a": 1, "b": 99, "c": 3})
    {'b': 2}
    >>> compute_delta({"n": {"x": 1, "y": 2}}, {"n": {"x": 1, "y": 3, "z": 0}})
    {'n': {'y': 2}}
    """
    delta: dict[str, Any] = {}
    for key, want in desired.items():
        if key not in reported:
            delta[key] = _copy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            nested = compute_delta(want, have)
            if nested:  # an empty nested delta means that branch is in sync
                delta[key] = nested
        elif not documents_equal(want, have):
            delta[key] = _copy(want)
    return delta


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch and return a new value.

    ``None`` in an object patch deletes the key; a non-object patch replaces the
    target wholesale; an object patch applied to a non-object starts from
    ``{}``. Neither argument is mutated and the result shares no containers
    with them.
    """
    if not isinstance(patch, dict):
        return _copy(patch)
    result: dict[str, Any] = _copy(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result


def _merge_into(result: dict[str, Any], patch: dict[str, Any]) -> None:
    # ``result`` is already our own copy, so editing it in place is safe and
    # avoids copying each level again on the way down.
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            if not isinstance(current, dict):
                current = result[key] = {}
            _merge_into(current, value)
        else:
            result[key] = _copy(value)


# ---------------------------------------------------------------------------
# Per-field metadata (AWS IoT's shadow "metadata")
# ---------------------------------------------------------------------------
# Metadata mirrors a document: every leaf value becomes {"timestamp": <epoch seconds of its last
# write>}, objects stay objects, arrays become arrays of their elements' metadata. A leaf's
# metadata is itself an object, so which metadata object is a leaf is read off the document it
# describes, never off the metadata (a document key may well be called "timestamp").


def leaf_metadata(value: Any, timestamp: int) -> Any:
    """Metadata of a value written whole at `timestamp`.

    >>> leaf_metadata({"a": 1, "b": [True, {"c": None}]}, 7)
    {'a': {'timestamp': 7}, 'b': [{'timestamp': 7}, {'c': {'timestamp': 7}}]}
    """
    if isinstance(value, dict):
        return {key: leaf_metadata(item, timestamp) for key, item in value.items()}
    if isinstance(value, list):
        return [leaf_metadata(item, timestamp) for item in value]
    return {"timestamp": timestamp}


def merge_metadata(metadata: Any, document: Any, patch: Any, timestamp: int) -> Any:
    """The metadata of ``merge_patch(document, patch)``, given ``document``'s metadata.

    Keys the patch names get ``timestamp``; keys it deletes (null) lose their metadata; the rest
    keep theirs. Walks in step with merge_patch, so it is bounded by the same depth check.
    """
    if not isinstance(patch, dict):
        return leaf_metadata(patch, timestamp)
    base = document if isinstance(document, dict) else {}
    result = _copy(metadata) if isinstance(document, dict) and isinstance(metadata, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_metadata(result.get(key), base.get(key), value, timestamp)
        else:
            result[key] = leaf_metadata(value, timestamp)
    return result


def delta_metadata(delta: dict[str, Any], desired: dict[str, Any], metadata: Any) -> dict[str, Any]:
    """The desired metadata of the fields in a delta (AWS: the delta's metadata is the desired's)."""
    result: dict[str, Any] = {}
    meta = metadata if isinstance(metadata, dict) else {}
    for key, value in delta.items():
        want = desired.get(key)
        if isinstance(value, dict) and isinstance(want, dict):
            result[key] = delta_metadata(value, want, meta.get(key))
        elif key in meta:
            result[key] = _copy(meta[key])
    return result


# ---------------------------------------------------------------------------
# Sync status
# ---------------------------------------------------------------------------


def sync_status(
    desired_version: int,
    reported_version: int,
    last_seen: datetime | None,
    *,
    now: datetime | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> str:
    """``STALE`` if the device went quiet, else ``SYNCED``/``PENDING`` by version.

    Staleness wins: a device that has not been heard from for longer than
    ``stale_after`` may have drifted, whatever it last reported. Exactly
    ``stale_after`` ago still counts as fresh. ``last_seen`` must be
    timezone-aware.
    """
    if now is None:
        now = datetime.now(UTC)
    if last_seen is None or now - last_seen > stale_after:
        return STALE
    return SYNCED if reported_version >= desired_version else PENDING


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

# Keys that read fine after a dot (desired.temp_1); anything else is quoted.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Lone surrogates are not encodable as UTF-8, so no JSON column can store them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY_PREVIEW = 20  # characters of an offending key to quote in a message

# A path is a linked list of (parent, segment), rendered only when an error is
# raised so that valid documents cost no string building.
_Path = tuple[Any, str | int] | None


def _render(name: str, path: _Path) -> str:
    segments: list[str | int] = []
    while path is not None:
        path, segment = path
        segments.append(segment)
    parts = [name]
    for segment in reversed(segments):
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _PLAIN_KEY.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            # json.dumps (ensure_ascii) quotes dots/spaces, escapes NUL/surrogates.
            parts.append(f"[{json.dumps(segment)}]")
    return "".join(parts)


def _quote_key(key: str) -> str:
    preview = json.dumps(key[:_KEY_PREVIEW])
    return preview[:-1] + '..."' if len(key) > _KEY_PREVIEW else preview


def _string_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None if it can."""
    if "\x00" in text:
        # PostgreSQL jsonb rejects \u0000 even though JSON allows it.
        return "contains a NUL character (\\u0000), which cannot be stored"
    match = _SURROGATE.search(text)
    if match:
        code_point = ord(match.group())
        return f"contains a lone surrogate (\\u{code_point:04x}), which is not UTF-8"
    return None


def encoded_size(doc: Any) -> int:
    """Bytes in the compact UTF-8 JSON encoding of ``doc`` (what max_bytes limits)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8"))


def validate_document(doc: Any, limits: Limits = Limits(), *, name: str = "document") -> int:
    """Check ``doc`` against ``limits`` and return its encoded size.

    Raises ``DocumentError`` for the first problem found. The walk is iterative
    and never descends past ``limits.max_depth``, so a maliciously deep document
    is refused cheaply instead of exhausting the stack; the size is measured
    last because ``json.dumps`` itself recurses.
    """
    if not isinstance(doc, dict):
        raise DocumentError("not_an_object", f"{name} must be a JSON object, got {_type_name(doc)}")

    stack: list[tuple[Any, _Path, int]] = [(doc, None, 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limits.max_depth:
                raise DocumentError(
                    "too_deep",
                    f"{_render(name, path)} is nested {depth} levels deep; the limit "
                    f"is {limits.max_depth} levels ({limits.max_depth.name})",
                )
            if isinstance(value, dict):
                for key in value:
                    _check_key(key, name, path, limits)
                children = [(item, (path, key), depth + 1) for key, item in value.items()]
            else:
                children = [(item, (path, index), depth + 1) for index, item in enumerate(value)]
            # Reversed so that problems are reported in document order.
            stack.extend(reversed(children))
        else:
            _check_scalar(value, name, path)

    size = encoded_size(doc)
    if size > limits.max_bytes:
        raise DocumentError(
            "too_large",
            f"{name} is {size} bytes; the limit is {limits.max_bytes} bytes ({limits.max_bytes.name})",
        )
    return size


def _type_name(value: object) -> str:
    kind = _kind(value)
    return type(value).__name__ if kind == "other" else kind


def _check_key(key: object, name: str, path: _Path, limits: Limits) -> None:
    if not isinstance(key, str):
        # json.dumps would silently turn 1 into "1" and collide with a real "1" key.
        raise DocumentError(
            "invalid_value",
            f"{_render(name, path)} has a key of type {type(key).__name__} "
            f"({reprlib.repr(key)}); object keys must be strings",
        )
    if len(key) > limits.max_key_length:
        raise DocumentError(
            "key_too_long",
            f"{_render(name, path)} has a key of {len(key)} characters "
            f"({_quote_key(key)}); the limit is {limits.max_key_length} characters "
            f"({limits.max_key_length.name})",
        )
    problem = _string_problem(key)
    if problem:
        raise DocumentError(
            "invalid_value",
            f"{_render(name, path)} has a key {_quote_key(key)} that {problem}",
        )


def _check_scalar(value: object, name: str, path: _Path) -> None:
    if isinstance(value, str):
        problem = _string_problem(value)
        if problem:
            raise DocumentError("invalid_value", f"{_render(name, path)} {problem}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            # json.dumps would write NaN/Infinity, which is not JSON.
            spelled = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            raise DocumentError(
                "invalid_value",
                f"{_render(name, path)} is {spelled}; JSON numbers must be finite",
            )
    elif isinstance(value, int):  # includes bool
        # Python refuses to print huge ints (sys.set_int_max_str_digits), so
        # json.dumps would fail later with a ValueError; only big ones can.
        if value.bit_length() > 64:
            try:
                int.__repr__(value)
            except ValueError:
                raise DocumentError(
                    "invalid_value",
                    f"{_render(name, path)} is an integer with too many digits to encode",
                ) from None
    elif value is not None:
        raise DocumentError(
            "invalid_value",
            f"{_render(name, path)} has unsupported type {type(value).__name__}; "
            "allowed types are object, array, string, number, boolean and null",
        )
