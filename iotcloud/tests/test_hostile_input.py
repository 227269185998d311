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
