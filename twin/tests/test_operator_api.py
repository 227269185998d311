"""Operator twin API: /customer/devices/{id}/twin[/desired|/delta]."""

import pytest
from django.test import override_settings

from devices.choices import Role
from devices.models import Device
from devices.services import device_decommission
from iotcloud.testing import make_operator_client

pytestmark = pytest.mark.django_db


def twin_url(device_id, suffix=""):
    return f"/customer/devices/{device_id}/twin{suffix}"


def snapshot(device):
    return (
        Device.objects.filter(pk=device.pk)
        .values("desired_state", "desired_version", "reported_state", "reported_version", "shadow_updated_at")
        .get()
    )


def test_get_twin_has_every_contract_field(operator, device):
    body = operator.get(twin_url(device.device_id), expect=200).json()
    for field in [
        "device_id",
        "desired",
        "reported",
        "delta",
        "desired_version",
        "reported_version",
        "sync_status",
        "shadow_updated_at",
        "last_seen",
    ]:
        assert field in body
    assert body["desired"] == {} and body["desired_version"] == 0
    assert body["sync_status"] == "stale"  # never seen


def test_patch_merges_and_advances_version_by_one(operator, device):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1, "n": {"x": 1, "y": 2}}}, expect=200)
    response = operator.patch(
        twin_url(device.device_id, "/desired"), {"desired": {"b": 2, "a": None, "n": {"y": None}}}, expect=200
    )
    body = response.json()
    assert body["desired"] == {"b": 2, "n": {"x": 1}}
    assert body["desired_version"] == 2
    assert response["ETag"] == '"2"'
    device.refresh_from_db()
    assert device.desired_state == {"b": 2, "n": {"x": 1}} and device.desired_version == 2
    assert device.shadow_updated_at is not None


def test_put_replaces_desired(operator, device):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=200)
    body = operator.put(twin_url(device.device_id, "/desired"), {"desired": {"b": 2, "c": None}}, expect=200).json()
    assert body["desired"] == {"b": 2}
    assert body["desired_version"] == 2


def test_expected_version_conflict_is_409_with_current_version(operator, device):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=200)
    before = snapshot(device)
    body = operator.patch(
        twin_url(device.device_id, "/desired"), {"desired": {"a": 2}, "expected_version": 0}, expect=409
    ).json()
    assert body["desired_version"] == 1 and body["code"] == "version_conflict"
    assert snapshot(device) == before
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 2}, "expected_version": 1}, expect=200)


def test_if_match_header_is_an_expected_version(operator, device):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=200)
    operator.put(twin_url(device.device_id, "/desired"), {"desired": {"a": 3}}, expect=409, **{"If-Match": '"0"'})
    operator.put(twin_url(device.device_id, "/desired"), {"desired": {"a": 3}}, expect=200, **{"If-Match": '"1"'})
    body = operator.put(
        twin_url(device.device_id, "/desired"), {"desired": {"a": 3}}, expect=400, **{"If-Match": "abc"}
    ).json()
    assert "If-Match" in body["detail"]


def test_delta_endpoint(operator, device, device_api):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1, "b": 2}}, expect=200)
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 1, "b": 99, "c": 3}, "version": 1}, expect=200)
    body = operator.get(twin_url(device.device_id, "/delta"), expect=200).json()
    assert body == {
        "device_id": device.device_id,
        "delta": {"b": 2},
        "in_sync": False,
        "desired_version": 1,
        "reported_version": 1,
    }
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 1, "b": 2}, "version": 1}, expect=200)
    assert operator.get(twin_url(device.device_id, "/delta"), expect=200).json()["in_sync"] is True


def test_unknown_device_is_404_naming_it(operator, tenant):
    body = operator.get(twin_url("ghost"), expect=404).json()
    assert "ghost" in body["detail"]
    operator.patch(twin_url("ghost", "/desired"), {"desired": {"a": 1}}, expect=404)
    operator.get(twin_url("ghost", "/delta"), expect=404)


def test_decommissioned_device_refuses_desired_writes(operator, device):
    device_decommission(device=device)
    body = operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=409).json()
    assert "decommissioned" in body["detail"]
    assert snapshot(device)["desired_version"] == 0


def test_viewer_reads_but_cannot_write(tenant, device):
    viewer = make_operator_client(tenant, "vic", role=Role.VIEWER)
    viewer.get(twin_url(device.device_id), expect=200)
    body = viewer.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=403).json()
    assert "viewer" in body["detail"]
    assert snapshot(device)["desired_version"] == 0


def test_requests_without_or_with_a_bad_bearer_token_are_401(api_client_factory, device):
    anonymous = api_client_factory()
    response = anonymous.get(twin_url(device.device_id), expect=401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    bad = api_client_factory(HTTP_AUTHORIZATION="Bearer iotop_" + "0" * 64)
    bad.get(twin_url(device.device_id), expect=401)
    bad.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": 1}}, expect=401)


def test_user_without_tenant_is_403(api_client_factory, device):
    from django.contrib.auth import get_user_model

    from devices.services import operator_token_create

    user = get_user_model().objects.create(username="drifter")
    client = api_client_factory(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=user)}")
    client.get(twin_url(device.device_id), expect=403)


