"""Property-based tests for twin.shadow (hypothesis, no Django needed)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.shadow import (
    DocumentError,
    Limits,
    compute_delta,
    documents_equal,
    encoded_size,
    merge_patch,
    validate_document,
)

# Modest example counts keep the whole file to a few seconds; no example
# database so that test runs leave nothing behind in the project.
PROPERTY = settings(max_examples=100, deadline=None, database=None)

_MISSING = object()

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# A few fixed keys make desired/reported documents overlap often enough to
# exercise the "both sides have this key" branches. Key content does not
# matter to delta/merge logic (the validation strategies below use full
# Unicode), so a tiny alphabet keeps generation cheap.
keys = st.sampled_from(["a", "b", "c", "on", "temp"]) | st.text(alphabet="abxyé", max_size=3)

# Ints stay within +-2**53 so that float(i) == i exactly (used by floatify).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


def json_values(*, null_members: bool = True) -> st.SearchStrategy[Any]:
    """JSON values; with ``null_members=False`` no object member is ``None``.

    Nulls inside arrays are still allowed: merge patches replace arrays whole,
    so only object members carry the "null deletes" meaning.
    """
    values = st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=8,
    )
    # Mapping rather than filtering: no examples are thrown away.
    return values if null_members else values.map(drop_null_members)


def json_objects(*, null_members: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, json_values(), max_size=4).map(
        lambda doc: doc if null_members else drop_null_members(doc)
    )


def drop_null_members(value: Any) -> Any:
    """Remove every ``None`` object member (arrays keep their nulls)."""
    if isinstance(value, dict):
        return {key: drop_null_members(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_null_members(item) for item in value]
    return value


# Anything validate_document might be handed: bad floats, NUL, lone
# surrogates, non-str keys, non-JSON types, non-object roots.
wild_scalars = st.one_of(
    scalars,
    st.floats(),  # includes NaN and +-Infinity
    st.text(alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff"]), max_size=6),
    st.integers(),
    st.sets(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.binary(max_size=3),
)
wild_keys = keys | st.text(max_size=12) | st.integers() | st.sampled_from(["\x00"])
wild_values = st.recursive(
    wild_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(wild_keys, children, max_size=4),
    max_leaves=10,
)

# Documents that break no content rule; only the limits can refuse them.
clean_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
clean_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        clean_text,
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(clean_text, children, max_size=4),
    max_leaves=10,
)
clean_objects = st.dictionaries(clean_text, clean_values, max_size=4)

# ---------------------------------------------------------------------------
# Helpers (independent of the code under test)
# ---------------------------------------------------------------------------


def canon(value: Any) -> str:
    """Exact structural identity: keeps True vs 1 and 1 vs 1.0 apart."""
    return json.dumps(value, sort_keys=True)


def containers(value: Any) -> Iterator[Any]:
    """Every dict and list inside ``value``, including itself."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            yield item
            stack.extend(item)


def member_paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(path, value) for every object member reachable through objects only."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = (*prefix, key)
            yield path, item
            yield from member_paths(item, path)


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def depth(value: Any) -> int:
    """Nesting depth as Limits.max_depth counts it (scalars add nothing)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def json_normal_form(value: Any) -> Any:
    """A reference model of JSON equality: tagged, exact numbers."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", Fraction(value))
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    if isinstance(value, list):
        return ("array", [json_normal_form(item) for item in value])
    return ("object", {key: json_normal_form(item) for key, item in value.items()})


