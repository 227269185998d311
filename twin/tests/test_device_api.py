"""Device twin API: GET /device/v1/shadow, POST /device/v1/shadow/reported."""

import pytest

from devices.models import Device
from devices.services import device_decommission, device_rotate_token
from iotcloud.testing import device_client
from twin.services import twin_update_desired

pytestmark = pytest.mark.django_db

REPORT = "/device/v1/shadow/reported"


def snapshot(device):
    return (
        Device.objects.filter(pk=device.pk)
        .values("desired_state", "desired_version", "reported_state", "reported_version")
        .get()
    )


def test_device_pulls_its_own_desired_state(device, device_api):
    twin_update_desired(device=device, document={"interval": 30})
    assert device_api.get("/device/v1/shadow", expect=200).json() == {"desired": {"interval": 30}, "version": 1}


def test_report_is_accepted_and_recorded(device, device_api):
    twin_update_desired(device=device, document={"interval": 30})
    body = device_api.post(REPORT, {"reported": {"interval": 30}, "version": 1}, expect=200).json()
    assert body == {"accepted": True, "version": 1}
    device.refresh_from_db()
    assert device.reported_state == {"interval": 30}
    assert device.reported_version == 1
    assert device.last_seen is not None and device.reported_updated_at is not None


def test_report_of_version_zero_is_fine_before_any_desired_write(device_api, device):
    device_api.post(REPORT, {"reported": {"boot": True}, "version": 0}, expect=200)
    assert snapshot(device)["reported_state"] == {"boot": True}


def test_older_report_never_rolls_back_version_or_state(device, device_api):
    for n in range(3):
        twin_update_desired(device=device, document={"n": n})
    device_api.post(REPORT, {"reported": {"n": 2}, "version": 3}, expect=200)
    device_api.post(REPORT, {"reported": {"n": 0}, "version": 1}, expect=200)
    state = snapshot(device)
    assert state["reported_version"] == 3
    assert state["reported_state"] == {"n": 2}


def test_version_above_desired_is_409_with_current_desired_version(device, device_api):
    twin_update_desired(device=device, document={"a": 1})
    before = snapshot(device)
    body = device_api.post(REPORT, {"reported": {"a": 1}, "version": 2}, expect=409).json()
    assert body["desired_version"] == 1
    assert "desired_version" in body["detail"]
    assert snapshot(device) == before


def test_negative_version_is_refused(device, device_api):
    before = snapshot(device)
    body = device_api.post(REPORT, {"reported": {"a": 1}, "version": -1}, expect=409).json()
    assert body["desired_version"] == 0
    assert snapshot(device) == before


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        pytest.param({"reported": {"a": 1}, "version": "1"}, 400, "version", id="version-string"),
        pytest.param({"reported": {"a": 1}, "version": 1.0}, 400, "version", id="version-float"),
        pytest.param({"reported": {"a": 1}, "version": True}, 400, "version", id="version-bool"),
        pytest.param({"reported": {"a": 1}, "version": None}, 400, "version", id="version-null"),
        pytest.param({"reported": {"a": 1}}, 400, "version", id="version-missing"),
        pytest.param({"reported": [1], "version": 0}, 400, "reported", id="reported-array"),
        pytest.param({"reported": "on", "version": 0}, 400, "reported", id="reported-string"),
        pytest.param({"version": 0}, 400, "reported", id="reported-missing"),
        pytest.param({"reported": {}, "version": 0, "extra": 1}, 400, "extra", id="unknown-field"),
        pytest.param({"reported": {"x" * 129: 1}, "version": 0}, 400, "TWIN_MAX_KEY_LENGTH", id="key-too-long"),
        pytest.param({"reported": {"a": [[[[[[1]]]]]]}, "version": 0}, 400, "TWIN_MAX_DEPTH", id="too-deep"),
        pytest.param({"reported": {"a": "x" * 9000}, "version": 0}, 413, "TWIN_MAX_DOCUMENT_BYTES", id="oversize"),
    ],
)
def test_bad_reports_are_refused_and_change_nothing(device, device_api, body, status, named):
    before = snapshot(device)
    response = device_api.post(REPORT, body, expect=status)
    assert named in response.json()["detail"]
    assert snapshot(device) == before


def test_lone_surrogate_in_report_is_400(device, device_api):
    # Valid JSON, but not storable text: PostgreSQL would refuse it with a 500.
    before = snapshot(device)
    response = device_api.raw("post", REPORT, b'{"reported": {"a": "\\ud800"}, "version": 0}')
    assert response.status_code == 400, response.content
    assert "surrogate" in response.json()["detail"]
    assert snapshot(device) == before


def test_malformed_json_report_is_400(device, device_api):
    before = snapshot(device)
    response = device_api.raw("post", REPORT, b'{"reported": ')
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert snapshot(device) == before


# --- the provision token ------------------------------------------------------------


