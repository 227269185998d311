"""Device, tenant and operator admin: tenant scoping, the twin panel's desired editor, token and lifecycle actions."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from devices.choices import DeviceStatus, Role
from devices.models import Device, Membership
from devices.services import device_provision, operator_create
from iotcloud.testing import STAFF_PASSWORD, device_client, staff_client
from twin.services import twin_update_desired


@pytest.fixture
def fleet(tenant, other_tenant, make_device):
    """Two devices in acme, one in globex."""
    return {
        "a1": make_device(tenant, "a-1", tags={"site": "paris"}),
        "a2": make_device(tenant, "a-2", tags={"site": "lyon"}),
        "b1": make_device(other_tenant, "b-1", tags={"site": "paris"}),
    }


@pytest.fixture
def alice(tenant):
    return staff_client(tenant, "alice-admin")


@pytest.fixture
def viewer(tenant):
    return staff_client(tenant, "vera", role=Role.VIEWER)


def desired_url(device):
    return reverse("admin:devices_device_desired", args=[device.pk])


def post_desired(client, device, body, expect):
    response = client.post(desired_url(device), json.dumps(body), content_type="application/json")
    assert response.status_code == expect, response.content
    return response.json()


# --- scoping --------------------------------------------------------------------------------------------


def test_device_list_shows_only_the_operators_tenant(alice, fleet):
    page = alice.get(reverse("admin:devices_device_changelist")).content.decode()
    assert "a-1" in page and "a-2" in page
    assert "b-1" not in page
    assert "globex" not in page  # not even as a tenant filter choice


def test_superuser_sees_every_tenant(tenant, fleet):
    root = staff_client(None, "root", superuser=True)
    page = root.get(reverse("admin:devices_device_changelist")).content.decode()
    assert "a-1" in page and "b-1" in page


def test_other_tenants_device_pages_and_endpoints_do_not_exist(alice, fleet):
    foreign = fleet["b1"]
    change = alice.get(reverse("admin:devices_device_change", args=[foreign.pk]))
    assert change.status_code == 302  # admin's "doesn't exist" redirect, no content
    for name in ["devices_device_twin", "devices_device_rotate", "devices_device_decommission"]:
        assert alice.get(reverse(f"admin:{name}", args=[foreign.pk])).status_code == 404, name
    post_desired(alice, foreign, {"document": {"x": 1}}, 404)
    assert alice.post(reverse("admin:devices_device_rotate", args=[foreign.pk])).status_code == 404
    assert alice.post(reverse("admin:devices_device_decommission", args=[foreign.pk])).status_code == 404
    status = alice.get(reverse("admin:devices_device_status"), {"ids": f"{foreign.pk},{fleet['a1'].pk}"}).json()
    assert list(status["devices"]) == [str(fleet["a1"].pk)]
    foreign.refresh_from_db()
    assert foreign.desired_version == 0 and foreign.status == DeviceStatus.ACTIVE


def test_other_tenants_memberships_and_tenants_are_invisible(alice, other_tenant, fleet):
    operator_create(username="bob", tenant=other_tenant, password="pw-123456789")
    assert "bob" not in alice.get(reverse("admin:devices_membership_changelist")).content.decode()
    tenants = alice.get(reverse("admin:devices_tenant_changelist")).content.decode()
    assert "acme" in tenants and "globex" not in tenants
    assert alice.get(reverse("admin:devices_tenant_change", args=["globex"])).status_code == 302


def test_autocomplete_offers_only_the_operators_tenant(alice, tenant, other_tenant):
    response = alice.get(
        "/admin/autocomplete/", {"app_label": "devices", "model_name": "membership", "field_name": "tenant", "term": ""}
    )
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == ["acme"]


def test_tenant_admin_creates_an_operator_only_in_their_tenant(tenant, other_tenant):
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    url = reverse("admin:devices_membership_add")
    form = {"username": "newbie", "email": "", "password": "long-enough-pw", "role": "operator"}
    forged = boss.post(url, {**form, "tenant": "globex"})
    assert forged.status_code == 200 and "Select a valid choice" in forged.content.decode()
    assert not get_user_model().objects.filter(username="newbie").exists()
    assert boss.post(url, {**form, "tenant": "acme"}).status_code == 302
    user = get_user_model().objects.get(username="newbie")
    assert user.is_staff and user.check_password("long-enough-pw")
    assert user.membership.tenant_id == "acme" and user.membership.role == Role.OPERATOR
    duplicate = boss.post(url, {**form, "tenant": "acme"})
    assert "already exists" in duplicate.content.decode()


def test_only_tenant_admins_manage_operators(alice):
    assert alice.get(reverse("admin:devices_membership_add")).status_code == 403


def _add_operator(client, **fields):
    form = {"username": "newbie", "email": "", "password": "long-enough-pw", "tenant": "acme", "role": "operator"}
    return client.post(reverse("admin:devices_membership_add"), {**form, **fields})


def _errors(response) -> str:
    import re

    return " ".join(re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S))


@pytest.mark.parametrize(
    "password, fragments",
    [
        ("123", ["too short", "entirely numeric"]),
        ("password", ["too common"]),
        ("newbie12", ["too similar to the username"]),
    ],
)
def test_adding_an_operator_applies_the_password_validators(tenant, password, fragments):
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    page = boss.get(reverse("admin:devices_membership_add")).content.decode()
    assert "at least 8 characters" in page  # the rules are shown
    response = _add_operator(boss, password=password)
    assert response.status_code == 200
    assert all(fragment in _errors(response) for fragment in fragments), _errors(response)
    assert not get_user_model().objects.filter(username="newbie").exists()


@pytest.mark.parametrize("username", ["acme-admin\u200b", "eve\nforged log line", "<i>x</i>", "\u0430cme-admin"])
def test_adding_an_operator_refuses_hostile_usernames(tenant, username):
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    response = _add_operator(boss, username=username)
    assert response.status_code == 200 and "Invalid username" in _errors(response)
    assert "<i>x</i>" not in response.content.decode()
    assert get_user_model().objects.count() == 1  # boss only


def test_adding_an_operator_does_not_reveal_other_tenants_usernames(tenant, other_tenant):
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    operator_create(username="root", tenant=None, superuser=True)
    operator_create(username="outsider", tenant=other_tenant)
    operator_create(username="colleague", tenant=tenant)
    root, outsider = _errors(_add_operator(boss, username="root")), _errors(_add_operator(boss, username="outsider"))
    assert root == outsider and "This username cannot be used" in root
    assert "exists" not in root and "globex" not in root
    assert "already exists in tenant" in _errors(_add_operator(boss, username="colleague"))


# --- list ------------------------------------------------------------------------------------------------


def test_sync_badges_and_filters(alice, fleet):
    device_client(fleet["a1"]).get("/device/v1/shadow", expect=200)  # seen: no longer stale
    device_client(fleet["a2"]).get("/device/v1/shadow", expect=200)
    twin_update_desired(device=fleet["a1"], document={"led": "on"})  # a-1 pending, a-2 synced
    url = reverse("admin:devices_device_changelist")
    page = alice.get(url).content.decode()
    assert f'iot-badge-pending" data-badge data-pk="{fleet["a1"].pk}"' in page
    assert f'iot-badge-synced" data-badge data-pk="{fleet["a2"].pk}"' in page
    pending = alice.get(url, {"sync": "pending"}).content.decode()
    assert "a-1" in pending and "a-2" not in pending
    by_tag = alice.get(url, {"tag": "site:lyon"}).content.decode()
    assert "a-2" in by_tag and "a-1" not in by_tag
    by_key = alice.get(url, {"tag": "site"}).content.decode()
    assert "a-1" in by_key and "a-2" in by_key
    search = alice.get(url, {"q": "a-2"}).content.decode()
    assert ">a-2<" in search and ">a-1<" not in search


def test_device_list_query_count_does_not_grow_with_rows(alice, tenant, django_assert_max_num_queries):
    for n in range(40):
        device_provision(tenant=tenant, device_id=f"bulk-{n}")
    with django_assert_max_num_queries(12):
        response = alice.get(reverse("admin:devices_device_changelist"))
    assert response.content.decode().count("data-badge") == 40


# --- the twin panel and its editor ------------------------------------------------------------------


def test_change_page_has_the_twin_panel(alice, fleet):
    twin_update_desired(device=fleet["a1"], document={"interval": 15})
    page = alice.get(reverse("admin:devices_device_change", args=[fleet["a1"].pk])).content.decode()
    assert 'id="iot-twin"' in page and 'id="iot-editor"' in page
    assert '"interval": 15' in page
    assert 'value="1"' in page  # expected_version starts at the current desired version


def test_saving_desired_goes_through_the_twin_service(alice, fleet):
    device = fleet["a1"]
    twin = post_desired(alice, device, {"document": {"led": "on"}, "mode": "merge", "expected_version": 0}, 200)
    assert twin["desired_version"] == 1 and twin["desired"] == {"led": "on"}
    assert twin["sync_status"] in ("pending", "stale") and twin["delta"] == {"led": "on"}
    twin = post_desired(alice, device, {"document": {"fan": 2}, "mode": "replace", "expected_version": 1}, 200)
    device.refresh_from_db()
    assert device.desired_state == {"fan": 2} and device.desired_version == 2
    assert device.desired_published_version < device.desired_version  # the bridge will deliver it


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"document": [1, 2]}, 400, "must be a JSON object"),
        ({"document": {"a": 1}, "mode": "sideways"}, 400, 'mode must be "merge" or "replace"'),
        ({"document": {"a": 1}, "expected_version": "0"}, 400, "expected_version must be an integer"),
        ({"document": {"a": 1}, "expected_version": 7}, 409, "does not match desired_version 0"),
        ({"document": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}, 400, "deep"),
        ({"document": {"big": "x" * 9000}}, 413, "bytes"),
        ({"document": {"t": float("nan")}}, 400, "NaN"),
    ],
)
def test_invalid_desired_is_refused_with_the_services_reason(alice, fleet, body, status, fragment):
    error = post_desired(alice, fleet["a1"], body, status)
    assert fragment in error["detail"], error
    fleet["a1"].refresh_from_db()
    assert fleet["a1"].desired_version == 0 and fleet["a1"].desired_state == {}


def test_desired_request_that_is_not_json_is_a_400(alice, fleet):
    response = alice.post(desired_url(fleet["a1"]), "{nope", content_type="application/json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_desired_form_without_javascript(alice, fleet):
    device = fleet["a1"]
    bad = alice.post(desired_url(device), {"document": "{oops", "mode": "merge"}, follow=True)
    assert "Desired state not saved" in bad.content.decode() and "not valid JSON" in bad.content.decode()
    good = alice.post(desired_url(device), {"document": '{"led": "off"}', "mode": "merge"}, follow=True)
    assert "Desired state saved: version 1" in good.content.decode()


def test_viewer_can_look_but_not_change(viewer, fleet):
    device = fleet["a1"]
    page = viewer.get(reverse("admin:devices_device_change", args=[device.pk])).content.decode()
    assert 'id="iot-twin"' in page and 'id="iot-editor"' not in page and "Rotate token" not in page
    response = viewer.post(desired_url(device), json.dumps({"document": {"a": 1}}), content_type="application/json")
    assert response.status_code == 403
    assert viewer.post(reverse("admin:devices_device_rotate", args=[device.pk])).status_code == 403
    assert viewer.post(reverse("admin:devices_device_decommission", args=[device.pk])).status_code == 403
    assert viewer.get(reverse("admin:devices_device_add")).status_code == 403
    device.refresh_from_db()
    assert device.status == DeviceStatus.ACTIVE and device.desired_version == 0


# --- token and lifecycle actions -----------------------------------------------------------------------


def test_rotate_token_shows_the_new_token_once_and_the_old_one_stops_working(alice, fleet):
    device = fleet["a1"]
    url = reverse("admin:devices_device_rotate", args=[device.pk])
    assert "stops working" in alice.get(url).content.decode()  # confirmation first
    response = alice.post(url)
    assert "no-store" in response["Cache-Control"]
    token = response.context["token"]
    assert token.startswith("iotd_") and token in response.content.decode()
    device_client(device).get("/device/v1/shadow", expect=401)
    device.token = token
    device_client(device).get("/device/v1/shadow", expect=200)


def test_issue_and_revoke_certificates_from_the_device_page(alice, viewer, fleet):
    from cryptography import x509

    from devices.models import DeviceCertificate

    device = fleet["a1"]
    page = alice.get(reverse("admin:devices_device_change", args=[device.pk])).content.decode()
    assert "Issue certificate" in page and "none (the device logs in with its provision token)" in page
    url = reverse("admin:devices_device_certificate", args=[device.pk])
    assert "shown once" in alice.get(url).content.decode()  # confirmation first
    response = alice.post(url)
    assert "no-store" in response["Cache-Control"]
    issued = response.context["certificate"]
    assert "PRIVATE KEY" in response.context["private_key"] and issued.certificate_pem in response.content.decode()
    assert x509.load_pem_x509_certificate(issued.certificate_pem.encode()).serial_number == int(issued.serial, 16)
    page = alice.get(reverse("admin:devices_device_change", args=[device.pk])).content.decode()
    assert issued.serial[:16] in page and "active" in page
    assert viewer.post(url).status_code == 403 and DeviceCertificate.objects.count() == 1  # viewers cannot
    revoke = reverse("admin:devices_device_revoke_certificates", args=[device.pk])
    assert alice.post(revoke).status_code == 302
    assert DeviceCertificate.objects.get().revoke_reason == "revoked in admin by alice-admin"
    other = fleet["b1"]
    assert alice.post(reverse("admin:devices_device_certificate", args=[other.pk])).status_code == 404


def test_decommission_after_confirmation(alice, fleet):
    device = fleet["a1"]
    url = reverse("admin:devices_device_decommission", args=[device.pk])
    assert "cannot be undone" in alice.get(url).content.decode()
    assert alice.post(url).status_code == 302
    device.refresh_from_db()
    assert device.status == DeviceStatus.DECOMMISSIONED
    device_client(device).get("/device/v1/shadow", expect=401)
    error = post_desired(alice, device, {"document": {"a": 1}}, 409)
    assert error["code"] == "device_decommissioned"


def test_devices_cannot_be_deleted_from_admin(alice, fleet):
    root = staff_client(None, "root", superuser=True)
    for client in (alice, root):
        assert client.get(reverse("admin:devices_device_delete", args=[fleet["a1"].pk])).status_code == 403
    assert Device.objects.filter(pk=fleet["a1"].pk).exists()


def test_provisioning_from_admin(alice, tenant, other_tenant):
    url = reverse("admin:devices_device_add")
    response = alice.post(url, {"tenant": "acme", "device_id": "new-1", "tags": '{"site": "paris"}'})
    assert response.status_code == 200
    token = response.context["token"]
    assert "no-store" in response["Cache-Control"] and token in response.content.decode()
    device = Device.objects.get(tenant=tenant, device_id="new-1")
    assert device.tags == {"site": "paris"}
    device.token = token
    device_client(device).get("/device/v1/shadow", expect=200)

    duplicate = alice.post(url, {"tenant": "acme", "device_id": "new-1", "tags": "{}"})
    assert "already exists" in duplicate.content.decode()
    bad_id = alice.post(url, {"tenant": "acme", "device_id": "a/b", "tags": "{}"})
    assert "Invalid device id" in bad_id.content.decode()
    forged = alice.post(url, {"tenant": "globex", "device_id": "sneaky", "tags": "{}"})
    assert "Select a valid choice" in forged.content.decode()
    assert not Device.objects.filter(device_id__in=["sneaky", "a/b"]).exists()


def test_admin_requires_login(fleet):
    response = Client().get(reverse("admin:devices_device_twin", args=[fleet["a1"].pk]))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_user_without_membership_sees_nothing(fleet):
    user = get_user_model().objects.create_user("drifter", password="pw-123456789", is_staff=True)
    client = Client()
    client.force_login(user)
    assert client.get(reverse("admin:devices_device_changelist")).status_code == 403
    assert not Membership.objects.filter(user=user).exists()


def test_device_page_shows_the_broker_account_when_iotcloud_manages_it(alice, fleet, settings):
    url = reverse("admin:devices_device_change", args=[fleet["a1"].pk])
    assert "broker account" not in alice.get(url).content.decode().lower()
    settings.MQTT_DEVICE_AUTH = "dynsec"
    Device.objects.filter(pk=fleet["a1"].pk).update(broker_account_version=2, broker_synced_version=1)
    assert "waiting for the bridge" in alice.get(url).content.decode()
    Device.objects.filter(pk=fleet["a1"].pk).update(broker_synced_version=2)
    assert "in step with the broker" in alice.get(url).content.decode()


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        ('{"document": ' + "[" * 20_000 + "]" * 20_000 + "}", 400, "nested too deeply"),
        ('{"document": {"t": NaN}}', 400, "NaN"),
        ('{"document": {"t": "\\ud800"}}', 400, "surrogate"),
        ('{"document": {"t": "' + "x" * 70_000 + '"}}', 413, "larger than"),
        (b'{"document": {"t": "\xff"}}', 400, "UTF-8"),
    ],
)
def test_hostile_desired_bodies_are_refused_not_crashed(alice, fleet, raw, status, fragment):
    response = alice.post(desired_url(fleet["a1"]), raw, content_type="application/json")
    assert response.status_code == status, response.content[:300]
    assert fragment in response.json()["detail"]
    fleet["a1"].refresh_from_db()
    assert fleet["a1"].desired_version == 0


def test_hostile_desired_in_the_form_path(alice, fleet):
    deep = "[" * 20_000 + "]" * 20_000
    page = alice.post(desired_url(fleet["a1"]), {"document": deep, "mode": "merge"}, follow=True).content.decode()
    assert "Desired state not saved" in page and "nested too deeply" in page


def test_tags_edit_on_the_device_page(alice, fleet):
    url = reverse("admin:devices_device_change", args=[fleet["a1"].pk])
    response = alice.post(url, {"tags": '{"site": "oslo"}'})
    assert response.status_code == 302
    fleet["a1"].refresh_from_db()
    assert fleet["a1"].tags == {"site": "oslo"}
    for bad, fragment in [("[" * 20_000 + "]" * 20_000, "nested too deeply"), ('{"a": NaN}', "NaN"),
                          ('{"a": {"b": 1}}', "")]:  # fmt: skip
        page = alice.post(url, {"tags": bad}).content.decode()
        assert "errorlist" in page and fragment in page
    fleet["a1"].refresh_from_db()
    assert fleet["a1"].tags == {"site": "oslo"}


def test_provisioning_refuses_hostile_tags(alice, tenant):
    page = alice.post(
        reverse("admin:devices_device_add"), {"tenant": "acme", "device_id": "x-1", "tags": "[" * 20_000 + "]" * 20_000}
    ).content.decode()
    assert "nested too deeply" in page
    assert not Device.objects.filter(device_id="x-1").exists()


def _password_is(username, password) -> bool:
    return get_user_model().objects.get(username=username).check_password(password)


def test_tenant_admin_sets_an_operators_password(tenant, other_tenant):
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    worker = operator_create(username="worker", tenant=tenant, password="old-password-1")
    outsider = operator_create(username="outsider", tenant=other_tenant, password="old-password-1")
    url = reverse("admin:devices_membership_password", args=[worker.membership.pk])
    assert "Set a new password" in boss.get(reverse("admin:devices_membership_change",
                                                    args=[worker.membership.pk])).content.decode()  # fmt: skip
    mismatch = boss.post(url, {"password1": "N3w-secret-pass", "password2": "different"})
    assert mismatch.status_code == 200 and "errorlist" in mismatch.content.decode()
    assert boss.post(url, {"password1": "N3w-secret-pass", "password2": "N3w-secret-pass"}).status_code == 302
    assert _password_is("worker", "N3w-secret-pass")
    assert not _password_is("worker", "old-password-1")

    foreign = reverse("admin:devices_membership_password", args=[outsider.membership.pk])
    assert boss.post(foreign, {"password1": "N3w-secret-pass", "password2": "N3w-secret-pass"}).status_code == 404
    assert _password_is("outsider", "old-password-1")


def test_only_tenant_admins_set_passwords_and_never_a_superusers(tenant):
    plain = staff_client(tenant, "plain-operator", role=Role.OPERATOR)
    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    worker = operator_create(username="worker", tenant=tenant, password="old-password-1")
    url = reverse("admin:devices_membership_password", args=[worker.membership.pk])
    assert plain.post(url, {"password1": "N3w-secret-pass", "password2": "N3w-secret-pass"}).status_code == 403
    root = operator_create(username="root-in-acme", tenant=tenant, password="old-password-1", superuser=True)
    root_url = reverse("admin:devices_membership_password", args=[root.membership.pk])
    assert boss.post(root_url, {"password1": "N3w-secret-pass", "password2": "N3w-secret-pass"}).status_code == 403


def test_a_new_password_signs_the_operator_out_everywhere(tenant):
    from rest_framework.test import APIClient

    from devices.services import operator_token_create

    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    worker = staff_client(tenant, "worker")  # signed in to admin
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=worker.user)}")
    boss_bearer = APIClient()
    boss_bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token_create(user=boss.user)}")
    assert bearer.get("/customer/devices").status_code == 200
    assert worker.get(reverse("admin:index")).status_code == 200

    url = reverse("admin:devices_membership_password", args=[worker.user.membership.pk])
    page = boss.get(url).content.decode()
    assert "signs worker out everywhere" in page and "bearer token they hold is revoked" in page
    done = boss.post(url, {"password1": "N3w-secret-pass", "password2": "N3w-secret-pass"}, follow=True)
    assert "their sessions ended and their bearer tokens were revoked" in done.content.decode()

    assert bearer.get("/customer/devices").status_code == 401  # the token is gone
    assert worker.get(reverse("admin:index")).status_code == 302  # the session ended: back to sign-in
    assert boss.get(reverse("admin:index")).status_code == 200  # nobody else is affected
    assert boss_bearer.get("/customer/devices").status_code == 200


def test_disabling_an_operators_password_revokes_their_tokens(tenant):
    from knox.models import AuthToken

    from devices.services import operator_token_create

    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    worker = operator_create(username="worker", tenant=tenant, password="old-password-1")
    operator_token_create(user=worker)
    url = reverse("admin:devices_membership_password", args=[worker.membership.pk])
    assert boss.post(url, {"usable_password": "false"}).status_code == 302
    worker.refresh_from_db()
    assert not worker.has_usable_password() and not AuthToken.objects.filter(user=worker).exists()


def test_changing_ones_own_password_in_admin_revokes_ones_tokens(tenant):
    from knox.models import AuthToken

    from devices.services import operator_token_create

    boss = staff_client(tenant, "boss", role=Role.ADMIN)
    operator_token_create(user=boss.user)
    response = boss.post(
        reverse("admin:password_change"),
        {"old_password": STAFF_PASSWORD, "new_password1": "N3w-secret-pass", "new_password2": "N3w-secret-pass"},
    )
    assert response.status_code == 302
    assert not AuthToken.objects.filter(user=boss.user).exists()
    assert boss.get(reverse("admin:index")).status_code == 200  # Django keeps the session that changed it
