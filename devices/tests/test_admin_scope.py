"""Admin lists filter only by their declared filters, never by a secret (TenantScopedAdmin, iotcloud.admin_filters).

Django's admin applies any query parameter naming a model field as a filter:
`?provision_token_hash__startswith=ab` let a viewer read a device's token
digest prefix by prefix. Now an undeclared parameter is Django's "invalid
lookup" redirect (`?e=1`) and a secret one a 400, whether it matches or not.
"""

import re

import pytest
from django.urls import reverse

from devices.choices import Role
from devices.models import Device
from iotcloud.testing import staff_client
from jobs.models import Job
from jobs.services import job_create

pytestmark = pytest.mark.django_db

DEVICES = reverse("admin:devices_device_changelist")
JOBS = reverse("admin:jobs_job_changelist")
EXECUTIONS = reverse("admin:jobs_jobexecution_changelist")
MEMBERSHIPS = reverse("admin:devices_membership_changelist")
TENANTS = reverse("admin:devices_tenant_changelist")


@pytest.fixture
def viewer(tenant):
    return staff_client(tenant, "vera", role=Role.VIEWER)


@pytest.fixture
def root(db):
    return staff_client(None, "root", superuser=True)


@pytest.fixture
def fleet(tenant, other_tenant, make_device):
    devices = {
        "a1": make_device(tenant, "a-1", tags={"site": "paris"}),
        "a2": make_device(tenant, "a-2", tags={"site": "lyon"}),
        "b1": make_device(other_tenant, "b-1", tags={"site": "paris"}),
    }
    job_create(tenant=tenant, job_id="fw-1", document_type="firmware", device_ids=["a-1", "a-2"])
    job_create(tenant=tenant, job_id="rb-1", document_type="reboot", device_ids=["a-2"])
    job_create(tenant=other_tenant, job_id="fw-b", document_type="firmware", device_ids=["b-1"])
    return devices


def shown(response, ids):
    """Which of these ids the change list shows (as link text of its rows)."""
    assert response.status_code == 200, (response.status_code, response.get("Location"))
    page = response.content.decode()
    return sorted(i for i in ids if re.search(rf">{re.escape(i)}</a>", page))


def answer(response):
    return response.status_code, response.get("Location"), response.content


def refused(response, url) -> bool:
    """Django admin's answers to a lookup it does not take: the "invalid lookup" redirect, or a 400."""
    return response.status_code == 400 or (response.status_code == 302 and response["Location"] == f"{url}?e=1")


# --- the token digest probe -------------------------------------------------------------------------


def test_the_token_hash_prefix_probe_tells_nothing(viewer, fleet):
    digest = Device.objects.get(device_id="a-1").provision_token_hash
    wrong = "0" if digest[0] != "0" else "1"
    for lookup in ["provision_token_hash__startswith", "provision_token_hash", "provision_token_hash__gte"]:
        right = viewer.get(DEVICES, {lookup: digest[:2] if "startswith" in lookup else digest})
        other = viewer.get(DEVICES, {lookup: wrong * 2 if "startswith" in lookup else wrong * 64})
        assert answer(right) == answer(other), lookup  # same whether it matches or not
        assert right.status_code == 400 and b"a-1" not in right.content  # never a filtered list


@pytest.mark.parametrize(
    ("url", "lookup"),
    [
        (DEVICES, "broker_secret__startswith"),
        (DEVICES, "provision_token_hash__regex"),
        (DEVICES, "PROVISION_TOKEN_HASH__startswith"),  # not a field either way: refused, not applied
        (EXECUTIONS, "device__provision_token_hash__startswith"),
        (JOBS, "tenant__devices__provision_token_hash__startswith"),
        (MEMBERSHIPS, "user__password__startswith"),
        (TENANTS, "devices__provision_token_hash__startswith"),
    ],
)
def test_secrets_are_no_lookup_anywhere(viewer, root, fleet, url, lookup):
    for client in (viewer, root):
        response = client.get(url, {lookup: "a"})
        assert refused(response, url), (lookup, answer(response)[:2])


