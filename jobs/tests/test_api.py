"""Jobs over HTTP: operators under /customer/jobs, devices under /device/v1/jobs."""

from datetime import timedelta

import pytest
from django.utils import timezone

from iotcloud.testing import device_client
from jobs.models import Job, JobExecution

pytestmark = pytest.mark.django_db


def create(operator, device_ids, expect=201, **extra):
    body = {"document_type": "firmware_update", "document_params": {"version": "2.1"},
            "targets": {"device_ids": device_ids}, **extra}  # fmt: skip
    return operator.post("/customer/jobs", body, expect=expect).json()


def test_curl_walkthrough_create_claim_succeed_complete(operator, tenant, make_device):
    device = make_device(tenant, "pump-1")
    job = create(operator, ["pump-1"], job_id="fw-2-1", description="roll out 2.1")
    assert job["status"] == "IN_PROGRESS"
    assert job["progress"] == {"counts": {**dict.fromkeys(
        ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "CANCELED", "REMOVED"], 0),
        "QUEUED": 1},
        "total": 1, "percent_done": 0.0}  # fmt: skip

    dev = device_client(device)
    pending = dev.get("/device/v1/jobs/pending", expect=200).json()["jobs"]
    assert [(j["job_id"], j["execution_number"], j["document"]) for j in pending] == [
        ("fw-2-1", 1, {"type": "firmware_update", "params": {"version": "2.1"}})
    ]
    assert pending[0]["queued_at"].endswith("Z") and pending[0]["expires_at"] is None

    claimed = dev.put("/device/v1/jobs/fw-2-1/execution", {"status": "IN_PROGRESS", "execution_number": 1},
                      expect=200).json()  # fmt: skip
    assert claimed["status"] == "IN_PROGRESS" and claimed["execution_number"] == 2 and claimed["started_at"]
    # A device that rebooted mid-job finds it: IN_PROGRESS executions stay in the pending list.
    (running,) = dev.get("/device/v1/jobs/pending", expect=200).json()["jobs"]
    assert (running["job_id"], running["status"], running["execution_number"]) == ("fw-2-1", "IN_PROGRESS", 2)
    done = dev.put("/device/v1/jobs/fw-2-1/execution",
                   {"status": "SUCCEEDED", "status_details": {"installed": "2.1"}, "execution_number": 2},
                   expect=200).json()  # fmt: skip
    assert done["status"] == "SUCCEEDED" and done["status_details"] == {"installed": "2.1"}

    assert dev.get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}

    detail = operator.get("/customer/jobs/fw-2-1", expect=200).json()
    assert detail["status"] == "COMPLETED" and detail["completed_at"]
    assert detail["progress"]["percent_done"] == 100.0 and detail["progress"]["counts"]["SUCCEEDED"] == 1
    execution = dev.get("/device/v1/jobs/fw-2-1/execution", expect=200).json()
    assert execution["status"] == "SUCCEEDED" and execution["document"]["type"] == "firmware_update"


