"""The admin twin panel's shadow picker: named shadows shown, written, created and deleted from a device's page.

Both paths: the panel's JSON endpoints (what twin_panel.js calls) and the forms that work without
JavaScript (redirects with a message). Every write goes through the twin services, whose errors are
the answers; the tenant scoping and roles are the device admin's.
"""

import json

import pytest
from django.urls import reverse

from devices.choices import Role
from devices.models import Device
from devices.services import device_decommission
from iotcloud.testing import device_client, staff_client
from twin.engine import shadow_get, shadow_names
from twin.models import NamedShadow
from twin.services import shadow_write_desired, twin_update_desired

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(tenant, other_tenant, make_device):
    return {"a1": make_device(tenant, "a-1"), "b1": make_device(other_tenant, "b-1")}


@pytest.fixture
def alice(tenant):
    return staff_client(tenant, "alice-operator")


@pytest.fixture
def viewer(tenant):
    return staff_client(tenant, "vera", role=Role.VIEWER)


@pytest.fixture
def config(fleet):
    """a-1 with a named shadow "config" at desired version 1 and a classic desired state."""
    twin_update_desired(device=fleet["a1"], document={"led": "on"})
    shadow_write_desired(device=fleet["a1"], shadow_name="config", document={"interval": 15})
    return fleet["a1"]


def url(name, device, shadow=None):
    base = reverse(f"admin:devices_device_{name}", args=[device.pk])
    return base + (f"?shadow={shadow}" if shadow is not None else "")


def post_json(client, target, body, expect):
    response = client.post(target, json.dumps(body), content_type="application/json")
    assert response.status_code == expect, response.content[:500]
    return response.json() if expect not in (403, 404) or response["Content-Type"] == "application/json" else None


def classic(device):
    return Device.objects.filter(pk=device.pk).values(
        "desired_state", "desired_version", "reported_state", "reported_version", "shadow_version",
        "desired_metadata", "shadow_updated_at",
    ).get()  # fmt: skip


# --- the change page ------------------------------------------------------------------------------------


def test_the_change_page_picks_a_shadow_by_its_query_parameter(alice, config):
    page = alice.get(url("change", config)).content.decode()
    assert '<option value="" selected>Classic (unnamed)</option>' in page
    assert '<option value="config">config</option>' in page
    assert '"led": "on"' in page and 'id="iot-shadow-delete"' in page

    page = alice.get(url("change", config, "config")).content.decode()
    assert '<option value="config" selected>config</option>' in page
    assert '"interval": 15' in page and '"led": "on"' not in page.split('id="iot-document"')[1].split("</textarea>")[0]
    assert f'action="{url("desired", config)}?shadow=config"' in page  # the form without JS writes to it
    assert 'id="iot-expected-version" value="1"' in page
    assert f'href="{url("shadow_delete", config)}?shadow=config"' in page
    data = json.loads(page.split('id="iot-twin-data" type="application/json">')[1].split("</script>")[0])
    assert data["name"] == "config" and data["version"] == 1 and data["shadows"] == ["config"]


@pytest.mark.parametrize(("shadow", "fragment"), [("gone", "No shadow exists with name"), ("bad%20name", "Invalid")])
def test_a_shadow_that_is_not_there_falls_back_to_the_classic_one(alice, config, shadow, fragment):
    page = alice.get(url("change", config, shadow)).content.decode()
    assert "Shadow not shown:" in page and fragment in page
    assert '<option value="" selected>Classic (unnamed)</option>' in page and '"led": "on"' in page


def test_viewers_pick_shadows_but_get_no_controls(viewer, config):
    page = viewer.get(url("change", config, "config")).content.decode()
    assert '<option value="config" selected>config</option>' in page
    for control in ('id="iot-editor"', 'id="iot-shadow-create"', 'id="iot-shadow-delete"'):
        assert control not in page


def test_a_decommissioned_device_shows_its_shadows_read_only(alice, config):
    device_decommission(device=config)
    page = alice.get(url("change", config, "config")).content.decode()
    assert '<option value="config" selected>config</option>' in page
    assert 'id="iot-editor"' not in page and 'id="iot-shadow-create"' not in page


# --- twin.json ----------------------------------------------------------------------------------------


def test_twin_json_answers_the_selected_shadow(alice, config):
    named = alice.get(url("twin", config, "config")).json()
    assert named["name"] == "config" and named["desired"] == {"interval": 15} and named["delta"] == {"interval": 15}
    assert named["desired_version"] == 1 and named["version"] == 1 and named["shadows"] == ["config"]
    assert set(named["metadata"]["desired"]) == {"interval"}
    assert "timestamp" in named["metadata"]["desired"]["interval"]
    assert "desired_published_version" not in named  # named shadows have no retained desired message
    plain = alice.get(url("twin", config)).json()
    assert plain["name"] == "" and plain["desired"] == {"led": "on"} and plain["shadows"] == ["config"]
    assert plain["desired_published_version"] == 0
    assert alice.get(url("twin", config, "")).json()["name"] == ""


