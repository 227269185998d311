"""Bulk provisioning: POST /customer/devices/bulk (JSON and CSV), the admin's upload page, the service's rules."""

import csv
import io
import time

import pytest
from django.urls import reverse

from devices import services
from devices.bulk import BulkRow, RowsRefused, read_csv
from devices.choices import Role
from devices.models import AuditEvent, Device
from devices.tokens import hash_token
from iotcloud.errors import InvalidInput, PayloadTooLarge
from iotcloud.rules import Limit
from iotcloud.sealing import unseal
from iotcloud.testing import device_client, make_operator_client, staff_client

pytestmark = pytest.mark.django_db

URL = "/customer/devices/bulk"


def csv_post(api, body: bytes | str, url=URL, **headers):
    raw = body.encode() if isinstance(body, str) else body
    return api.raw("post", url, raw, content_type="text/csv", **headers)


def provisioned(tenant, device_id, token):
    device = Device.objects.get(tenant=tenant, device_id=device_id)
    device.token = token
    return device


def read_tokens(content: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content.decode())))


# --- the happy paths --------------------------------------------------------------------------------------


def test_ten_thousand_devices_in_one_call(operator, tenant):
    rows = [{"device_id": f"meter-{n:05d}", "tags": {"site": f"site-{n % 7}", "batch": "b1"}} for n in range(10_000)]
    started = time.perf_counter()
    body = operator.post(URL, {"devices": rows}, expect=201).json()
    elapsed = time.perf_counter() - started
    assert body["tenant"] == "acme" and body["count"] == 10_000
    assert [d["device_id"] for d in body["devices"]] == [r["device_id"] for r in rows]  # in the upload's order
    assert Device.objects.filter(tenant=tenant).count() == 10_000
    tokens = {d["device_id"]: d["provision_token"] for d in body["devices"]}
    assert len(set(tokens.values())) == 10_000
    for device_id in ["meter-00000", "meter-04999", "meter-09999"]:
        device = provisioned(tenant, device_id, tokens[device_id])
        assert device.provision_token_hash == hash_token(tokens[device_id])
        assert device.tags == {"site": f"site-{int(device_id[-5:]) % 7}", "batch": "b1"}
        device_client(device).get("/device/v1/shadow", expect=200)
    audit = AuditEvent.objects.filter(tenant=tenant, action="device.provision")
    assert audit.count() == 10_000
    assert set(audit.values_list("actor", "channel")) == {("operator:alice", "api")}
    assert audit.filter(device__device_id="meter-00042").get().after == {"tags": {"site": "site-0", "batch": "b1"}}
    print(f"10,000 devices over the API in {elapsed:.2f} s")  # shown with pytest -s


def test_csv_upload_with_tag_columns(operator, tenant):
    body = operator.raw(
        "post",
        URL,
        "\ufeffdevice_id,tag:site,tag:floor\r\npump-1,paris,3\r\n\r\npump-2,oslo,\r\n,,\r\npump-3\r\n".encode(),
        content_type="text/csv; charset=utf-8",
    )
    assert body.status_code == 201, body.content
    devices = {d["device_id"]: d for d in body.json()["devices"]}
    assert list(devices) == ["pump-1", "pump-2", "pump-3"]  # blank lines and lines of empty cells skipped
    assert devices["pump-1"]["tags"] == {"site": "paris", "floor": "3"}
    assert devices["pump-2"]["tags"] == {"site": "oslo"}  # an empty cell: no such tag
    assert devices["pump-3"]["tags"] == {}  # cells missing at the end are empty
    device = provisioned(tenant, "pump-2", devices["pump-2"]["provision_token"])
    assert device.tags == {"site": "oslo"}
    device_client(device).get("/device/v1/shadow", expect=200)


@pytest.mark.parametrize("ask", [{"HTTP_ACCEPT": "text/csv"}, {"url": URL + "?format=csv"}])
def test_tokens_as_a_csv_file_to_download(operator, tenant, ask):
    url = ask.pop("url", URL)
    response = operator.client.post(url, {"devices": [{"device_id": "d-1"}, {"device_id": "d-2"}]}, format="json",
                                    **ask)  # fmt: skip
    assert response.status_code == 201, response.content
    assert response["Content-Type"].startswith("text/csv")
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="iotcloud-tokens-acme-') and disposition.endswith('.csv"')
    assert "no-store" in response["Cache-Control"]
    assert response.content.decode().splitlines()[0] == "device_id,provision_token"
    tokens = read_tokens(response.content)
    assert [t["device_id"] for t in tokens] == ["d-1", "d-2"]
    for row in tokens:
        device = provisioned(tenant, row["device_id"], row["provision_token"])
        device_client(device).get("/device/v1/shadow", expect=200)


