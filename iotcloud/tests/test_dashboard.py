"""Admin dashboard: device counts by sync status, jobs in progress, recent reports; scoped to the tenant."""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from devices.choices import DeviceStatus, Role
from devices.models import Device
from iotcloud.admin_site import IotcloudAdminSite
from iotcloud.testing import staff_client as staff
from jobs import services as job_services
from jobs.choices import ExecutionStatus

DASHBOARD = reverse("admin:dashboard")
DASHBOARD_JSON = reverse("admin:dashboard_json")


def set_twin(device, *, desired=0, reported=0, seen_ago=None, reported_ago=None, status=DeviceStatus.ACTIVE):
    now = timezone.now()
    Device.objects.filter(pk=device.pk).update(
        desired_version=desired,
        reported_version=reported,
        last_seen=None if seen_ago is None else now - seen_ago,
        reported_updated_at=None if reported_ago is None else now - reported_ago,
        status=status,
    )


@pytest.fixture
def fleet(tenant, other_tenant, make_device):
    """acme: 2 synced, 1 pending, 3 stale (one never seen), 1 decommissioned; globex: 1 synced, 1 pending."""
    minute = timedelta(minutes=1)
    devices = {name: make_device(tenant, name) for name in ["s1", "s2", "p1", "st1", "st2", "st3", "gone"]}
    set_twin(devices["s1"], desired=2, reported=2, seen_ago=minute, reported_ago=minute)
    set_twin(devices["s2"], desired=0, reported=0, seen_ago=minute, reported_ago=3 * minute)
    set_twin(devices["p1"], desired=3, reported=1, seen_ago=minute, reported_ago=2 * minute)
    set_twin(devices["st1"], desired=1, reported=1, seen_ago=timedelta(hours=2), reported_ago=timedelta(hours=2))
    set_twin(devices["st2"], desired=2, reported=1, seen_ago=timedelta(days=1))
    set_twin(devices["gone"], seen_ago=minute, status=DeviceStatus.DECOMMISSIONED)
    g1, g2 = make_device(other_tenant, "globex-a"), make_device(other_tenant, "globex-b")
    set_twin(g1, seen_ago=minute, reported_ago=timedelta(seconds=5))
    set_twin(g2, desired=1, seen_ago=minute)
    return devices


def test_admin_site_is_iotcloud():
    assert isinstance(admin.site, IotcloudAdminSite)  # the lazy default site proxies isinstance
    assert admin.site.site_header == "iotcloud"


def test_operator_counts_are_scoped(tenant, fleet):
    client = staff(tenant, "ops")
    data = client.get(DASHBOARD_JSON).json()
    assert data["tenant"] == "acme"
    assert data["counts"] == {"synced": 2, "pending": 1, "stale": 3, "decommissioned": 1}
    assert [d["device_id"] for d in data["recent"]] == ["s1", "p1", "s2", "st1"]
    assert [d["sync_status"] for d in data["recent"]] == ["synced", "pending", "synced", "stale"]
    assert data["recent"][0]["url"] == reverse("admin:devices_device_change", args=[fleet["s1"].pk])


def test_superuser_sees_all_or_picks_a_tenant(tenant, other_tenant, fleet):
    root = staff(None, "root", superuser=True)
    everything = root.get(DASHBOARD_JSON).json()
    assert everything["tenant"] is None
    assert everything["counts"] == {"synced": 3, "pending": 2, "stale": 3, "decommissioned": 1}
    assert everything["recent"][0]["device_id"] == "globex-a"
    globex = root.get(DASHBOARD_JSON, {"tenant": "globex"}).json()
    assert globex["counts"] == {"synced": 1, "pending": 1, "stale": 0, "decommissioned": 0}
    assert root.get(DASHBOARD_JSON, {"tenant": "nope"}).status_code == 404
    page = root.get(DASHBOARD, {"tenant": "globex"})
    assert page.status_code == 200
    assert page.context["live_tenants"] == ["globex"]
    assert root.get(DASHBOARD).context["live_tenants"] == ["acme", "globex"]