def test_twin_json_refuses_missing_and_invalid_names_and_other_tenants(alice, config, fleet):
    missing = alice.get(url("twin", config, "nope"))
    assert missing.status_code == 404 and missing.json()["code"] == "shadow_not_found"
    bad = alice.get(url("twin", config, "%24aws"))
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_shadow_name"
    shadow_write_desired(device=fleet["b1"], shadow_name="config", document={"x": 1})
    assert alice.get(url("twin", fleet["b1"], "config")).status_code == 404


# --- writing desired --------------------------------------------------------------------------------


def test_desired_writes_go_to_the_selected_shadow_and_leave_the_classic_one_alone(alice, config):
    before = classic(config)
    twin = post_json(alice, url("desired", config, "config"),
                     {"document": {"mode": "eco"}, "mode": "merge", "expected_version": 1}, 200)  # fmt: skip
    assert twin["name"] == "config" and twin["desired"] == {"interval": 15, "mode": "eco"}
    assert twin["desired_version"] == 2 and twin["version"] == 2
    assert set(twin["metadata"]["desired"]) == {"interval", "mode"}
    twin = post_json(alice, url("desired", config, "config"),
                     {"document": {"fan": 1}, "mode": "replace", "expected_version": 2}, 200)  # fmt: skip
    assert twin["desired"] == {"fan": 1} and twin["desired_version"] == 3
    assert classic(config) == before
    assert shadow_get(device=config, shadow_name="config").desired == {"fan": 1}


@pytest.mark.parametrize(
    ("shadow", "body", "status", "code"),
    [
        ("config", {"document": {"a": 1}, "expected_version": 0}, 409, "version_conflict"),
        ("bad%20name", {"document": {"a": 1}}, 400, "invalid_shadow_name"),
        ("x" * 65, {"document": {"a": 1}}, 400, "invalid_shadow_name"),
        ("config", {"document": {"big": "x" * 9000}}, 413, "too_large"),
        ("config", {"document": [1]}, 400, "not_an_object"),
        ("config", {"document": {"a": 1}, "mode": "sideways"}, 400, "invalid_mode"),
    ],
)
def test_refused_named_writes_change_nothing(alice, config, shadow, body, status, code):
    before = classic(config), list(NamedShadow.objects.values())
    error = post_json(alice, url("desired", config, shadow), body, status)
    assert error["code"] == code, error
    assert (classic(config), list(NamedShadow.objects.values())) == before


def test_a_stale_write_says_the_current_version(alice, config):
    error = post_json(alice, url("desired", config, "config"), {"document": {"a": 1}, "expected_version": 0}, 409)
    assert "does not match desired_version 1" in error["detail"] and error["desired_version"] == 1


def test_desired_form_without_javascript_writes_the_selected_shadow(alice, config):
    response = alice.post(url("desired", config, "config"), {"document": '{"mode": "eco"}', "mode": "merge",
                                                              "expected_version": "1"})  # fmt: skip
    assert response.status_code == 302 and response["Location"] == url("change", config, "config")
    page = alice.get(response["Location"]).content.decode()
    assert "Desired state saved: version 2." in page and '<option value="config" selected>' in page
    stale = alice.post(url("desired", config, "config"), {"document": "{}", "mode": "merge", "expected_version": "1"},
                       follow=True).content.decode()  # fmt: skip
    assert "Desired state not saved" in stale and "does not match desired_version 2" in stale
    assert shadow_get(device=config, shadow_name="config").desired == {"interval": 15, "mode": "eco"}
    assert classic(config)["desired_state"] == {"led": "on"}


def test_writes_to_other_tenants_and_by_viewers_are_refused(alice, viewer, config, fleet):
    shadow_write_desired(device=fleet["b1"], shadow_name="config", document={"x": 1})
    post_json(alice, url("desired", fleet["b1"], "config"), {"document": {"x": 2}}, 404)
    post_json(viewer, url("desired", config, "config"), {"document": {"x": 2}}, 403)
    assert shadow_get(device=fleet["b1"], shadow_name="config").desired == {"x": 1}
    assert shadow_get(device=config, shadow_name="config").desired_version == 1


# --- creating ---------------------------------------------------------------------------------------


def test_create_a_named_shadow(alice, config):
    before = classic(config)
    twin = post_json(alice, url("shadow_create", config), {"name": "firmware:ota"}, 201)
    assert twin["name"] == "firmware:ota" and twin["desired"] == {} and twin["desired_version"] == 1
    assert twin["shadows"] == ["config", "firmware:ota"]
    assert shadow_names(config) == ["config", "firmware:ota"]
    assert classic(config) == before
    twin = post_json(alice, url("desired", config, "firmware:ota"), {"document": {"v": "1.2"}, "expected_version": 1},
                     200)  # fmt: skip
    assert twin["desired_version"] == 2 and twin["version"] == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "config"}, 409, "shadow_exists"),
        ({"name": "has space"}, 400, "invalid_shadow_name"),
        ({"name": "$aws"}, 400, "invalid_shadow_name"),
        ({"name": "dot.ted"}, 400, "invalid_shadow_name"),
        ({"name": "y" * 65}, 400, "invalid_shadow_name"),
        ({"name": 7}, 400, "invalid_shadow_name"),
        ({"name": ""}, 400, "invalid_shadow_name"),
        ({}, 400, "invalid_shadow_name"),
    ],
)
def test_create_refusals(alice, config, body, status, code):
    before = classic(config), list(NamedShadow.objects.values())
    assert post_json(alice, url("shadow_create", config), body, status)["code"] == code
    assert (classic(config), list(NamedShadow.objects.values())) == before