@pytest.mark.parametrize("method,url", [("get", "/device/v1/shadow"), ("post", REPORT)])
def test_missing_token_is_401(api_client_factory, device, method, url):
    response = api_client_factory().call(method, url, {"reported": {}, "version": 0}, expect=401)
    assert response.json()["detail"] == "Missing provision token"
    assert "X-Provision-Token" in response["WWW-Authenticate"]


@pytest.mark.parametrize("token", ["tok-invalid", "iotd_" + "A" * 43, "x" * 5000, " "])
@pytest.mark.parametrize("method,url", [("get", "/device/v1/shadow"), ("post", REPORT)])
def test_invalid_token_is_401(api_client_factory, device, method, url, token):
    client = api_client_factory(HTTP_X_PROVISION_TOKEN=token)
    response = client.call(method, url, {"reported": {}, "version": 0}, expect=401)
    expected = "Missing provision token" if not token.strip() else "Invalid provision token"
    assert response.json()["detail"] == expected


def test_decommissioned_device_token_is_401(device, device_api):
    device_decommission(device=device)
    body = device_api.get("/device/v1/shadow", expect=401).json()
    assert body["detail"] == "Invalid provision token"
    device_api.post(REPORT, {"reported": {}, "version": 0}, expect=401)


def test_rotated_token_replaces_the_old_one(device, device_api):
    new = device_rotate_token(device=device)
    device_api.get("/device/v1/shadow", expect=401)
    device.token = new
    device_client(device).get("/device/v1/shadow", expect=200)


def test_operator_token_is_not_a_device_token(operator, device):
    operator.get("/device/v1/shadow", expect=401)


def test_device_token_reads_only_its_own_device(tenant, other_tenant, make_device):
    mine = make_device(tenant, "mine")
    theirs = make_device(other_tenant, "theirs")
    twin_update_desired(device=theirs, document={"secret": 1})
    body = device_client(mine).get("/device/v1/shadow", expect=200).json()
    assert body == {"desired": {}, "version": 0}
    # A device token is no operator credential either.
    device_client(mine).get(f"/customer/devices/{theirs.device_id}/twin", expect=401)


def test_last_seen_is_written_at_most_once_per_window(device, device_api, django_assert_max_num_queries):
    device_api.get("/device/v1/shadow", expect=200)
    first = Device.objects.get(pk=device.pk).last_seen
    assert first is not None
    with django_assert_max_num_queries(1):  # the token lookup only: no UPDATE
        device_api.get("/device/v1/shadow", expect=200)
    assert Device.objects.get(pk=device.pk).last_seen == first


def test_a_report_moves_last_seen_in_its_write_and_a_refused_one_still_does(device, device_api):
    """The report's own write moves last_seen (no separate touch); a refused report writes nothing, and the
    device was heard from anyway."""
    Device.objects.filter(pk=device.pk).update(last_seen=None)
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 1}, "version": 0}, expect=200)
    assert Device.objects.get(pk=device.pk).last_seen is not None
    Device.objects.filter(pk=device.pk).update(last_seen=None)
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 2}, "version": 5}, expect=409)
    refused = Device.objects.get(pk=device.pk)
    assert refused.last_seen is not None and refused.reported_state == {"a": 1}
    Device.objects.filter(pk=device.pk).update(last_seen=None)
    device_api.post("/device/v1/shadow/reported", {"reported": "nope", "version": 0}, expect=400)
    assert Device.objects.get(pk=device.pk).last_seen is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"reported": {"\\ud800": 1}, "version": 0}',
        b'{"reported": {"a": {"\\u0000": 1}}, "version": 0}',
        b'{"reported": {"\\udc00x": 1}, "version": 0, "\\ud800": 1}',
    ],
)
def test_unstorable_keys_are_400_and_the_error_is_renderable(device, device_api, raw):
    before = snapshot(device)
    response = device_api.raw("post", REPORT, raw)
    assert response.status_code == 400, response.content
    assert response.json()["detail"]
    assert snapshot(device) == before


def test_a_report_is_one_locked_read_and_one_write(postgres_only, device, device_api):
    """The token lookup locks the device's row and the engine writes from that read: no second SELECT
    of the row, one transaction (BEGIN and COMMIT around the two statements)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    twin_update_desired(device=device, document={"interval": 30})
    device_api.post("/device/v1/shadow/reported", {"reported": {"interval": 30}, "version": 1}, expect=200)
    Device.objects.filter(pk=device.pk).update(last_seen=None)  # due: moved by the write, not a touch of its own
    with CaptureQueriesContext(connection) as queries:
        device_api.post("/device/v1/shadow/reported", {"reported": {"interval": 31}, "version": 1}, expect=200)

    statements = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"] not in ("BEGIN", "COMMIT") and "SAVEPOINT" not in q["sql"]
    ]  # (the test's transaction)
    assert len(statements) == 2, statements
    assert "provision_token_hash" in statements[0] and statements[0].rstrip().endswith("FOR UPDATE")
    assert statements[1].lstrip().startswith("UPDATE device_state")
    row = Device.objects.get(pk=device.pk)
    assert row.reported_state == {"interval": 31} and row.last_seen is not None
