"""Example-based tests for twin.shadow (pure logic, no Django needed)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from twin.shadow import (
    DEFAULT_STALE_AFTER,
    PENDING,
    STALE,
    SYNCED,
    DocumentError,
    Limits,
    compute_delta,
    documents_equal,
    encoded_size,
    merge_patch,
    sync_status,
    validate_document,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DEFAULT_LIMITS = Limits()


def _nested(levels: int, leaf: object = 1, *, container: str = "dict") -> dict:
    """A document ``levels`` objects/arrays deep, built without recursion."""
    value: object = leaf
    for _ in range(levels - 1):
        value = {"a": value} if container == "dict" else [value]
    return {"a": value}


# ---------------------------------------------------------------------------
# compute_delta
# ---------------------------------------------------------------------------


def test_delta_returns_differing_keys() -> None:
    assert compute_delta({"a": 1, "b": 2}, {"a": 1, "b": 99}) == {"b": 2}


def test_delta_includes_missing_reported_keys() -> None:
    assert compute_delta({"a": 1}, {}) == {"a": 1}


def test_delta_excludes_reported_only_keys() -> None:
    assert compute_delta({}, {"a": 1}) == {}


def test_delta_mixed_example_from_docs() -> None:
    assert compute_delta({"a": 1, "b": 2}, {"a": 1, "b": 99, "c": 3}) == {"b": 2}


def test_delta_nested_keeps_only_differing_leaves() -> None:
    desired = {"n": {"x": 1, "y": 2}}
    reported = {"n": {"x": 1, "y": 3, "z": 0}}
    assert compute_delta(desired, reported) == {"n": {"y": 2}}


def test_delta_nested_in_sync_branch_is_omitted() -> None:
    desired = {"n": {"x": 1, "m": {"deep": True}}, "t": 20}
    reported = {"n": {"x": 1, "m": {"deep": True, "extra": 0}}, "t": 21}
    assert compute_delta(desired, reported) == {"t": 20}


def test_delta_dict_desired_over_non_dict_reported_is_whole() -> None:
    desired = {"n": {"x": 1, "y": 2}}
    assert compute_delta(desired, {"n": 5}) == {"n": {"x": 1, "y": 2}}
    assert compute_delta(desired, {"n": [1, 2]}) == {"n": {"x": 1, "y": 2}}
    assert compute_delta(desired, {}) == {"n": {"x": 1, "y": 2}}


def test_delta_non_dict_desired_over_dict_reported() -> None:
    assert compute_delta({"n": 5}, {"n": {"x": 1}}) == {"n": 5}


def test_delta_bool_is_not_int() -> None:
    assert compute_delta({"on": True}, {"on": 1}) == {"on": True}
    assert compute_delta({"on": 1}, {"on": True}) == {"on": 1}
    assert compute_delta({"off": False}, {"off": 0}) == {"off": False}
    assert compute_delta({"off": 0.0}, {"off": False}) == {"off": 0.0}


def test_delta_int_equals_float() -> None:
    assert compute_delta({"t": 1}, {"t": 1.0}) == {}
    assert compute_delta({"t": 1.0}, {"t": 1}) == {}
    assert compute_delta({"t": 0}, {"t": -0.0}) == {}


def test_delta_null_values() -> None:
    assert compute_delta({"a": None}, {"a": None}) == {}
    assert compute_delta({"a": None}, {}) == {"a": None}
    assert compute_delta({"a": None}, {"a": 0}) == {"a": None}
    assert compute_delta({"a": 0}, {"a": None}) == {"a": 0}


def test_delta_lists_are_compared_whole() -> None:
    desired = {"l": [1, 2, 3]}
    assert compute_delta(desired, {"l": [1, 2, 3]}) == {}
    assert compute_delta(desired, {"l": [1, 2, 4]}) == {"l": [1, 2, 3]}
    assert compute_delta(desired, {"l": [1, 2]}) == {"l": [1, 2, 3]}
    assert compute_delta(desired, {"l": [3, 2, 1]}) == {"l": [1, 2, 3]}
    # Objects inside lists are not diffed key by key: the whole list is sent.
    desired = {"l": [{"x": 1, "y": 2}]}
    assert compute_delta(desired, {"l": [{"x": 1, "y": 3}]}) == desired
    # ...but JSON equality still applies inside lists.
    assert compute_delta({"l": [1, {"x": 2}]}, {"l": [1.0, {"x": 2.0}]}) == {}
    assert compute_delta({"l": [True]}, {"l": [1]}) == {"l": [True]}


def test_delta_does_not_mutate_or_alias_inputs() -> None:
    desired = {"a": {"b": [1, {"c": 2}]}, "n": {"x": {"y": [1]}}, "same": 1}
    reported = {"a": 0, "n": {"x": {"y": [2]}}, "same": 1, "r": {"only": 1}}
    desired_before = copy.deepcopy(desired)
    reported_before = copy.deepcopy(reported)

    delta = compute_delta(desired, reported)

    assert delta == {"a": {"b": [1, {"c": 2}]}, "n": {"x": {"y": [1]}}}
    assert desired == desired_before
    assert reported == reported_before
    assert delta["a"] is not desired["a"]
    assert delta["a"]["b"] is not desired["a"]["b"]
    assert delta["a"]["b"][1] is not desired["a"]["b"][1]
    assert delta["n"]["x"]["y"] is not desired["n"]["x"]["y"]
    delta["a"]["b"].append("changed")
    assert desired == desired_before


# ---------------------------------------------------------------------------
# documents_equal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 1.0, True),
        (0, -0.0, True),
        (True, True, True),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (False, None, False),
        (0, None, False),
        ("", None, False),
        ("1", 1, False),
        ([], {}, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1, 2], [1, 2, 3], False),
        ([True], [1], False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),
        ({"a": {"b": [True]}}, {"a": {"b": [1]}}, False),
        ({"a": {"b": [0.5]}}, {"a": {"b": [0.5]}}, True),
    ],
)
def test_documents_equal(a: object, b: object, expected: bool) -> None:
    assert documents_equal(a, b) is expected
    assert documents_equal(b, a) is expected


def test_documents_equal_handles_very_deep_documents() -> None:
    deep_a = _nested(100_000)
    deep_b = _nested(100_000)
    assert documents_equal(deep_a, deep_b)
    assert not documents_equal(deep_a, _nested(100_000, leaf=2))


# ---------------------------------------------------------------------------
# merge_patch: RFC 7386 appendix A, all examples
# ---------------------------------------------------------------------------

RFC7386_EXAMPLES = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386_EXAMPLES)
def test_merge_patch_rfc7386_appendix_a(target: str, patch: str, expected: str) -> None:
    target_doc, patch_doc = json.loads(target), json.loads(patch)
    result = merge_patch(target_doc, patch_doc)
    assert json.dumps(result, sort_keys=True) == json.dumps(json.loads(expected), sort_keys=True)
    # Inputs are untouched.
    assert target_doc == json.loads(target)
    assert patch_doc == json.loads(patch)


def test_merge_patch_does_not_mutate_inputs() -> None:
    target = {"a": {"b": 1, "keep": [1, 2]}, "gone": 1, "list": [{"x": 1}]}
    patch = {"a": {"b": None, "c": {"d": [3]}}, "gone": None, "new": {"n": [4]}}
    target_before = copy.deepcopy(target)
    patch_before = copy.deepcopy(patch)

    result = merge_patch(target, patch)

    assert result == {
        "a": {"keep": [1, 2], "c": {"d": [3]}},
        "list": [{"x": 1}],
        "new": {"n": [4]},
    }
    assert target == target_before
    assert patch == patch_before


def test_merge_patch_result_does_not_alias_inputs() -> None:
    target = {"a": {"keep": [1, 2]}, "list": [{"x": 1}]}
    patch = {"a": {"c": {"d": [3]}}, "new": {"n": [4]}}
    result = merge_patch(target, patch)
    assert result is not target
    assert result["a"] is not target["a"]
    assert result["a"]["keep"] is not target["a"]["keep"]
    assert result["list"] is not target["list"]
    assert result["list"][0] is not target["list"][0]
    assert result["a"]["c"] is not patch["a"]["c"]
    assert result["a"]["c"]["d"] is not patch["a"]["c"]["d"]
    assert result["new"]["n"] is not patch["new"]["n"]
    # A non-object patch is copied too.
    list_patch = [{"x": [1]}]
    replaced = merge_patch(target, list_patch)
    assert replaced == list_patch
    assert replaced is not list_patch
    assert replaced[0]["x"] is not list_patch[0]["x"]


def test_merge_patch_shared_subobject_in_target_stays_independent() -> None:
    shared = {"x": 1}
    target = {"a": shared, "b": shared}  # same object under two keys
    result = merge_patch(target, {"a": {"x": 2}})
    assert result == {"a": {"x": 2}, "b": {"x": 1}}
    assert shared == {"x": 1}


def test_merge_patch_empty_patch_is_a_copy() -> None:
    target = {"a": {"b": 1}}
    result = merge_patch(target, {})
    assert result == target
    assert result is not target
    assert result["a"] is not target["a"]


def test_merge_patch_preserves_bool_and_number_types() -> None:
    result = merge_patch({"a": 1, "b": True}, {"a": True, "b": 1.5})
    assert result["a"] is True
    assert type(result["b"]) is float


# ---------------------------------------------------------------------------
# sync_status
# ---------------------------------------------------------------------------


def test_sync_status_synced() -> None:
    assert sync_status(3, 3, NOW, now=NOW) == "synced"


def test_sync_status_pending() -> None:
    assert sync_status(3, 2, NOW, now=NOW) == "pending"


def test_sync_status_stale_no_last_seen() -> None:
    assert sync_status(1, 1, None) == "stale"


def test_sync_status_stale_old_last_seen() -> None:
    assert sync_status(1, 1, NOW - timedelta(hours=2), now=NOW) == "stale"


def test_sync_status_constants() -> None:
    assert (SYNCED, PENDING, STALE) == ("synced", "pending", "stale")
    assert timedelta(minutes=30) == DEFAULT_STALE_AFTER


def test_sync_status_reported_ahead_is_synced() -> None:
    assert sync_status(3, 4, NOW, now=NOW) == SYNCED


def test_sync_status_stale_beats_version() -> None:
    old = NOW - timedelta(hours=2)
    assert sync_status(3, 2, old, now=NOW) == STALE
    assert sync_status(3, 3, None, now=NOW) == STALE


def test_sync_status_stale_after_boundary() -> None:
    at_limit = NOW - DEFAULT_STALE_AFTER
    assert sync_status(1, 1, at_limit, now=NOW) == SYNCED
    assert sync_status(2, 1, at_limit, now=NOW) == PENDING
    past_limit = at_limit - timedelta(microseconds=1)
    assert sync_status(1, 1, past_limit, now=NOW) == STALE


def test_sync_status_custom_stale_after() -> None:
    last_seen = NOW - timedelta(minutes=5)
    assert sync_status(1, 1, last_seen, now=NOW) == SYNCED
    short = timedelta(minutes=1)
    assert sync_status(1, 1, last_seen, now=NOW, stale_after=short) == STALE
    exact = timedelta(minutes=5)
    assert sync_status(1, 1, last_seen, now=NOW, stale_after=exact) == SYNCED
    long = timedelta(days=1)
    old = NOW - timedelta(hours=2)
    assert sync_status(1, 1, old, now=NOW, stale_after=long) == SYNCED


def test_sync_status_now_defaults_to_current_time() -> None:
    recent = datetime.now(UTC) - timedelta(seconds=5)
    assert sync_status(1, 1, recent) == SYNCED
    assert sync_status(2, 1, recent) == PENDING
    assert sync_status(1, 1, recent - timedelta(hours=1)) == STALE


def test_sync_status_compares_aware_datetimes_across_timezones() -> None:
    plus_two = timezone(timedelta(hours=2))
    last_seen = (NOW - timedelta(minutes=10)).astimezone(plus_two)
    assert sync_status(1, 1, last_seen, now=NOW) == SYNCED


# ---------------------------------------------------------------------------
# encoded_size / Limits / DocumentError
# ---------------------------------------------------------------------------


def test_encoded_size_is_compact_utf8_bytes() -> None:
    assert encoded_size({}) == 2
    assert encoded_size({"a": 1}) == len('{"a":1}')
    assert encoded_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert encoded_size({"é": "€"}) == len('{"":""}') + 2 + 3  # UTF-8, not \u escapes


def test_limits_defaults_and_frozen() -> None:
    limits = Limits()
    assert (limits.max_bytes, limits.max_depth, limits.max_key_length) == (
        8192,
        6,
        128,
    )
    with pytest.raises(AttributeError):
        limits.max_bytes = 1  # type: ignore[misc]


def test_document_error_is_value_error_with_code_and_message() -> None:
    err = DocumentError("too_large", "desired is big")
    assert isinstance(err, ValueError)
    assert err.code == "too_large"
    assert err.message == "desired is big"
    assert str(err) == err.message


# ---------------------------------------------------------------------------
# validate_document
# ---------------------------------------------------------------------------


def _refused(doc: object, limits: Limits = DEFAULT_LIMITS, name: str = "desired") -> DocumentError:
    with pytest.raises(DocumentError) as info:
        validate_document(doc, limits, name=name)
    assert str(info.value) == info.value.message
    return info.value


def test_validate_returns_encoded_size() -> None:
    doc = {"a": [1, 2.5, "x", True, None], "b": {"c": "é"}}
    assert validate_document(doc) == encoded_size(doc)
    assert validate_document({}) == 2


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        ([1, 2], "array"),
        ("text", "string"),
        (3, "number"),
        (1.5, "number"),
        (True, "boolean"),
        (None, "null"),
        ((1, 2), "tuple"),
    ],
)
def test_validate_not_an_object(doc: object, kind: str) -> None:
    err = _refused(doc)
    assert err.code == "not_an_object"
    assert err.message == f"desired must be a JSON object, got {kind}"


def test_validate_default_name_is_document() -> None:
    with pytest.raises(DocumentError, match=r"^document must be a JSON object"):
        validate_document([])


def _doc_of_size(size: int) -> dict:
    doc = {"a": "x" * (size - len('{"a":""}'))}
    assert encoded_size(doc) == size
    return doc


def test_validate_size_at_limit_is_accepted() -> None:
    assert validate_document(_doc_of_size(8192)) == 8192


def test_validate_size_one_past_limit_is_refused() -> None:
    err = _refused(_doc_of_size(8193))
    assert err.code == "too_large"
    assert err.message == ("desired is 8193 bytes; the limit is 8192 bytes (TWIN_MAX_DOCUMENT_BYTES)")


def test_validate_size_counts_utf8_bytes() -> None:
    limits = Limits(max_bytes=len('{"a":""}') + 4)
    assert validate_document({"a": "€x"}, limits) == limits.max_bytes  # 3 + 1 bytes
    err = _refused({"a": "€€"}, limits)  # 2 characters, 6 bytes
    assert err.code == "too_large"
    assert "14 bytes" in err.message
    assert "the limit is 12 bytes" in err.message


def test_validate_size_custom_limit() -> None:
    limits = Limits(max_bytes=100)
    assert validate_document(_doc_of_size(100), limits) == 100
    err = _refused(_doc_of_size(101), limits)
    assert err.code == "too_large"
    assert "the limit is 100 bytes (TWIN_MAX_DOCUMENT_BYTES)" in err.message


def test_validate_depth_at_limit_is_accepted() -> None:
    assert validate_document(_nested(6)) > 0  # root + 5 nested objects = 6 levels
    assert validate_document(_nested(6, container="list")) > 0
    assert validate_document(_nested(5, leaf={})) > 0  # root + 4 objects + {} = 6


def test_validate_depth_scalars_do_not_count() -> None:
    # Root object + 5 nested objects = 6 levels; the leaf string adds nothing.
    assert validate_document(_nested(6, leaf="deep")) > 0


def test_validate_depth_one_past_limit_is_refused() -> None:
    err = _refused(_nested(7))
    assert err.code == "too_deep"
    assert err.message == ("desired.a.a.a.a.a.a is nested 7 levels deep; the limit is 6 levels (TWIN_MAX_DEPTH)")


def test_validate_depth_counts_arrays() -> None:
    err = _refused(_nested(7, container="list"))
    assert err.code == "too_deep"
    assert "desired.a[0][0][0][0][0]" in err.message
    assert "TWIN_MAX_DEPTH" in err.message


def test_validate_depth_counts_empty_containers() -> None:
    err = _refused(_nested(6, leaf=[]))
    assert err.code == "too_deep"
    err = _refused(_nested(5, leaf={}), Limits(max_depth=5))
    assert err.code == "too_deep"
    assert "the limit is 5 levels" in err.message


def test_validate_custom_depth_limit() -> None:
    limits = Limits(max_depth=2)
    assert validate_document({"a": {"b": 1}, "c": [1]}, limits) > 0
    err = _refused({"a": {"b": {"c": 1}}}, limits)
    assert err.code == "too_deep"
    assert err.message.startswith("desired.a.b is nested 3 levels deep")
    assert "the limit is 2 levels (TWIN_MAX_DEPTH)" in err.message


@pytest.mark.parametrize("container", ["dict", "list"])
def test_validate_hundred_thousand_levels_is_too_deep_not_recursion_error(
    container: str,
) -> None:
    doc = _nested(100_000, container=container)
    err = _refused(doc)  # a RecursionError would fail this test
    assert err.code == "too_deep"
    assert "TWIN_MAX_DEPTH" in err.message


def test_validate_key_length_at_limit_is_accepted() -> None:
    key = "k" * 128
    assert validate_document({key: 1, "n": {key: {key: 2}}}) > 0


def test_validate_key_length_one_past_limit_is_refused() -> None:
    err = _refused({"n": {"ok": {"k" * 129: 1}}})
    assert err.code == "key_too_long"
    assert err.message.startswith("desired.n.ok has a key of 129 characters")
    assert "the limit is 128 characters (TWIN_MAX_KEY_LENGTH)" in err.message
    assert "k" * 129 not in err.message  # long keys are abbreviated


def test_validate_key_length_counts_characters_not_bytes() -> None:
    assert validate_document({"€" * 128: 1}) > 0
    assert _refused({"€" * 129: 1}).code == "key_too_long"


def test_validate_custom_key_length_limit() -> None:
    limits = Limits(max_key_length=3)
    assert validate_document({"abc": {"xyz": 1}}, limits) > 0
    err = _refused({"abc": [{"abcd": 1}]}, limits)
    assert err.code == "key_too_long"
    assert err.message.startswith("desired.abc[0] has a key of 4 characters")
    assert "the limit is 3 characters (TWIN_MAX_KEY_LENGTH)" in err.message


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
)
def test_validate_non_finite_floats_are_refused(value: float, spelled: str) -> None:
    err = _refused({"a": {"b": [0, value]}})
    assert err.code == "invalid_value"
    assert err.message == f"desired.a.b[1] is {spelled}; JSON numbers must be finite"


def test_validate_finite_float_extremes_are_accepted() -> None:
    doc = {"big": 1.7976931348623157e308, "tiny": 5e-324, "neg": -0.0}
    assert validate_document(doc) == encoded_size(doc)


def test_validate_nul_in_string_is_refused() -> None:
    assert validate_document({"a": "\x01 control chars are fine"}) > 0
    err = _refused({"a": {"b": ["ok", "bad\x00"]}})
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.a.b[1] contains a NUL character")


def test_validate_nul_in_key_is_refused() -> None:
    err = _refused({"a": {"b\x00": 1}})
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.a has a key ")
    assert "NUL" in err.message
    assert "\x00" not in err.message  # escaped for display


def test_validate_lone_surrogate_in_string_is_refused() -> None:
    assert validate_document({"a": "\U0001f600 paired is fine"}) > 0
    err = _refused({"a": ["\ud800"]})
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.a[0] contains a lone surrogate (\\ud800)")


def test_validate_lone_surrogate_in_key_is_refused() -> None:
    err = _refused({"x": {"\udfff": 1}})
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.x has a key ")
    assert "lone surrogate" in err.message
    err.message.encode("utf-8")  # the message itself must be printable


def test_validate_non_string_key_is_refused() -> None:
    err = _refused({"a": {1: "x"}})
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.a has a key of type int")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        (b"bytes", "bytes"),
        (object(), "object"),
        (datetime(2024, 1, 1), "datetime"),
    ],
)
def test_validate_unsupported_types_are_refused(value: object, type_name: str) -> None:
    err = _refused({"a": [{"b": value}]})
    assert err.code == "invalid_value"
    assert err.message.startswith(f"desired.a[0].b has unsupported type {type_name};")


def test_validate_unprintable_huge_int_is_refused() -> None:
    assert validate_document({"n": 2**64}) > 0
    err = _refused({"n": 10**5000}, Limits(max_bytes=10**6))
    assert err.code == "invalid_value"
    assert err.message.startswith("desired.n is an integer")


def test_validate_paths_quote_awkward_keys() -> None:
    err = _refused({"a.b": {"c d": "\x00"}})
    assert err.message.startswith('desired["a.b"]["c d"] contains a NUL')


def test_validate_reports_first_problem_in_document_order() -> None:
    err = _refused({"a": "fine", "b": ["ok", float("nan")], "c": "\x00"})
    assert err.message.startswith("desired.b[1] ")


def test_validate_structure_is_checked_before_size() -> None:
    # Both too deep and too large: the cheap structural error wins.
    doc = _nested(7, leaf="x" * 10_000)
    assert _refused(doc).code == "too_deep"