def test_superuser_sees_every_tenant(tenant, other_tenant, make_device):
    make_device(tenant, "same-id")
    make_device(other_tenant, "same-id")
    only_b = make_device(other_tenant, "only-b")
    root = make_operator_client(None, "root", superuser=True)
    root.get(twin_url(only_b.device_id), expect=200)
    body = root.get(twin_url("same-id"), expect=400).json()
    assert "?tenant=" in body["detail"]
    assert root.get(twin_url("same-id") + "?tenant=globex", expect=200).json()["tenant"] == "globex"


# --- bad input: a clear 4xx naming the problem, and nothing changed -------------------

BAD_DESIRED_BODIES = [
    pytest.param({"desired": [1, 2]}, 400, "desired", id="desired-array"),
    pytest.param({"desired": "x"}, 400, "desired", id="desired-string"),
    pytest.param({"desired": None}, 400, "desired", id="desired-null"),
    pytest.param({}, 400, "desired", id="desired-missing"),
    pytest.param({"desired": {"a": 1}, "desierd": {}}, 400, "desierd", id="unknown-field"),
    pytest.param({"desired": {"a": 1}, "expected_version": "1"}, 400, "expected_version", id="version-string"),
    pytest.param({"desired": {"a": 1}, "expected_version": 1.5}, 400, "expected_version", id="version-float"),
    pytest.param({"desired": {"a": 1}, "expected_version": True}, 400, "expected_version", id="version-bool"),
    pytest.param({"desired": {"a": 1}, "expected_version": -1}, 400, "expected_version", id="version-negative"),
    pytest.param({"desired": {"k" * 129: 1}}, 400, "TWIN_MAX_KEY_LENGTH", id="key-too-long"),
    pytest.param({"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}, 400, "TWIN_MAX_DEPTH", id="too-deep"),
    pytest.param({"desired": {"blob": "x" * 9000}}, 413, "TWIN_MAX_DOCUMENT_BYTES", id="oversize"),
    pytest.param({"desired": {"a": "nul\u0000byte"}}, 400, "desired", id="nul-character"),
    pytest.param([1, 2], 400, "object", id="body-array"),
]


@pytest.mark.parametrize(("body", "status", "named"), BAD_DESIRED_BODIES)
@pytest.mark.parametrize("method", ["patch", "put"])
def test_bad_desired_writes_are_refused_and_change_nothing(operator, device, method, body, status, named):
    before = snapshot(device)
    response = operator.call(method, twin_url(device.device_id, "/desired"), body, expect=status)
    assert named in response.json()["detail"]
    assert snapshot(device) == before


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"desired": {', "JSON parse error"),
        (b'{"desired": NaN}', "NaN"),
        (b"\xff\xfe", "UTF-8"),
        (b"[" * 30_000 + b"]" * 30_000, "nested"),
    ],
)
def test_malformed_json_is_400(operator, device, raw, named):
    before = snapshot(device)
    response = operator.raw("patch", twin_url(device.device_id, "/desired"), raw)
    assert response.status_code in (400, 413), response.content[:300]
    assert named in response.json()["detail"]
    assert snapshot(device) == before


@override_settings(API_MAX_BODY_BYTES=1024)
def test_body_over_the_request_limit_is_413(operator, device):
    response = operator.raw(
        "patch", twin_url(device.device_id, "/desired"), b'{"desired": {"a": "' + b"x" * 2000 + b'"}}'
    )
    assert response.status_code == 413
    assert "API_MAX_BODY_BYTES" in response.json()["detail"]


def test_merge_result_over_the_size_limit_is_413(operator, device):
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"a": "x" * 5000}}, expect=200)
    before = snapshot(device)
    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"b": "y" * 5000}}, expect=413)
    assert snapshot(device) == before


def test_a_desired_write_reads_the_device_once_locked_and_answers_from_what_it_wrote(postgres_only, operator, device):
    """The device is found and locked in one SELECT ... FOR UPDATE, the engine writes from that read, and
    the answer is what was written: no second read of the row, no knox cleanup query."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"fan": 1}}, expect=200)
    with CaptureQueriesContext(connection) as queries:
        body = operator.patch(twin_url(device.device_id, "/desired"), {"desired": {"led": "on"}}, expect=200).json()

    statements = [q["sql"] for q in queries.captured_queries
                  if q["sql"] not in ("BEGIN", "COMMIT") and "SAVEPOINT" not in q["sql"]]  # fmt: skip
    device_reads = [s for s in statements if s.lstrip().startswith("SELECT") and 'FROM "device_state"' in s]
    assert len(device_reads) == 1 and device_reads[0].rstrip().endswith('FOR UPDATE OF "device_state"'), statements
    assert sum("knox_authtoken" in s for s in statements) == 1, statements
    assert len(statements) == 5, statements  # token, membership, device, the write, the named shadows' names
    stored = snapshot(device)
    assert body["desired"] == stored["desired_state"] == {"fan": 1, "led": "on"}
    assert body["desired_version"] == stored["desired_version"] == 2
    assert body["shadow_updated_at"] is not None and body["metadata"]["desired"]["led"]["timestamp"] > 0
