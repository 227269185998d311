"""The device protocol over HTTP: full shadow, partial reports, AWS-style updates, named shadows.

The same rules as over MQTT (twin.engine, twin.protocol); operators see named shadows too.
"""

import pytest

from devices.choices import DesiredWrites
from devices.models import Device
from twin.models import NamedShadow, ShadowEvent
from twin.services import shadow_write_desired, twin_update_desired

pytestmark = pytest.mark.django_db


def row(device):
    return Device.objects.get(pk=device.pk)


def test_full_document_has_delta_metadata_and_versions(device, device_api):
    twin_update_desired(device=device, document={"fan": {"speed": 3}, "mode": "eco"})
    device_api.patch("/device/v1/shadow/reported", {"reported": {"mode": "eco"}}, expect=200)
    doc = device_api.get("/device/v1/shadow/document", expect=200).json()
    assert doc["state"] == {"desired": {"fan": {"speed": 3}, "mode": "eco"}, "reported": {"mode": "eco"},
                            "delta": {"fan": {"speed": 3}}}  # fmt: skip
    assert doc["version"] == 2 and doc["desired_version"] == 1 and doc["reported_version"] == 0
    stamp = doc["metadata"]["desired"]["fan"]["speed"]["timestamp"]
    assert isinstance(stamp, int) and doc["metadata"]["delta"] == {"fan": {"speed": {"timestamp": stamp}}}
    assert set(doc["metadata"]["reported"]) == {"mode"}
    # The seed's GET is unchanged.
    assert device_api.get("/device/v1/shadow", expect=200).json() == {
        "desired": {"fan": {"speed": 3}, "mode": "eco"}, "version": 1}  # fmt: skip


def test_partial_reports_merge_and_the_seed_post_still_replaces(device, device_api):
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 1, "b": 2}, "version": 0}, expect=200)
    body = device_api.patch("/device/v1/shadow/reported", {"reported": {"b": None, "c": 3}}, expect=200).json()
    assert body["state"] == {"reported": {"b": None, "c": 3}} and body["version"] == 2
    assert row(device).reported_state == {"a": 1, "c": 3}
    assert set(row(device).reported_metadata) == {"a", "c"}
    device_api.post("/device/v1/shadow/reported", {"reported": {"z": 0}, "version": 0}, expect=200)
    assert row(device).reported_state == {"z": 0}
    # A merge that names its desired version follows the seed's version rule.
    twin_update_desired(device=device, document={"z": 1})
    device_api.patch("/device/v1/shadow/reported", {"reported": {"z": 1}, "version": 1}, expect=200)
    assert (row(device).reported_version, row(device).desired_version) == (1, 1)
    conflict = device_api.patch("/device/v1/shadow/reported", {"reported": {}, "version": 5}, expect=409).json()
    assert conflict["code"] == "version_conflict" and conflict["desired_version"] == 1


def test_a_report_that_leaves_no_delta_catches_up(device, device_api):
    twin_update_desired(device=device, document={"led": "on"})
    device_api.patch("/device/v1/shadow/reported", {"reported": {"led": "off"}}, expect=200)
    assert row(device).reported_version == 0
    device_api.patch("/device/v1/shadow/reported", {"reported": {"led": "on"}}, expect=200)
    assert row(device).reported_version == 1


def test_aws_style_update_over_http(device, device_api):
    body = device_api.post("/device/v1/shadow/update", {"state": {"reported": {"t": 21}}, "clientToken": "c1"},
                           expect=200).json()  # fmt: skip
    assert body["state"] == {"reported": {"t": 21}} and body["version"] == 1 and body["clientToken"] == "c1"
    stale = device_api.post("/device/v1/shadow/update", {"state": {"reported": {"t": 22}}, "version": 0}, expect=409)
    assert stale.json()["code"] == "version_conflict" and stale.json()["version"] == 1
    forbidden = device_api.post("/device/v1/shadow/update", {"state": {"desired": {"t": 1}}}, expect=403).json()
    assert forbidden["code"] == "desired_write_forbidden"
    device.tenant.device_desired_writes = DesiredWrites.ALLOW
    device.tenant.save()
    device_api.post("/device/v1/shadow/update", {"state": {"desired": {"t": 1}}}, expect=200)
    assert row(device).desired_state == {"t": 1} and row(device).desired_version == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_state"),
        ({"state": []}, 400, "invalid_state"),
        ({"state": {"reported": "x"}}, 400, "invalid_state"),
        ({"state": {"other": {}}}, 400, "invalid_state"),
        ({"state": {"reported": {}}, "version": "3"}, 400, "invalid_version"),
        ({"state": {"reported": {}}, "clientToken": 7}, 400, "invalid_client_token"),
        ({"state": {"reported": {}}, "surprise": 1}, 400, "invalid"),
        ({"state": {"reported": {"x": "y" * 9000}}}, 413, "too_large"),
        ([1, 2], 400, "invalid"),
        ({"state": {"reported": {"colors": ["RED", None]}}}, 400, "invalid_value"),  # AWS: no null in arrays
        ({"state": {"desired": {"a": [[1, None]]}}}, 400, "invalid_value"),
    ],
)
def test_bad_updates_are_refused_and_change_nothing(device, device_api, body, status, code):
    shadow = ("desired_state", "reported_state", "desired_version", "reported_version", "shadow_version",
              "desired_metadata", "reported_metadata")  # fmt: skip
    before = Device.objects.filter(pk=device.pk).values(*shadow).get()
    got = device_api.post("/device/v1/shadow/update", body, expect=status).json()
    assert got["code"] == code and got["detail"]
    assert Device.objects.filter(pk=device.pk).values(*shadow).get() == before
    assert not ShadowEvent.objects.exists()