# --- undeclared lookups ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (DEVICES, {"device_id__startswith": "a-1"}),
        (DEVICES, {"desired_version__gt": "0"}),
        (DEVICES, {"tags__site": "paris"}),
        (DEVICES, {"last_seen__isnull": "True"}),
        (DEVICES, {"tenant__id__exact": "globex"}),  # the tenant filter is a superuser's only
        (DEVICES, {"sync": "pending", "reported_state__has_key": "x"}),  # beside a declared one
        (JOBS, {"document_params__version": "2"}),
        (JOBS, {"job_id__startswith": "fw"}),
        (JOBS, {"document_type__exact": "reboot"}),  # the declared filter's parameter is document_type
        (EXECUTIONS, {"device__device_id": "a-1"}),
        (EXECUTIONS, {"status_details__isnull": "False"}),
        (MEMBERSHIPS, {"user__username__startswith": "v"}),
        (TENANTS, {"name__startswith": "A"}),
    ],
)
def test_undeclared_lookups_are_an_invalid_lookup_not_a_filtered_list(viewer, fleet, url, params):
    response = viewer.get(url, params)
    assert refused(response, url), answer(response)[:2]


def test_superusers_get_no_undeclared_lookup_either(root, fleet):
    for url, params in [(DEVICES, {"device_id__startswith": "a"}), (JOBS, {"description__contains": "x"})]:
        response = root.get(url, params)
        assert refused(response, url), answer(response)[:2]


# --- declared filters, search, ordering, pages --------------------------------------------------------


def test_declared_device_filters_still_work(viewer, root, fleet):
    ids = ["a-1", "a-2", "b-1"]
    assert shown(viewer.get(DEVICES), ids) == ["a-1", "a-2"]
    assert shown(viewer.get(DEVICES, {"tag": "site:lyon"}), ids) == ["a-2"]
    assert shown(viewer.get(DEVICES, {"sync": "stale"}), ids) == ["a-1", "a-2"]
    assert shown(viewer.get(DEVICES, {"sync": "synced"}), ids) == []
    assert shown(viewer.get(DEVICES, {"status__exact": "active"}), ids) == ["a-1", "a-2"]
    assert shown(viewer.get(DEVICES, {"status__exact": "decommissioned"}), ids) == []
    assert shown(viewer.get(DEVICES, {"q": "a-2"}), ids) == ["a-2"]
    assert shown(viewer.get(DEVICES, {"o": "-1", "p": "1", "tag": "site"}), ids) == ["a-1", "a-2"]
    assert shown(root.get(DEVICES, {"tenant__id__exact": "globex"}), ids) == ["b-1"]
    assert shown(root.get(DEVICES, {"tenant__id__exact": "acme", "tag": "site:paris"}), ids) == ["a-1"]


def test_declared_job_and_execution_filters_still_work(viewer, root, fleet):
    jobs = ["fw-1", "rb-1", "fw-b"]
    assert shown(viewer.get(JOBS), jobs) == ["fw-1", "rb-1"]
    assert shown(viewer.get(JOBS, {"document_type": "reboot"}), jobs) == ["rb-1"]
    assert shown(viewer.get(JOBS, {"status__exact": "IN_PROGRESS", "q": "fw"}), jobs) == ["fw-1"]
    assert shown(root.get(JOBS, {"tenant__id__exact": "globex"}), jobs) == ["fw-b"]
    fw1 = str(Job.objects.get(job_id="fw-1").pk)

    def executions(client, params):
        response = client.get(EXECUTIONS, params)
        assert response.status_code == 200, answer(response)[:2]
        return sorted(f"{e.job.job_id}/{e.device.device_id}" for e in response.context["cl"].result_list)

    assert executions(viewer, {"job__id__exact": fw1, "status__exact": "QUEUED"}) == ["fw-1/a-1", "fw-1/a-2"]
    assert executions(viewer, {"status__exact": "QUEUED", "q": "rb"}) == ["rb-1/a-2"]
    assert executions(root, {"tenant__id__exact": "globex"}) == ["fw-b/b-1"]


def test_declared_membership_filters_still_work(root, viewer, fleet):
    assert root.get(MEMBERSHIPS, {"role__exact": "viewer"}).status_code == 200
    assert "vera" in root.get(MEMBERSHIPS, {"role__exact": "viewer", "tenant__id__exact": "acme"}).content.decode()
    assert "vera" not in root.get(MEMBERSHIPS, {"role__exact": "admin"}).content.decode()


def test_ordering_only_by_the_columns_offered(root, fleet):
    # o=<index> of list_display: a column that sorts is honoured...
    ids = ["a-1", "a-2", "b-1"]
    page = root.get(DEVICES, {"o": "-1"}).content.decode()
    assert [i for i in sorted(ids, reverse=True) if f">{i}</a>" in page] == ["b-1", "a-2", "a-1"]
    assert page.index(">b-1</a>") < page.index(">a-1</a>")
    # ...an index that is not a column is ignored, as Django does.
    assert root.get(DEVICES, {"o": "99"}).status_code == 200