def test_create_by_viewer_other_tenant_or_on_a_decommissioned_device(alice, viewer, config, fleet):
    post_json(viewer, url("shadow_create", config), {"name": "new"}, 403)
    post_json(alice, url("shadow_create", fleet["b1"]), {"name": "new"}, 404)
    device_decommission(device=config)
    assert post_json(alice, url("shadow_create", config), {"name": "new"}, 409)["code"] == "device_decommissioned"
    assert not NamedShadow.objects.filter(name="new").exists()


def test_create_form_without_javascript(alice, config):
    response = alice.post(url("shadow_create", config), {"name": " settings "})
    assert response["Location"] == url("change", config, "settings")
    page = alice.get(response["Location"]).content.decode()
    assert "Named shadow &#x27;settings&#x27; created." in page and '<option value="settings" selected>' in page
    bad = alice.post(url("shadow_create", config), {"name": "no/slash"}, follow=True).content.decode()
    assert "Shadow not created: Invalid shadow name" in bad
    assert alice.get(url("shadow_create", config)).status_code == 405


def test_a_deleted_shadow_created_again_goes_on_from_its_version(alice, config):
    post_json(alice, url("shadow_delete", config, "config"), {}, 200)
    twin = post_json(alice, url("shadow_create", config), {"name": "config"}, 201)
    assert twin["desired"] == {} and twin["version"] == 3  # 1 (write) + 1 (delete) + 1 (this write)


# --- deleting ---------------------------------------------------------------------------------------


def test_delete_a_named_shadow(alice, config):
    before = classic(config)
    answer = post_json(alice, url("shadow_delete", config, "config"), {}, 200)
    assert answer == {"deleted": "config", "version": 2}
    assert shadow_names(config) == [] and alice.get(url("twin", config, "config")).status_code == 404
    assert classic(config) == before
    assert post_json(alice, url("shadow_delete", config, "config"), {}, 404)["code"] == "shadow_not_found"


def test_delete_refusals(alice, viewer, config, fleet):
    shadow_write_desired(device=fleet["b1"], shadow_name="config", document={"x": 1})
    post_json(viewer, url("shadow_delete", config, "config"), {}, 403)
    assert viewer.get(url("shadow_delete", config, "config")).status_code == 403
    post_json(alice, url("shadow_delete", fleet["b1"], "config"), {}, 404)
    assert alice.get(url("shadow_delete", fleet["b1"], "config")).status_code == 404
    before = classic(config)
    assert post_json(alice, url("shadow_delete", config), {}, 400)["code"] == "invalid_shadow_name"  # not the classic
    assert post_json(alice, url("shadow_delete", config, "%24x"), {}, 400)["code"] == "invalid_shadow_name"
    assert classic(config) == before
    assert shadow_names(config) == ["config"] and shadow_names(fleet["b1"]) == ["config"]
    device_decommission(device=config)
    assert post_json(alice, url("shadow_delete", config, "config"), {}, 409)["code"] == "device_decommissioned"


def test_delete_without_javascript_asks_first(alice, config):
    confirm = alice.get(url("shadow_delete", config, "config"))
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Yes, delete shadow config" in page and f'href="{url("change", config, "config")}"' in page
    assert shadow_names(config) == ["config"]  # asking deletes nothing
    response = alice.post(url("shadow_delete", config, "config"))
    assert response["Location"] == url("change", config)
    assert "Named shadow &#x27;config&#x27; deleted." in alice.get(response["Location"]).content.decode()
    assert shadow_names(config) == []
    missing = alice.get(url("shadow_delete", config, "config"), follow=True).content.decode()
    assert "Shadow not deleted: No shadow exists" in missing


# --- the device's side --------------------------------------------------------------------------------


def test_a_device_report_to_the_named_shadow_shows_in_its_panel(alice, config):
    device_client(config).post("/device/v1/shadows/config/reported", {"reported": {"interval": 15}, "version": 1},
                               expect=200)  # fmt: skip
    twin = alice.get(url("twin", config, "config")).json()
    assert twin["reported"] == {"interval": 15} and twin["delta"] == {} and twin["reported_version"] == 1
    assert twin["version"] == 2 and set(twin["metadata"]["reported"]) == {"interval"}
    assert alice.get(url("twin", config)).json()["reported"] == {}
