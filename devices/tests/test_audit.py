"""The audit trail: every desired write (API, admin, device where allowed, a desired-state job and
its revert) with actor, channel, before and after; device lifecycle and job actions; queryable per
tenant by device, actor, action and time; retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.audit import acting, audit_prune
from devices.choices import DesiredWrites
from devices.models import AuditEvent
from iotcloud.testing import device_client
from jobs.release import rollout_tick
from jobs.services import job_create
from twin.services import twin_update_desired

pytestmark = pytest.mark.django_db


def events(**filters) -> list[tuple]:
    rows = AuditEvent.objects.filter(**filters).order_by("id")
    return list(rows.values_list("actor", "channel", "action", "before", "after"))


def test_operator_writes_over_the_api_are_recorded_with_before_and_after(operator, tenant, make_device):
    device = make_device(tenant, "pump")
    operator.patch("/customer/devices/pump/twin/desired", {"desired": {"rpm": 900}}, expect=200)
    operator.patch("/customer/devices/pump/twin/desired", {"desired": {"rpm": 1200}}, expect=200)
    assert events(device=device, action="desired.write") == [
        ("operator:alice", "api", "desired.write", {}, {"rpm": 900}),
        ("operator:alice", "api", "desired.write", {"rpm": 900}, {"rpm": 1200}),
    ]
    assert events(device=device, action="device.provision")[0][0] == "system"


def test_a_device_writing_its_desired_is_the_actor(tenant, make_device):
    tenant.device_desired_writes = DesiredWrites.ALLOW
    tenant.save()
    device = make_device(tenant, "pump")
    device_client(device).post("/device/v1/shadow/update", {"state": {"desired": {"led": "on"}}}, expect=200)
    assert events(device=device, action="desired.write") == [("device:acme/pump", "http", "desired.write", {},
                                                              {"led": "on"})]  # fmt: skip


def test_a_desired_state_job_and_its_actions_are_recorded(tenant, make_device):
    device = make_device(tenant, "pump")
    job = job_create(tenant=tenant, document_type="desired_state_patch", device_ids=["pump"],
                     document_params={"patch": {"led": "on"}})  # fmt: skip
    rollout_tick()
    assert events(device=device, action="desired.write") == [(f"job:{job.job_id}", "job", "desired.write", {},
                                                              {"led": "on"})]  # fmt: skip
    assert events(job_id=job.job_id, action="job.create")[0][4]["executions"] == 1


def test_the_audit_api_filters_and_keeps_tenants_apart(operator, other_operator, tenant, make_device):
    device = make_device(tenant, "pump")
    with acting("operator:script", "api"):
        twin_update_desired(device=device, document={"a": 1})
    twin_update_desired(device=device, document={"b": 2})
    listed = operator.get("/customer/audit?device_id=pump&action=desired.write", expect=200).json()["results"]
    assert [e["actor"] for e in listed] == ["system", "operator:script"]  # newest first
    assert listed[0]["before"] == {"a": 1} and listed[0]["after"] == {"a": 1, "b": 2}
    mine = operator.get("/customer/audit?actor=operator:script", expect=200).json()["results"]
    assert len(mine) == 1
    later = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert operator.get(f"/customer/audit?since={later}", expect=200).json()["results"] == []
    operator.get("/customer/audit?since=yesterday", expect=400)
    assert other_operator.get("/customer/audit", expect=200).json()["results"] == []  # another tenant's


def test_retention_prunes_old_events(settings, tenant, make_device):
    make_device(tenant, "pump")
    AuditEvent.objects.update(at=timezone.now() - timedelta(days=400))
    make_device(tenant, "fan")
    settings.AUDIT_RETENTION_DAYS = 365
    assert audit_prune() == 1 and AuditEvent.objects.count() == 1
    settings.AUDIT_RETENTION_DAYS = 0
    AuditEvent.objects.update(at=timezone.now() - timedelta(days=4000))
    assert audit_prune() == 0 and AuditEvent.objects.count() == 1