def scalars_in(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def bools_to_ints(value: Any) -> Any:
    """Turn every bool into the int Python considers equal to it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return [bools_to_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: bools_to_ints(item) for key, item in value.items()}
    return value


def floatify(value: Any) -> Any:
    """Turn every (non-bool) int into the equal float."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [floatify(item) for item in value]
    if isinstance(value, dict):
        return {key: floatify(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------
# documents_equal
# ---------------------------------------------------------------------------


@PROPERTY
@given(json_values(), json_values())
def test_documents_equal_matches_reference_model(a: Any, b: Any) -> None:
    expected = json_normal_form(a) == json_normal_form(b)
    assert documents_equal(a, b) is expected
    assert documents_equal(b, a) is expected


@PROPERTY
@given(json_values())
def test_documents_equal_is_reflexive_and_ignores_int_float(value: Any) -> None:
    assert documents_equal(value, copy.deepcopy(value))
    assert documents_equal(value, floatify(value))


@PROPERTY
@given(json_values())
def test_documents_equal_never_confuses_bools_and_numbers(value: Any) -> None:
    has_bools = any(isinstance(item, bool) for item in scalars_in(value))
    assert documents_equal(value, bools_to_ints(value)) is not has_bools


# ---------------------------------------------------------------------------
# merge_patch
# ---------------------------------------------------------------------------


@PROPERTY
@given(json_objects(null_members=False))
def test_merge_patch_with_itself_is_identity(doc: dict[str, Any]) -> None:
    assert canon(merge_patch(doc, doc)) == canon(doc)


@PROPERTY
@given(json_values(), json_values())
def test_merge_patch_never_mutates_or_aliases_inputs(target: Any, patch: Any) -> None:
    target_before, patch_before = canon(target), canon(patch)
    result = merge_patch(target, patch)
    assert canon(target) == target_before
    assert canon(patch) == patch_before
    input_ids = {id(c) for c in containers(target)} | {id(c) for c in containers(patch)}
    assert not input_ids & {id(c) for c in containers(result)}


@PROPERTY
@given(json_values(), json_values())
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert canon(merge_patch(once, patch)) == canon(once)


@PROPERTY
@given(json_values(), json_objects())
def test_merge_patch_nulls_delete_and_are_never_introduced(target: Any, patch: dict[str, Any]) -> None:
    result = merge_patch(target, patch)
    assert isinstance(result, dict)
    for path, value in member_paths(patch):
        if value is None:
            assert lookup(result, path) is _MISSING
    # Any null member left in the result came from the target, untouched by p.
    for path, value in member_paths(result):
        if value is None:
            assert lookup(patch, path) is _MISSING
            assert lookup(target, path) is None


@PROPERTY
@given(json_values(), json_values())
def test_merge_patch_non_object_patch_replaces(target: Any, patch: Any) -> None:
    result = merge_patch(target, patch)
    if not isinstance(patch, dict):
        assert canon(result) == canon(patch)
    else:
        assert isinstance(result, dict)


# ---------------------------------------------------------------------------
# compute_delta
# ---------------------------------------------------------------------------


@PROPERTY
@given(json_objects())
def test_delta_against_itself_is_empty(doc: dict[str, Any]) -> None:
    assert compute_delta(doc, doc) == {}
    assert compute_delta(doc, copy.deepcopy(doc)) == {}
    assert compute_delta(doc, floatify(doc)) == {}


@PROPERTY
@given(json_objects())
def test_delta_against_empty_report_is_everything(doc: dict[str, Any]) -> None:
    # Every key is missing from {}, so every value is copied whole: holds for
    # any desired document, nulls and empty objects included.
    delta = compute_delta(doc, {})
    assert canon(delta) == canon(doc)
    assert compute_delta({}, doc) == {}


@PROPERTY
@given(json_objects(null_members=False), json_objects())
def test_merging_the_delta_converges(desired: dict[str, Any], reported: dict[str, Any]) -> None:
    # Only valid without null members in desired: a desired null would show up
    # in the delta and then *delete* the key when merged.
    reported_before = canon(reported)
    result = merge_patch(reported, compute_delta(desired, reported))
    assert compute_delta(desired, result) == {}
    assert canon(reported) == reported_before
    # Keys the device reports beyond what is desired survive the merge.
    for key in reported.keys() - desired.keys():
        assert canon(result[key]) == canon(reported[key])


@PROPERTY
@given(json_objects(), json_objects())
def test_delta_is_a_part_of_desired(desired: dict[str, Any], reported: dict[str, Any]) -> None:
    desired_before, reported_before = canon(desired), canon(reported)
    delta = compute_delta(desired, reported)
    assert canon(desired) == desired_before
    assert canon(reported) == reported_before

    # Every path in the delta exists in desired; none is reported-only.
    for path, _ in member_paths(delta):
        assert lookup(desired, path) is not _MISSING

    def check(delta: dict, desired: dict, reported: dict) -> None:
        assert delta.keys() <= desired.keys()
        for key, value in delta.items():
            want, have = desired[key], reported.get(key, _MISSING)
            if isinstance(want, dict) and isinstance(have, dict):
                assert value, "empty nested deltas are omitted"
                check(value, want, have)
            else:
                assert canon(value) == canon(want)
                assert have is _MISSING or not documents_equal(want, have)

    check(delta, desired, reported)
    ids = {id(c) for c in containers(desired)} | {id(c) for c in containers(reported)}
    assert not ids & {id(c) for c in containers(delta)}


@PROPERTY
@given(json_objects(), json_objects())
def test_delta_is_empty_when_desired_is_covered(desired: dict[str, Any], reported: dict[str, Any]) -> None:
    # Reporting extra keys never creates a delta.
    covered = {**reported, **copy.deepcopy(desired)}
    assert compute_delta(desired, covered) == {}
    if documents_equal(desired, reported):
        assert compute_delta(desired, reported) == {}


# ---------------------------------------------------------------------------
# validate_document
# ---------------------------------------------------------------------------

GENEROUS = Limits(max_bytes=10**7, max_depth=1000, max_key_length=1000)


@PROPERTY
@given(wild_values)
def test_validate_either_refuses_or_returns_encoded_size(doc: Any) -> None:
    try:
        size = validate_document(doc, name="desired")
    except DocumentError as err:
        assert err.code in {
            "not_an_object",
            "too_large",
            "too_deep",
            "key_too_long",
            "invalid_value",
        }
        assert str(err) == err.message
        assert err.message.startswith("desired")
        err.message.encode("utf-8")  # printable even for surrogate input
    else:
        assert isinstance(doc, dict)
        assert size == encoded_size(doc) <= Limits().max_bytes
        # What is accepted really is strict JSON, storable in jsonb, and round-trips.
        text = json.dumps(doc, allow_nan=False, ensure_ascii=False)
        assert "\x00" not in text
        assert documents_equal(json.loads(text.encode("utf-8")), doc)


@PROPERTY
@given(clean_objects)
def test_validate_accepts_clean_documents_within_limits(doc: dict[str, Any]) -> None:
    assert validate_document(doc, GENEROUS) == encoded_size(doc)


@PROPERTY
@given(
    clean_objects,
    st.sampled_from(["\x00", "a\x00b", "\ud800", "a\udfffb", float("nan"), float("-inf"), {1}, b"x", (1,)]),
)
def test_validate_finds_one_bad_value_anywhere(doc: dict[str, Any], bad: Any) -> None:
    wrapped = {"wrap": [doc, {"k": bad}]}
    try:
        validate_document(wrapped, GENEROUS, name="desired")
    except DocumentError as err:
        assert err.code == "invalid_value"
        assert err.message.startswith("desired.wrap[1].k ")
    else:
        raise AssertionError(f"accepted {bad!r}")


@PROPERTY
@given(clean_objects, st.sampled_from(["\x00", "a\x00b", "\ud800", "a\udfffb"]))
def test_validate_finds_one_bad_key_anywhere(doc: dict[str, Any], bad: str) -> None:
    wrapped = {"wrap": [doc, {bad: 1}]}
    try:
        validate_document(wrapped, GENEROUS, name="desired")
    except DocumentError as err:
        assert err.code == "invalid_value"
        assert err.message.startswith("desired.wrap[1] has a key ")
    else:
        raise AssertionError(f"accepted key {bad!r}")


@PROPERTY
@given(clean_objects, st.integers(min_value=2, max_value=400))
def test_validate_size_limit_is_exact(doc: dict[str, Any], max_bytes: int) -> None:
    limits = Limits(max_bytes=max_bytes, max_depth=1000, max_key_length=1000)
    size = encoded_size(doc)
    if size <= max_bytes:
        assert validate_document(doc, limits) == size
    else:
        try:
            validate_document(doc, limits)
        except DocumentError as err:
            assert err.code == "too_large"
            assert f"is {size} bytes; the limit is {max_bytes} bytes" in err.message
        else:
            raise AssertionError("oversized document accepted")


@PROPERTY
@given(clean_objects, st.integers(min_value=1, max_value=6))
def test_validate_depth_limit_is_exact(doc: dict[str, Any], max_depth: int) -> None:
    limits = Limits(max_bytes=10**7, max_depth=max_depth, max_key_length=1000)
    if depth(doc) <= max_depth:
        assert validate_document(doc, limits) == encoded_size(doc)
    else:
        try:
            validate_document(doc, limits)
        except DocumentError as err:
            assert err.code == "too_deep"
            assert "TWIN_MAX_DEPTH" in err.message
        else:
            raise AssertionError("over-deep document accepted")


@PROPERTY
@given(clean_objects, st.integers(min_value=0, max_value=5))
def test_validate_key_length_limit_is_exact(doc: dict[str, Any], max_key_length: int) -> None:
    limits = Limits(max_bytes=10**7, max_depth=1000, max_key_length=max_key_length)
    longest = max((len(path[-1]) for path, _ in _all_member_paths(doc)), default=0)
    if longest <= max_key_length:
        assert validate_document(doc, limits) == encoded_size(doc)
    else:
        try:
            validate_document(doc, limits)
        except DocumentError as err:
            assert err.code == "key_too_long"
            assert "TWIN_MAX_KEY_LENGTH" in err.message
        else:
            raise AssertionError("over-long key accepted")


def _all_member_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Like member_paths, but also descends into arrays."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key), item
            yield from _all_member_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _all_member_paths(item, (*prefix, index))