def test_csv_in_and_csv_out(operator, tenant):
    response = csv_post(operator, "device_id,tag:site\ncsv-1,paris\n", Accept="text/csv")
    assert response.status_code == 201 and response["Content-Type"].startswith("text/csv")
    assert [t["device_id"] for t in read_tokens(response.content)] == ["csv-1"]


def test_json_answer_is_not_cached(operator):
    response = operator.post(URL, {"devices": [{"device_id": "x-1"}]}, expect=201)
    assert "no-store" in response["Cache-Control"] and "Content-Disposition" not in response


# --- refusals: nothing half-created ----------------------------------------------------------------------


def test_a_file_with_bad_rows_is_refused_as_a_whole_with_the_rows_named(operator, tenant, other_tenant, make_device):
    make_device(tenant, "taken-1")
    make_device(other_tenant, "theirs-1")  # ids are per tenant: this one is fine in acme
    rows = [
        {"device_id": "ok-1", "tags": {"site": "paris"}},
        {"device_id": "a/b"},
        {"device_id": "ok-2", "tags": {"site": 5}},
        {"device_id": "ok-1"},
        {"device_id": "taken-1"},
        {"device_id": "theirs-1"},
        {"device_id": "ok-3", "tags": {"bad key": "x"}},
        "not-an-object",
        {"device_id": "ok-4", "colour": "red"},
        {"tags": {}},
        {"device_id": 7},
    ]
    before = Device.objects.count(), AuditEvent.objects.count()
    body = operator.post(URL, {"devices": rows}, expect=400).json()
    assert body["code"] == "invalid_rows"
    assert body["rows_refused"] == 9 and body["rows_total"] == 11
    named = {e["row"]: e for e in body["rows"]}
    assert sorted(named) == [2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert named[2]["code"] == "invalid_device_id" and named[2]["device_id"] == "a/b"
    assert named[3]["code"] == "invalid_tags" and "site" in named[3]["detail"]
    assert named[4]["code"] == "duplicate_device_id" and "row 1" in named[4]["detail"]
    assert named[5]["code"] == "device_exists" and "taken-1" in named[5]["detail"]
    assert "bad key" in named[7]["detail"]
    assert "object" in named[8]["detail"] and "colour" in named[9]["detail"]
    assert "device_id is missing" in named[10]["detail"] and named[11]["device_id"] == ""
    assert body["detail"].startswith("9 of 11 row(s) refused, nothing was created: row 2 (a/b): Invalid device id")
    assert (Device.objects.count(), AuditEvent.objects.count()) == before


def test_odd_json_values_are_row_errors_not_500s(operator):
    rows = [{"device_id": ["x"]}, {"device_id": {"a": 1}}, {"device_id": None}, {"device_id": "x" * 100_000},
            {"device_id": "ok", "tags": None}, {"device_id": "ok-2", "tags": {"a": {"b": "c"}}}, []]  # fmt: skip
    body = operator.post(URL, {"devices": rows}, expect=400).json()
    assert [e["row"] for e in body["rows"]] == [1, 2, 3, 4, 6, 7]  # tags null: no tags
    assert len(body["rows"][3]["device_id"]) < 200 and len(body["rows"][3]["detail"]) < 400


def test_a_refusal_lists_the_first_hundred_rows_and_says_how_many(operator):
    body = operator.post(URL, {"devices": [{"device_id": f"bad {n}"} for n in range(250)]}, expect=400).json()
    assert body["rows_refused"] == 250 and len(body["rows"]) == 100 and body["rows"][-1]["row"] == 100
    assert "and 247 more (the first 100 are listed in `rows`)" in body["detail"]
    assert not Device.objects.exists()


def test_csv_rows_are_named_by_their_line(operator, tenant):
    text = 'device_id,tag:site\nok-1,paris\n\nbad id,paris\nok-2,"x"\nok-3,lyon,extra\nok-1,oslo\n'
    body = csv_post(operator, text).json()
    assert body["code"] == "invalid_rows", body
    assert [(e["row"], e["code"]) for e in body["rows"]] == [
        (4, "invalid_device_id"),
        (6, "invalid_row"),
        (7, "duplicate_device_id"),
    ]
    assert "3 cells, but the header names 2 columns" in body["rows"][1]["detail"]
    assert "also on row 2" in body["rows"][2]["detail"]
    assert not Device.objects.exists()


def test_a_device_created_meanwhile_is_409_naming_it_and_nothing_is_created(operator, tenant, make_device, monkeypatch):
    """The check found nothing, then another request created race-2 before the insert: the database refuses."""
    real, calls = services._existing_device_ids, []

    def checked_before_the_other_request(tenant, ids):
        calls.append(ids)
        return set() if len(calls) == 1 else real(tenant, ids)

    monkeypatch.setattr(services, "_existing_device_ids", checked_before_the_other_request)
    make_device(tenant, "race-2")
    body = operator.post(URL, {"devices": [{"device_id": "race-1"}, {"device_id": "race-2"}]}, expect=409).json()
    assert body["code"] == "device_exists"
    assert [(e["row"], e["device_id"]) for e in body["rows"]] == [(2, "race-2")]
    assert "created meanwhile" in body["detail"]
    assert not Device.objects.filter(device_id="race-1").exists()
    assert not AuditEvent.objects.filter(device__device_id="race-1").exists()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ([{"device_id": "x"}], "JSON object"),
        ({}, "devices must be an array"),
        ({"devices": {"device_id": "x"}}, "devices must be an array"),
        ({"devices": [], "colour": "red"}, "colour"),
        ({"devices": [], "tenant": 5}, "tenant must be a string"),
        ({"devices": []}, "No devices"),
    ],
)
def test_json_envelope_errors(operator, body, named):
    assert named in operator.post(URL, body, expect=400).json()["detail"]


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"", "no header"),
        (b"\n\n", "no header"),
        (b"device_id,tag:site\n", "No devices"),
        (b"id,tag:site\npump-1,paris\n", "no device_id column"),
        (b"device_id,site\npump-1,paris\n", "Unknown column(s) in the CSV header: 'site'"),
        (b"device_id,tags\npump-1,site=paris\n", "'tags'"),
        (b"device_id,tag:site,tag:site\npump-1,a,b\n", "named twice"),
        (b"device_id,tag:bad key\npump-1,a\n", "'tag:bad key' names an invalid tag key"),
        (b"device_id\npump-1\n\xff\xfe\n", "not UTF-8 (line 3"),
        ("device_id\npump-é\n".encode("latin-1"), "not UTF-8 (line 2"),
        (b'device_id\n"pump-1\n', "cannot be read at line"),
        (b'device_id\n"pump"-1\n', "cannot be read at line 2"),
    ],
)
def test_csv_that_cannot_be_read_is_400_naming_the_problem(operator, raw, named):
    response = csv_post(operator, raw)
    assert response.status_code == 400, response.content
    assert named in response.json()["detail"]
    assert not Device.objects.exists()


