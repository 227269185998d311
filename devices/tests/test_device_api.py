"""Operator device API: /customer/devices."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device
from devices.tokens import hash_token
from iotcloud.testing import device_client, make_operator_client

pytestmark = pytest.mark.django_db


def test_provision_returns_the_token_once_and_stores_only_its_digest(operator, tenant):
    body = operator.post("/customer/devices", {"device_id": "pump-7", "tags": {"site": "paris"}}, expect=201).json()
    token = body["provision_token"]
    assert body["device_id"] == "pump-7" and body["tenant"] == "acme" and body["tags"] == {"site": "paris"}
    device = Device.objects.get(tenant=tenant, device_id="pump-7")
    assert device.provision_token_hash == hash_token(token) and token not in device.provision_token_hash
    detail = operator.get("/customer/devices/pump-7", expect=200).json()
    assert "provision_token" not in detail
    device.token = token
    device_client(device).get("/device/v1/shadow", expect=200)


@pytest.mark.parametrize("device_id", ["a/b", "a+b", "a#b", "with space", "", "x" * 129, "tab\t", "ünï", "a\u0000"])
def test_provision_refuses_ids_that_cannot_be_mqtt_topic_levels(operator, device_id):
    body = operator.post("/customer/devices", {"device_id": device_id}, expect=400).json()
    assert "device" in body["detail"].lower()
    assert not Device.objects.exists()


def test_provision_accepts_the_whole_id_alphabet(operator):
    operator.post("/customer/devices", {"device_id": "A-z_0.9:x" + "y" * 119}, expect=201)


def test_duplicate_device_id_is_409(operator, device):
    body = operator.post("/customer/devices", {"device_id": device.device_id}, expect=409).json()
    assert device.device_id in body["detail"]


def test_same_device_id_in_two_tenants_is_fine(operator, other_operator, device):
    other_operator.post("/customer/devices", {"device_id": device.device_id}, expect=201)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"device_id": 5}, "device_id"),
        ({"device_id": "ok", "tags": ["a"]}, "tags"),
        ({"device_id": "ok", "tags": {"site": 5}}, "site"),
        ({"device_id": "ok", "tags": {"bad key": "x"}}, "bad key"),
        ({"device_id": "ok", "tenant": "globex"}, "tenant"),
        ({"device_id": "ok", "colour": "red"}, "colour"),
    ],
)
def test_provision_bad_input(operator, other_tenant, body, named):
    response = operator.post("/customer/devices", body, expect=400).json()
    assert named in response["detail"]
    assert not Device.objects.exists()


def test_superuser_provisions_into_a_named_tenant(tenant):
    root = make_operator_client(None, "root", superuser=True)
    body = root.post("/customer/devices", {"device_id": "d1"}, expect=400).json()
    assert "tenant" in body["detail"]
    root.post("/customer/devices", {"device_id": "d1", "tenant": "nope"}, expect=400)
    assert root.post("/customer/devices", {"device_id": "d1", "tenant": "acme"}, expect=201).json()["tenant"] == "acme"


def test_list_is_scoped_to_the_tenant(operator, tenant, other_tenant, make_device):
    make_device(tenant, "a1")
    make_device(other_tenant, "b1")
    ids = [d["device_id"] for d in operator.get("/customer/devices", expect=200).json()["results"]]
    assert ids == ["a1"]


def test_list_filters(operator, tenant, make_device):
    now = timezone.now()
    synced = make_device(tenant, "synced", tags={"site": "paris"})
    pending = make_device(tenant, "pending", tags={"site": "lyon"})
    stale = make_device(tenant, "stale", tags={"site": "paris", "kind": "gw"})
    gone = make_device(tenant, "gone")
    Device.objects.filter(pk=synced.pk).update(last_seen=now, desired_version=2, reported_version=2)
    Device.objects.filter(pk=pending.pk).update(last_seen=now, desired_version=3, reported_version=1)
    Device.objects.filter(pk=stale.pk).update(last_seen=now - timedelta(hours=2))
    Device.objects.filter(pk=gone.pk).update(status="decommissioned")

    def ids(query):
        return sorted(d["device_id"] for d in operator.get(f"/customer/devices?{query}", expect=200).json()["results"])

    assert ids("sync_status=synced") == ["synced"]
    assert ids("sync_status=pending") == ["pending"]
    assert ids("sync_status=stale") == ["gone", "stale"]
    assert ids("status=decommissioned") == ["gone"]
    assert ids("tag=site:paris") == ["stale", "synced"]
    assert ids("tag=kind") == ["stale"]
    assert ids("tag=site:paris&sync_status=stale") == ["stale"]
    assert ids("tag=contains:x") == []
    assert ids("device_id_prefix=s") == ["stale", "synced"]
    body = operator.get("/customer/devices?sync_status=bogus", expect=400).json()
    assert "sync_status" in body["detail"]
    operator.get("/customer/devices?status=bogus", expect=400)


def test_list_paginates_with_a_cursor(operator, tenant, make_device):
    for n in range(7):
        make_device(tenant, f"d{n}")
    seen, url = [], "/customer/devices?page_size=3"
    while url:
        page = operator.get(url, expect=200).json()
        assert len(page["results"]) <= 3
        seen += [d["device_id"] for d in page["results"]]
        url = page["next"]
    assert seen == [f"d{n}" for n in range(7)]
    body = operator.get("/customer/devices?cursor=garbage", expect=400).json()
    assert body == {"detail": "Invalid cursor", "code": "invalid_cursor"}


def test_list_costs_a_fixed_number_of_queries(operator, tenant, make_device, django_assert_max_num_queries):
    for n in range(30):
        make_device(tenant, f"d{n:02}")
    with django_assert_max_num_queries(4):  # token, membership, page (+ savepoint-free)
        operator.get("/customer/devices", expect=200)


def test_detail_update_tags_rotate_and_decommission(operator, device):
    body = operator.get(f"/customer/devices/{device.device_id}", expect=200).json()
    assert body["status"] == "active" and body["sync_status"] == "stale"

    body = operator.patch(f"/customer/devices/{device.device_id}", {"tags": {"site": "oslo"}}, expect=200).json()
    assert body["tags"] == {"site": "oslo"}
    operator.patch(f"/customer/devices/{device.device_id}", {"tags": "oslo"}, expect=400)

    old = device_client(device)
    new_token = operator.post(f"/customer/devices/{device.device_id}/rotate-token", expect=200).json()
    old.get("/device/v1/shadow", expect=401)
    device.token = new_token["provision_token"]
    device_client(device).get("/device/v1/shadow", expect=200)

    body = operator.post(f"/customer/devices/{device.device_id}/decommission", expect=200).json()
    assert body["status"] == "decommissioned" and body["decommissioned_at"]
    operator.post(f"/customer/devices/{device.device_id}/decommission", expect=200)  # idempotent
    device_client(device).get("/device/v1/shadow", expect=401)
    body = operator.post(f"/customer/devices/{device.device_id}/rotate-token", expect=409).json()
    assert "decommissioned" in body["detail"]


OPERATOR_ROUTES = [
    ("get", "/customer/devices/{id}", None),
    ("patch", "/customer/devices/{id}", {"tags": {}}),
    ("post", "/customer/devices/{id}/rotate-token", None),
    ("post", "/customer/devices/{id}/decommission", None),
    ("get", "/customer/devices/{id}/twin", None),
    ("patch", "/customer/devices/{id}/twin/desired", {"desired": {"a": 1}}),
    ("put", "/customer/devices/{id}/twin/desired", {"desired": {"a": 1}}),
    ("get", "/customer/devices/{id}/twin/delta", None),
]


@pytest.mark.parametrize(("method", "url", "body"), OPERATOR_ROUTES)
def test_another_tenants_device_is_404_on_every_route(operator, other_tenant, make_device, method, url, body):
    theirs = make_device(other_tenant, "theirs")
    before = Device.objects.filter(pk=theirs.pk).values().get()
    response = operator.call(method, url.format(id=theirs.device_id), body, expect=404)
    assert "theirs" in response.json()["detail"]
    assert Device.objects.filter(pk=theirs.pk).values().get() == before


@pytest.mark.parametrize(("method", "url", "body"), OPERATOR_ROUTES)
def test_every_operator_route_needs_a_bearer_token(api_client_factory, device, method, url, body):
    api_client_factory().call(method, url.format(id=device.device_id), body, expect=401)
