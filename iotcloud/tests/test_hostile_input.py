"""Ids and parameters that cannot exist are 4xx, never a 500 (PostgreSQL refuses NUL bytes, for one)."""

import pytest

pytestmark = pytest.mark.django_db

OPERATOR_URLS = [
    "/customer/devices/%00/twin",
    "/customer/devices/%00",
    "/customer/devices/a%00b/twin/delta",
    "/customer/devices/%F0%9F%98%80/twin",
    "/customer/devices/" + "x" * 3000,
    "/customer/devices?tag=a%00",
    "/customer/devices?tag=a:%00",
    "/customer/devices?device_id_prefix=%00",
    "/customer/devices?tenant=%00",
    "/customer/devices?cursor=%00",
    "/customer/jobs/%00",
    "/customer/jobs/%00/executions",
    "/customer/jobs?document_type=%00",
]


@pytest.mark.parametrize("url", OPERATOR_URLS)
def test_operator_routes(operator, url):
    response = operator.get(url)
    assert response.status_code < 500, (url, response.status_code)


@pytest.mark.parametrize("method", ["get", "put"])
def test_device_job_route_with_nul(device_api, method):
    response = device_api.call(method, "/device/v1/jobs/%00/execution", {"status": "IN_PROGRESS"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"document_type": "x", "targets": {"device_ids": ["sensor-1"]}, "description": "a\u0000b"},
        {"document_type": "x\u0000", "targets": {"device_ids": ["sensor-1"]}},
        {"document_type": "x", "targets": {"device_ids": ["sensor\u0000"]}},
        {"document_type": "x", "targets": {"tags": {"k": "v\u0000"}}},
    ],
)
def test_job_bodies_with_nul_are_400(operator, device, body):
    assert operator.post("/customer/jobs", body).status_code == 400


@pytest.mark.parametrize("version", [2**31, 10**30, -(10**30)])
def test_huge_report_versions_are_4xx(device_api, version):
    response = device_api.post("/device/v1/shadow/reported", {"reported": {}, "version": version})
    assert 400 <= response.status_code < 500, response.content


def test_huge_expected_version_is_4xx(operator, device):
    body = {"desired": {"a": 1}, "expected_version": 10**30}
    response = operator.patch(f"/customer/devices/{device.device_id}/twin/desired", body)
    assert 400 <= response.status_code < 500, response.content


def test_huge_execution_number_is_4xx(operator, device, device_api):
    body = {"document_type": "x", "targets": {"device_ids": [device.device_id]}, "job_id": "j"}
    operator.post("/customer/jobs", body, expect=201)
    response = device_api.put("/device/v1/jobs/j/execution", {"status": "IN_PROGRESS", "execution_number": 10**30})
    assert response.status_code == 400, response.content


@pytest.mark.parametrize(
    "url",
    [
        "/admin/devices/device/?tag=%00",  # was a 500: PostgreSQL refuses NUL in the tag lookup
        "/admin/devices/device/?q=a%00b",
        "/admin/jobs/job/?q=%00",
        "/admin/devices/membership/?q=%00",
        "/admin/autocomplete/?app_label=devices&model_name=membership&field_name=tenant&term=%00",
        "/admin/dashboard/?tenant=%00",
        "/customer/devices?tag=%00",
        "/customer/devices?%00=1",
    ],
)
def test_nul_in_any_query_string_is_a_400(url, tenant):
    from django.test import Client

    from devices.services import operator_create

    client = Client()
    client.force_login(operator_create(username="nul-probe", tenant=tenant, role="admin", password="pw-123456789"))
    response = client.get(url)
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


def test_out_of_range_ids_in_admin_endpoints_are_not_errors(tenant):
    from django.test import Client

    from devices.services import operator_create

    client = Client()
    client.force_login(operator_create(username="big-ids", tenant=tenant, role="admin", password="pw-123456789"))
    big = 10**30
    assert client.get(f"/admin/devices/device/status.json?ids={big},-3").json() == {"devices": {}}
    assert client.get(f"/admin/devices/device/{big}/twin.json").status_code == 404
    assert client.get(f"/admin/devices/membership/{big}/password/").status_code == 404
    assert client.get(f"/admin/jobs/job/progress.json?ids={big}").status_code == 400
    for page in ["devices/device", "devices/membership", "jobs/job", "jobs/jobexecution", "devices/tenant"]:
        assert client.get(f"/admin/{page}/{big}/change/").status_code == 302  # "does not exist", back to the index