def test_nul_characters_are_row_errors(operator):
    body = csv_post(operator, b"device_id,tag:site\npump\x00-1,a\npump-2,b\x00\n").json()
    assert [(e["row"], e["code"]) for e in body["rows"]] == [(2, "invalid_device_id"), (3, "invalid_tags")]
    assert not Device.objects.exists()


def test_a_huge_cell_is_400_not_500(operator):
    response = csv_post(operator, b"device_id\n" + b"x" * 200_000 + b"\n")
    assert response.status_code == 400 and "field larger than field limit" in response.json()["detail"]


# --- limits ----------------------------------------------------------------------------------------------


def test_ten_thousand_and_one_rows_are_413_naming_the_limit(operator):
    rows = [{"device_id": f"d-{n}"} for n in range(10_001)]
    body = operator.post(URL, {"devices": rows}, expect=413).json()
    assert body["code"] == "too_many_rows" and body["limit"] == 10_000 and "DEVICES_BULK_MAX_ROWS" in body["detail"]
    text = "device_id\n" + "".join(f"d-{n}\n" for n in range(10_001))
    body = csv_post(operator, text).json()
    assert body["code"] == "too_many_rows" and "more than 10000 devices" in body["detail"]
    assert not Device.objects.exists()


def test_the_row_limit_is_a_setting(operator, settings):
    settings.DEVICES_BULK_MAX_ROWS = 2
    operator.post(URL, {"devices": [{"device_id": f"d-{n}"} for n in range(3)]}, expect=413)
    assert csv_post(operator, "device_id\na\nb\nc\n").status_code == 413
    operator.post(URL, {"devices": [{"device_id": "a"}, {"device_id": "b"}]}, expect=201)