def test_named_shadows_for_devices(device, device_api):
    assert device_api.get("/device/v1/shadows/firmware", expect=404).json()["code"] == "shadow_not_found"
    device_api.post("/device/v1/shadows/firmware/update", {"state": {"reported": {"v": "1.0"}}}, expect=200)
    device_api.patch("/device/v1/shadows/firmware/reported", {"reported": {"slot": "a"}}, expect=200)
    doc = device_api.get("/device/v1/shadows/firmware", expect=200).json()
    assert doc["state"]["reported"] == {"v": "1.0", "slot": "a"} and doc["version"] == 2
    assert device_api.get("/device/v1/shadows", expect=200).json()["results"] == ["firmware"]
    assert row(device).reported_state == {}  # the classic shadow is another document
    deleted = device_api.call("delete", "/device/v1/shadows/firmware", expect=200).json()
    assert deleted["version"] == 3
    assert device_api.get("/device/v1/shadows", expect=200).json()["results"] == []
    device_api.get("/device/v1/shadows/firmware", expect=404)
    device_api.call("delete", "/device/v1/shadows/firmware", expect=404)
    assert device_api.get("/device/v1/shadows/bad.name", expect=400).json()["code"] == "invalid_shadow_name"


def test_a_device_reaches_only_its_own_named_shadows(tenant, make_device, device_api, device):
    other = make_device(tenant, "other-1")
    shadow_write_desired(device=other, shadow_name="cfg", document={"secret": 1})
    device_api.get("/device/v1/shadows/cfg", expect=404)  # its own has none; the other's stays invisible
    device_api.post("/device/v1/shadows/cfg/update", {"state": {"reported": {"x": 1}}}, expect=200)
    assert NamedShadow.objects.get(device=other, name="cfg").reported_state == {}


def test_operators_read_write_and_delete_named_shadows(device, operator, other_operator):
    url = f"/customer/devices/{device.device_id}/shadows/cfg"
    twin = operator.patch(f"{url}/desired", {"desired": {"rate": 5}}, expect=200).json()
    assert twin["name"] == "cfg" and twin["desired"] == {"rate": 5} and twin["desired_version"] == 1
    assert twin["sync_status"] == "stale" and set(twin["metadata"]["desired"]) == {"rate"}
    operator.put(f"{url}/desired", {"desired": {"rate": 6}, "expected_version": 0}, expect=409)
    operator.put(f"{url}/desired", {"desired": {"rate": 6}, "expected_version": 1}, expect=200)
    listed = operator.get(f"/customer/devices/{device.device_id}/shadows", expect=200).json()
    assert [(s["name"], s["desired_version"]) for s in listed] == [("cfg", 2)]
    classic = operator.get(f"/customer/devices/{device.device_id}/twin", expect=200).json()
    assert classic["shadows"] == ["cfg"] and classic["version"] == 0 and classic["desired"] == {}
    other_operator.get(url, expect=404)
    other_operator.patch(f"{url}/desired", {"desired": {"rate": 1}}, expect=404)
    assert operator.call("delete", url, expect=200).json()["version"] == 3
    operator.get(url, expect=404)


def test_every_accepted_change_leaves_its_documents_event(device, device_api, settings):
    twin_update_desired(device=device, document={"a": 1})
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 2}, "version": 1}, expect=200)
    device_api.patch("/device/v1/shadow/reported", {"reported": {"b": 1}}, expect=200)
    events = list(ShadowEvent.objects.order_by("id").values_list("documents", "delta"))
    assert [d["current"]["version"] for d, _ in events] == [1, 2, 3]
    assert [d["previous"]["version"] for d, _ in events] == [0, 1, 2]
    assert events[0][1]["state"] == {"a": 1}  # desired changed and differs: a delta
    assert events[1][1]["state"] == {"a": 1}  # a report of a field that still differs: told again
    assert events[2][1] is None  # a report of a field nobody desires: no delta
    settings.TWIN_EVENTS_FOR_SEED_REPORTS = False  # the seed's whole reports may be left out
    device_api.post("/device/v1/shadow/reported", {"reported": {"a": 1}, "version": 1}, expect=200)
    assert ShadowEvent.objects.count() == 3 and row(device).shadow_version == 4
