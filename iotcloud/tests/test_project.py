"""Project-level routes: OpenAPI, docs, health."""

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db

EXPECTED = {
    "/customer/devices": {"get", "post"},
    "/customer/devices/{device_id}": {"get", "patch"},
    "/customer/devices/{device_id}/rotate-token": {"post"},
    "/customer/devices/{device_id}/decommission": {"post"},
    "/customer/devices/{device_id}/twin": {"get"},
    "/customer/devices/{device_id}/twin/desired": {"patch", "put"},
    "/customer/devices/{device_id}/twin/delta": {"get"},
    "/device/v1/shadow": {"get"},
    "/device/v1/shadow/reported": {"post", "patch"},
    "/device/v1/shadow/document": {"get", "delete"},
    "/device/v1/shadow/update": {"post"},
    "/device/v1/shadows": {"get"},
    "/device/v1/shadows/{shadow_name}": {"get", "delete"},
    "/device/v1/shadows/{shadow_name}/update": {"post"},
    "/device/v1/shadows/{shadow_name}/reported": {"post", "patch"},
    "/customer/devices/{device_id}/shadows": {"get"},
    "/customer/devices/{device_id}/shadows/{shadow_name}": {"get", "delete"},
    "/customer/devices/{device_id}/shadows/{shadow_name}/desired": {"patch", "put"},
    "/customer/jobs": {"get", "post"},
    "/customer/jobs/{job_id}": {"get"},
    "/customer/jobs/{job_id}/cancel": {"post"},
    "/customer/jobs/{job_id}/executions": {"get"},
    "/device/v1/jobs/pending": {"get"},
    "/device/v1/jobs/{job_id}/execution": {"get", "put"},
    "/device/v1/jobs/start-next": {"post"},
}


def test_openapi_lists_every_route_with_its_methods(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = {path: set(ops) - {"parameters"} for path, ops in schema["paths"].items()}
    for path, methods in EXPECTED.items():
        assert path in paths, f"{path} missing from OpenAPI"
        assert methods <= paths[path], f"{path}: {paths[path]}"
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ProvisionToken"] == {"type": "apiKey", "in": "header", "name": "X-Provision-Token"}
    device_ops = schema["paths"]["/device/v1/shadow"]["get"]
    # Either credential: a certificate forwarded by a trusted TLS proxy, or the provision token.
    assert device_ops["security"] == [{"ClientCertificate": []}, {"ProvisionToken": []}]
    assert schemes["ClientCertificate"]["name"] == "X-Client-Certificate"


def test_openapi_declares_the_device_rate_limit(client, settings):
    paths = client.get("/openapi.json").json()["paths"]
    too_many = paths["/device/v1/shadow/reported"]["post"]["responses"]["429"]
    assert "Retry-After" in too_many["headers"]
    assert "429" in paths["/device/v1/jobs/{job_id}/execution"]["put"]["responses"]
    assert "429" not in paths["/customer/jobs"]["post"]["responses"]  # operators are not limited
    settings.DEVICE_RATE_LIMIT = ""
    paths = client.get("/openapi.json").json()["paths"]
    assert "429" not in paths["/device/v1/shadow/reported"]["post"]["responses"]


def test_docs_ui_is_served_without_a_cdn(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    assert b"cdn.jsdelivr" not in response.content


def test_health_probes(client):
    assert client.get("/healthz/live").json() == {"status": "ok"}
    # The old readiness path is /readyz now: the database answers (broker and bridge are not running here).
    assert client.get("/healthz/ready").json()["checks"]["database"]["status"] == "ok"


@override_settings(DEBUG=False)
def test_unknown_route_is_json_404(client):
    response = client.get("/customer/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "no_route"


def test_no_trailing_slash_redirects(client, operator):
    operator.get("/customer/devices/", expect=404)


def test_browsable_api_works_with_a_session(client, operator, device):
    client.force_login(operator.user)
    response = client.get("/customer/devices", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert device.device_id.encode() in response.content
    response = client.get(f"/customer/devices/{device.device_id}/twin", headers={"Accept": "text/html"})
    assert response.status_code == 200