def test_an_oversize_body_is_413_naming_the_limit(operator, settings):
    settings.DEVICES_BULK_MAX_BYTES = 1000
    rows = [{"device_id": f"d-{n:04d}"} for n in range(100)]
    body = operator.post(URL, {"devices": rows}, expect=413).json()
    assert "1000 bytes (DEVICES_BULK_MAX_BYTES)" in body["detail"]
    response = csv_post(operator, "device_id\n" + "".join(f"d-{n:04d}\n" for n in range(200)))
    assert response.status_code == 413 and "DEVICES_BULK_MAX_BYTES" in response.json()["detail"]
    assert not Device.objects.exists()


def test_the_single_provision_keeps_its_own_smaller_body_limit(operator):
    response = operator.post("/customer/devices", {"device_id": "x", "tags": {"a": "b" * 70_000}})
    assert response.status_code == 413


def test_other_media_types_are_415(operator):
    response = operator.raw("post", URL, b"device_id=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_errors_are_json_even_when_a_csv_file_was_asked_for(operator):
    response = operator.client.post(URL + "?format=csv", {"devices": [{"device_id": "a/b"}]}, format="json")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["rows"][0]["device_id"] == "a/b"
    empty = operator.client.post(URL, b"", content_type="text/csv", HTTP_ACCEPT="text/csv")
    assert empty.status_code == 400 and empty.json()["code"] == "invalid_csv"


# --- tenants and roles -----------------------------------------------------------------------------------


def test_an_operator_cannot_bulk_create_into_another_tenant(operator, other_tenant):
    body = operator.post(URL, {"tenant": "globex", "devices": [{"device_id": "sneaky"}]}, expect=400).json()
    assert body["code"] == "foreign_tenant"
    assert csv_post(operator, "device_id\nsneaky\n", url=URL + "?tenant=globex").json()["code"] == "foreign_tenant"
    assert not Device.objects.exists()


def test_a_superuser_names_the_tenant(tenant, other_tenant):
    root = make_operator_client(None, "root", superuser=True)
    body = root.post(URL, {"devices": [{"device_id": "r-1"}]}, expect=400).json()
    assert body["code"] == "tenant_required" and '"tenant"' in body["detail"]
    assert "?tenant=" in csv_post(root, "device_id\nr-1\n").json()["detail"]
    assert root.post(URL, {"tenant": "nope", "devices": [{"device_id": "r-1"}]}, expect=400).json()["code"] == (
        "unknown_tenant"
    )
    assert root.post(URL, {"tenant": "a\x00", "devices": [{"device_id": "r-1"}]}, expect=400).json()["code"] == (
        "unknown_tenant"
    )
    mismatch = root.post(URL + "?tenant=acme", {"tenant": "globex", "devices": [{"device_id": "r-1"}]}, expect=400)
    assert mismatch.json()["code"] == "tenant_mismatch"
    assert root.post(URL, {"tenant": "globex", "devices": [{"device_id": "r-1"}]}, expect=201).json()["tenant"] == (
        "globex"
    )
    assert csv_post(root, "device_id\nr-2\n", url=URL + "?tenant=acme").status_code == 201
    assert set(Device.objects.values_list("tenant_id", "device_id")) == {("globex", "r-1"), ("acme", "r-2")}


def test_viewers_and_strangers_cannot(tenant, api_client_factory):
    viewer = make_operator_client(tenant, "vera", role=Role.VIEWER)
    assert viewer.post(URL, {"devices": [{"device_id": "v-1"}]}).status_code == 403
    anonymous = api_client_factory().post(URL, {"devices": [{"device_id": "v-1"}]})
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous
    assert not Device.objects.exists()


def test_a_device_named_bulk_is_still_reachable(operator, tenant, make_device):
    make_device(tenant, "bulk", tags={"site": "paris"})
    assert operator.get(URL, expect=200).json()["tags"] == {"site": "paris"}
    assert operator.patch(URL, {"tags": {"site": "oslo"}}, expect=200).json()["tags"] == {"site": "oslo"}
    assert operator.client.get(URL + "?format=csv").json()["device_id"] == "bulk"
    assert operator.get("/customer/devices/bulk/twin", expect=200).json()["device_id"] == "bulk"


def test_openapi_declares_json_and_csv(client):
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths[URL]["post"]
    assert set(paths[URL]) - {"parameters"} == {"post"}  # GET/PATCH of a device named "bulk" are the detail's
    assert operation["operationId"] == "devices_provision_bulk"
    assert set(operation["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert set(operation["responses"]["201"]["content"]) == {"application/json", "text/csv"}
    for code in ("400", "401", "403", "409", "413", "415"):
        assert set(operation["responses"][code]["content"]) == {"application/json"}, code
    assert {p["name"] for p in operation["parameters"]} >= {"tenant", "format"}


# --- the service and the readers -------------------------------------------------------------------------


def test_the_service_takes_plain_rows(tenant):
    created = services.devices_provision_bulk(tenant=tenant, rows=[{"device_id": "s-1", "tags": {"a": "b"}},
                                                                   {"device_id": "s-2"}])  # fmt: skip
    assert [(d.device_id, d.tags) for d, _ in created] == [("s-1", {"a": "b"}), ("s-2", {})]
    assert all(d.pk and d.provision_token_hash == hash_token(token) for d, token in created)
    assert AuditEvent.objects.filter(action="device.provision", actor="system").count() == 2


def test_the_service_rules_are_device_provisions(tenant, settings):
    settings.DEVICE_MAX_TAGS = 1
    with pytest.raises(RowsRefused) as refused:
        services.devices_provision_bulk(tenant=tenant, rows=[BulkRow(5, "ok", {"a": "1", "b": "2"})])
    assert isinstance(refused.value, InvalidInput) and refused.value.status == 400
    assert refused.value.extra["rows"][0]["row"] == 5 and "DEVICE_MAX_TAGS" in refused.value.message
    with pytest.raises(InvalidInput, match="DEVICE_MAX_TAGS"):
        services.device_provision(tenant=tenant, device_id="ok", tags={"a": "1", "b": "2"})


def test_broker_accounts_are_handed_to_the_bridge(tenant, settings):
    settings.MQTT_DEVICE_AUTH = "dynsec"
    created = services.devices_provision_bulk(tenant=tenant, rows=[{"device_id": f"b-{n}"} for n in range(3)])
    for device, token in created:
        device.refresh_from_db()
        assert device.broker_account_version == 1 and device.broker_synced_version == 0
        assert unseal(device.broker_secret) == token


def test_read_csv_stops_at_the_limit():
    with pytest.raises(PayloadTooLarge, match="more than 2 devices, the limit \\(X\\)"):
        read_csv(b"device_id\na\nb\nc\n", max_rows=Limit(2, "X"))
    rows = read_csv(b"device_id,tag:k\na,1\n\nb,2\n", max_rows=Limit(2, "X"))
    assert [(r.number, r.device_id, r.tags) for r in rows] == [(2, "a", {"k": "1"}), (4, "b", {"k": "2"})]


def test_multiline_cells_keep_the_line_a_row_starts_on():
    rows = read_csv(b'device_id,tag:note\na,"two\nlines"\nb,x\n', max_rows=Limit(10, "X"))
    assert [(r.number, r.tags) for r in rows] == [(2, {"note": "two\nlines"}), (4, {"note": "x"})]


# --- the admin page --------------------------------------------------------------------------------------

ADMIN_URL = "admin:devices_device_bulk"


@pytest.fixture
def alice_admin(tenant):
    return staff_client(tenant, "alice-admin")


def upload(client, text: bytes | str, tenant="acme"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    raw = text.encode() if isinstance(text, str) else text
    return client.post(reverse(ADMIN_URL), {"tenant": tenant, "file": SimpleUploadedFile("fleet.csv", raw)})


def test_admin_upload_downloads_the_tokens(alice_admin, tenant):
    page = alice_admin.get(reverse("admin:devices_device_changelist")).content.decode()
    assert reverse(ADMIN_URL) in page and "Provision devices from a file" in page
    form = alice_admin.get(reverse(ADMIN_URL)).content.decode()
    assert 'enctype="multipart/form-data"' in form and "tag:site" in form
    response = upload(alice_admin, "device_id,tag:site\nadm-1,paris\nadm-2,lyon\n")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv") and "no-store" in response["Cache-Control"]
    assert response["Content-Disposition"].startswith('attachment; filename="iotcloud-tokens-acme-')
    tokens = read_tokens(response.content)
    assert [t["device_id"] for t in tokens] == ["adm-1", "adm-2"]
    device = provisioned(tenant, "adm-2", tokens[1]["provision_token"])
    assert device.tags == {"site": "lyon"}
    device_client(device).get("/device/v1/shadow", expect=200)
    assert set(AuditEvent.objects.filter(action="device.provision").values_list("actor", "channel")) == {
        ("operator:alice-admin", "admin")
    }
    after = alice_admin.get(reverse("admin:devices_device_changelist")).content.decode()
    assert "2 device(s) provisioned in acme" in after


def test_admin_upload_refused_lists_the_rows(alice_admin, tenant, make_device):
    make_device(tenant, "adm-taken")
    response = upload(alice_admin, "device_id,tag:site\nadm-1,paris\nbad id,x\nadm-taken,y\n")
    page = response.content.decode()
    assert response.status_code == 200 and 'id="iot-refused-rows"' in page
    assert "2 of 3 row(s) refused, nothing was created" in page
    assert "<td>3</td><td><code>bad id</code></td>" in page and "already exists" in page
    assert not Device.objects.filter(device_id="adm-1").exists()


@pytest.mark.parametrize(
    ("raw", "named"),
    [(b"\xff\xfe", "not UTF-8"), (b"id\nx\n", "no device_id column"), (b"device_id\n", "No devices")],
)
def test_admin_upload_unreadable_file(alice_admin, raw, named):
    page = upload(alice_admin, raw).content.decode()
    assert "errorlist" in page and named in page
    assert not Device.objects.exists()


def test_admin_upload_limits(alice_admin, settings):
    settings.DEVICES_BULK_MAX_BYTES = 100
    page = upload(alice_admin, "device_id\n" + "x" * 200 + "\n").content.decode()
    assert "larger than 100 bytes (DEVICES_BULK_MAX_BYTES)" in page
    settings.DEVICES_BULK_MAX_BYTES, settings.DEVICES_BULK_MAX_ROWS = 10_000, 2
    page = upload(alice_admin, "device_id\na\nb\nc\n").content.decode()
    assert "more than 2 devices, the limit (DEVICES_BULK_MAX_ROWS)" in page
    assert not Device.objects.exists()


def test_admin_upload_stays_in_the_operators_tenant(alice_admin, tenant, other_tenant):
    page = upload(alice_admin, "device_id\nsneaky\n", tenant="globex").content.decode()
    assert "Select a valid choice" in page
    assert not Device.objects.exists()
    root = staff_client(None, "root", superuser=True)
    assert upload(root, "device_id\nrooted\n", tenant="globex").status_code == 200
    assert Device.objects.get(device_id="rooted").tenant_id == "globex"


def test_admin_upload_is_for_writers(tenant):
    viewer = staff_client(tenant, "vera", role=Role.VIEWER)
    assert viewer.get(reverse(ADMIN_URL)).status_code == 403
    assert upload(viewer, "device_id\nv-1\n").status_code == 403
    listing = viewer.get(reverse("admin:devices_device_changelist")).content.decode()
    assert "Provision devices from a file" not in listing
    assert not Device.objects.exists()


def test_admin_bulk_page_needs_a_session(tenant, client):
    response = client.get(reverse(ADMIN_URL))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_browsable_api_shows_the_bulk_route(client, operator, tenant, make_device):
    client.force_login(operator.user)
    assert client.get(URL, headers={"Accept": "text/html"}).status_code == 404  # no device named "bulk"
    make_device(tenant, "bulk")
    page = client.get(URL, headers={"Accept": "text/html"})
    assert page.status_code == 200 and b"text/csv" in page.content  # the POST form offers both media types