def test_pending_is_fifo_limited_to_ten_and_skips_expired_and_others(operator, tenant, make_device):
    device, other = make_device(tenant, "d"), make_device(tenant, "other")
    expired = create(operator, ["d"], job_id="expired", expires_at=(timezone.now() + timedelta(hours=1)).isoformat())
    Job.objects.filter(job_id=expired["job_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    for n in range(12):
        create(operator, ["d"], job_id=f"job-{n:02}")
        JobExecution.objects.filter(job__job_id=f"job-{n:02}").update(
            queued_at=timezone.now() - timedelta(minutes=60 - n)
        )
    create(operator, ["other"], job_id="not-mine")
    jobs = device_client(device).get("/device/v1/jobs/pending", expect=200).json()["jobs"]
    assert [j["job_id"] for j in jobs] == [f"job-{n:02}" for n in range(10)]
    assert [j["job_id"] for j in device_client(other).get("/device/v1/jobs/pending").json()["jobs"]] == ["not-mine"]


def test_pending_is_one_statement_with_the_token_lookup(postgres_only, operator, tenant, make_device):
    """The token lookup, the device's pending executions and their jobs' fields: one SQL statement."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    device = make_device(tenant, "d")
    for n in range(3):
        create(operator, ["d"], job_id=f"job-{n}")
    client = device_client(device)
    client.get("/device/v1/jobs/pending", expect=200)  # the first request moves last_seen (a write)
    with CaptureQueriesContext(connection) as queries:
        jobs = client.get("/device/v1/jobs/pending", expect=200).json()["jobs"]
    assert [j["job_id"] for j in jobs] == ["job-0", "job-1", "job-2"]
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]  # (the test's)
    assert len(statements) == 1, statements
    assert "provision_token_hash" in statements[0] and "job_executions" in statements[0]


def test_pending_refuses_a_decommissioned_devices_token(operator, tenant, make_device):
    from devices.services import device_decommission

    device = make_device(tenant, "d")
    create(operator, ["d"], job_id="j")
    device_decommission(device=device)
    body = device_client(device).get("/device/v1/jobs/pending", expect=401).json()
    assert body["detail"] == "Invalid provision token"


def test_pending_with_a_forwarded_certificate_is_the_same_list(settings, operator, tenant, make_device):
    """A certificate's lookup is not the token's: the pending list is then read on its own, the same."""
    import ipaddress
    from urllib.parse import quote

    from django.test import Client

    from devices.certificates import certificate_issue

    settings.DEVICE_CERT_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/24")]
    device = make_device(tenant, "d")
    for n in range(2):
        create(operator, ["d"], job_id=f"job-{n}")
    issued, _ = certificate_issue(device=device)
    by_certificate = Client().get("/device/v1/jobs/pending", REMOTE_ADDR="10.0.0.7",
                                  HTTP_X_CLIENT_CERTIFICATE=quote(issued.certificate_pem))  # fmt: skip
    assert by_certificate.status_code == 200, by_certificate.content
    by_token = device_client(device).get("/device/v1/jobs/pending", expect=200).json()
    assert by_certificate.json() == by_token and [j["job_id"] for j in by_token["jobs"]] == ["job-0", "job-1"]


def test_list_filters_and_executions(operator, tenant, make_device):
    for n in range(3):
        make_device(tenant, f"d{n}")
    create(operator, ["d0", "d1", "d2"], job_id="a")
    create(operator, ["d0"], job_id="b")
    operator.post("/customer/jobs/b/cancel", {}, expect=200)
    ids = [j["job_id"] for j in operator.get("/customer/jobs?status=IN_PROGRESS", expect=200).json()["results"]]
    assert ids == ["a"]
    assert [j["job_id"] for j in operator.get("/customer/jobs", expect=200).json()["results"]] == ["b", "a"]
    operator.get("/customer/jobs?status=NOPE", expect=400)

    page = operator.get("/customer/jobs/a/executions?page_size=2", expect=200).json()
    assert len(page["results"]) == 2 and page["next"]
    only = operator.get("/customer/jobs/a/executions?device_id=d1", expect=200).json()["results"]
    assert [e["device_id"] for e in only] == ["d1"]
    canceled = operator.get("/customer/jobs/b/executions?status=CANCELED", expect=200).json()["results"]
    assert [e["status"] for e in canceled] == ["CANCELED"]
    operator.get("/customer/jobs/a/executions?status=BAD", expect=400)


def test_cancel_and_force_cancel_over_http(operator, tenant, make_device):
    device = make_device(tenant, "d")
    create(operator, ["d"], job_id="j")
    device_client(device).put("/device/v1/jobs/j/execution", {"status": "IN_PROGRESS"}, expect=200)
    body = operator.post("/customer/jobs/j/cancel", {"reason": "oops"}, expect=200).json()
    assert body["status"] == "CANCELED" and body["progress"]["counts"]["IN_PROGRESS"] == 1
    body = operator.post("/customer/jobs/j/cancel", {"force": True}, expect=200).json()
    assert body["progress"]["counts"]["CANCELED"] == 1
    operator.post("/customer/jobs/j/cancel", {"force": "yes"}, expect=400)


BAD_CREATES = [
    ({"document_type": "x", "targets": {"device_ids": ["ghost", "d"]}}, 400, "ghost"),
    ({"document_type": "x", "targets": {"device_ids": ["theirs"]}}, 400, "theirs"),
    ({"document_type": "x", "targets": {}}, 400, "targets"),
    ({"document_type": "x", "targets": {"device_ids": "d"}}, 400, "device_ids"),
    ({"document_type": "x", "targets": {"tags": ["site"]}}, 400, "tags"),
    ({"document_type": "x", "targets": {"device_ids": ["d"]}, "document_params": "p"}, 400, "document_params"),
    ({"document_type": "x", "targets": {"device_ids": ["d"]}, "document_params": {"b": "x" * 40000}}, 413,
     "JOB_MAX_DOCUMENT_BYTES"),
    ({"document_type": "x", "targets": {"device_ids": ["d"]}, "expires_at": "yesterday"}, 400, "expires_at"),
    ({"document_type": "x", "targets": {"device_ids": ["d"]}, "in_progress_timeout_seconds": "60"}, 400,
     "in_progress_timeout_seconds"),
    ({"targets": {"device_ids": ["d"]}}, 400, "document_type"),
    ({"document_type": "x", "targets": {"device_ids": ["d"]}, "colour": 1}, 400, "colour"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "named"), BAD_CREATES)
def test_bad_job_creation_is_refused_and_creates_nothing(operator, tenant, other_tenant, make_device, body, status,
                                                          named):  # fmt: skip
    make_device(tenant, "d")
    make_device(other_tenant, "theirs")
    response = operator.post("/customer/jobs", body, expect=status).json()
    assert named in response["detail"]
    assert not Job.objects.exists() and not JobExecution.objects.exists()


def test_duplicate_job_id_is_409(operator, tenant, make_device):
    make_device(tenant, "d")
    create(operator, ["d"], job_id="same")
    assert "same" in create(operator, ["d"], expect=409, job_id="same")["detail"]


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"status": "DONE"}, 400, "DONE"),
        ({"status": 1}, 400, "status"),
        ({"status": "SUCCEEDED"}, 400, "Cannot transition from QUEUED to SUCCEEDED"),
        ({"status": "IN_PROGRESS", "execution_number": 7}, 409, "execution_number"),
        ({"status": "IN_PROGRESS", "execution_number": "1"}, 400, "execution_number"),
        ({"status": "IN_PROGRESS", "status_details": "fine"}, 400, "status_details"),
        ({"status": "IN_PROGRESS", "status_details": {"log": "x" * 5000}}, 413, "JOB_MAX_STATUS_DETAILS_BYTES"),
        ({"status": "IN_PROGRESS", "extra": 1}, 400, "extra"),
    ],
)
def test_bad_execution_updates_are_refused_and_change_nothing(operator, tenant, make_device, body, status, named):
    device = make_device(tenant, "d")
    create(operator, ["d"], job_id="j")
    before = list(JobExecution.objects.values())
    response = device_client(device).put("/device/v1/jobs/j/execution", body, expect=status).json()
    assert named in response["detail"]
    assert list(JobExecution.objects.values()) == before


def test_device_routes_for_unknown_or_foreign_jobs_are_404(operator, other_operator, tenant, other_tenant, make_device):
    mine = make_device(tenant, "d")
    make_device(other_tenant, "d")
    create(other_operator, ["d"], job_id="theirs")
    client = device_client(mine)
    client.get("/device/v1/jobs/theirs/execution", expect=404)
    client.put("/device/v1/jobs/theirs/execution", {"status": "IN_PROGRESS"}, expect=404)
    client.get("/device/v1/jobs/nope/execution", expect=404)
    assert client.get("/device/v1/jobs/pending", expect=200).json() == {"jobs": []}


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", "/customer/jobs/theirs", None),
        ("post", "/customer/jobs/theirs/cancel", {}),
        ("get", "/customer/jobs/theirs/executions", None),
    ],
)
def test_another_tenants_job_is_404_for_operators(operator, other_operator, other_tenant, make_device, method, url,
                                                   body):  # fmt: skip
    make_device(other_tenant, "x")
    create(other_operator, ["x"], job_id="theirs")
    operator.call(method, url, body, expect=404)
    assert [j["job_id"] for j in operator.get("/customer/jobs", expect=200).json()["results"]] == []
    assert Job.objects.get(job_id="theirs").status == "IN_PROGRESS"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/device/v1/jobs/pending"),
        ("get", "/device/v1/jobs/j/execution"),
        ("put", "/device/v1/jobs/j/execution"),
    ],
)
def test_device_job_routes_need_a_valid_token(api_client_factory, method, url):
    assert api_client_factory().call(method, url, {"status": "IN_PROGRESS"}, expect=401).json()["detail"] == (
        "Missing provision token"
    )
    bad = api_client_factory(HTTP_X_PROVISION_TOKEN="iotd_nope")
    assert bad.call(method, url, {"status": "IN_PROGRESS"}, expect=401).json()["detail"] == "Invalid provision token"


def test_viewer_cannot_create_or_cancel(tenant, make_device, operator):
    from conftest import make_operator_client
    from devices.choices import Role

    make_device(tenant, "d")
    create(operator, ["d"], job_id="j")
    viewer = make_operator_client(tenant, "vera", role=Role.VIEWER)
    viewer.get("/customer/jobs/j", expect=200)
    viewer.post("/customer/jobs", {"document_type": "x", "targets": {"device_ids": ["d"]}}, expect=403)
    viewer.post("/customer/jobs/j/cancel", {}, expect=403)