def test_operator_cannot_pick_another_tenant(tenant, fleet):
    client = staff(tenant, "ops")
    data = client.get(DASHBOARD_JSON, {"tenant": "globex"}).json()
    assert data["tenant"] == "acme"
    page = client.get(DASHBOARD, {"tenant": "globex"})
    assert page.context["live_tenants"] == ["acme"]
    body = page.content.decode()
    assert "globex-a" not in body and 'name="tenant"' not in body


def test_jobs_in_progress_with_progress(tenant, other_tenant, fleet, make_device):
    active = [fleet["s1"], fleet["s2"]]
    job_services.job_create(tenant=tenant, job_id="fw-1", document_type="fw", device_ids=["s1", "s2"])
    job_services.job_create(tenant=tenant, job_id="done", document_type="x", device_ids=["p1"])
    job_services.job_create(tenant=other_tenant, job_id="globex-job", document_type="x", device_ids=["globex-a"])
    job_services.execution_update(device=active[0], job_id="fw-1", status=ExecutionStatus.IN_PROGRESS)
    job_services.execution_update(device=active[0], job_id="fw-1", status=ExecutionStatus.SUCCEEDED)
    p1 = fleet["p1"]
    job_services.execution_update(device=p1, job_id="done", status=ExecutionStatus.IN_PROGRESS)
    job_services.execution_update(device=p1, job_id="done", status=ExecutionStatus.FAILED)  # completes the job
    client = staff(tenant, "ops")
    data = client.get(DASHBOARD_JSON).json()
    assert [j["job_id"] for j in data["jobs"]] == ["fw-1"]
    progress = data["jobs"][0]["progress"]
    assert progress["counts"]["SUCCEEDED"] == 1 and progress["counts"]["QUEUED"] == 1
    assert progress["percent_done"] == 50.0
    assert "succeeded <b>1</b> · queued <b>1</b> of <b>2</b>" in data["jobs"][0]["html"]
    body = client.get(DASHBOARD).content.decode()
    assert "fw-1" in body and "globex-job" not in body
    assert "succeeded <b>1</b> · queued <b>1</b> of <b>2</b>" in body


def test_dashboard_page_renders_cards_and_live_hooks(tenant, fleet):
    client = staff(tenant, "viewer", role=Role.VIEWER)  # read-only roles see the dashboard too
    page = client.get(DASHBOARD)
    assert page.status_code == 200
    body = page.content.decode()
    assert '<div class="iot-num" data-count="stale">3</div>' in body
    assert 'id="iot-live-tenants"' in body and "iotcloud/dashboard.js" in body
    assert DASHBOARD_JSON in body


def test_dashboard_queries_are_bounded(tenant, fleet, make_device, django_assert_max_num_queries):
    client = staff(tenant, "ops")
    for i in range(30):
        make_device(tenant, f"extra-{i}")
        job_services.job_create(tenant=tenant, job_id=f"j-{i}", document_type="x", device_ids=["s1"])
    with django_assert_max_num_queries(8):
        assert client.get(DASHBOARD_JSON).status_code == 200


def test_index_links_to_dashboard(tenant):
    client = staff(tenant, "ops")
    body = client.get(reverse("admin:index")).content.decode()
    assert f'href="{DASHBOARD}"' in body


def test_requires_staff_with_a_tenant(db, client):
    assert client.get(DASHBOARD).status_code == 302  # to the login page
    assert client.get(DASHBOARD_JSON).status_code == 302
    # operator_create refuses a non-superuser without a tenant; such a staff user can still exist.
    user = get_user_model().objects.create_user("staff-no-tenant", is_staff=True)
    client.force_login(user)
    assert client.get(DASHBOARD).status_code == 403
    assert client.get(DASHBOARD_JSON).status_code == 403
