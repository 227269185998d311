"""job_executions' integrity without its foreign keys on PostgreSQL (jobs migration 0012): deleting a device or
a job still cascades to its executions through Django, any other delete that would leave executions
behind is refused, and a tenant with jobs cannot go."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError

from devices.models import Device, Tenant
from jobs.models import ExecutionHistory, Job, JobExecution
from jobs.services import execution_update, job_create, job_delete

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(tenant, make_device):
    devices = [make_device(tenant, f"d{n}", tags={"site": "paris"}) for n in range(3)]
    job = job_create(tenant=tenant, job_id="fw", document_type="firmware_update", tags={"site": "paris"})
    execution_update(device=devices[0], job_id="fw", status="IN_PROGRESS")  # a history row too
    return devices, job


def test_deleting_a_device_deletes_its_executions_and_their_history(fleet):
    devices, job = fleet
    devices[0].delete()
    assert not JobExecution.objects.filter(device_id=devices[0].pk).exists()
    assert not ExecutionHistory.objects.exists()
    assert sorted(job.executions.values_list("device__device_id", flat=True)) == ["d1", "d2"]


def test_deleting_a_job_deletes_its_executions(fleet):
    devices, job = fleet
    Job.objects.get(pk=job.pk).delete()
    assert not JobExecution.objects.exists() and not ExecutionHistory.objects.exists()
    assert Device.objects.filter(pk__in=[d.pk for d in devices]).count() == 3


def test_a_tenant_with_jobs_cannot_be_deleted(fleet, tenant):
    Device.objects.filter(tenant=tenant).delete()  # its devices gone (and their executions), its job stays
    with pytest.raises(ProtectedError):
        Tenant.objects.get(pk=tenant.pk).delete()


def test_job_executions_have_no_row_triggers_on_postgresql(postgres_only):
    """A fan-out's INSERT fires no trigger per row: no foreign-key check on job_executions."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname, tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 'job_executions'::regclass "
            "AND tgfoid::regproc::text LIKE 'RI_FKey_check%%'"
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'job_executions'::regclass AND contype = 'f'"
        )
        assert cursor.fetchone()[0] == 0


@pytest.mark.parametrize(("table", "column"), [("device_state", "device_id"), ("jobs", "job_id")])
def test_a_delete_that_would_leave_executions_behind_is_refused_on_postgresql(postgres_only, fleet, table, column):
    """As the foreign key did: the statement fails and nothing is deleted."""
    devices, job = fleet
    parent = devices[1].pk if table == "device_state" else job.pk
    JobExecution.objects.filter(**{column: parent}).update(status="SUCCEEDED")  # (no history for these)
    refused = pytest.raises(IntegrityError, match="leaves rows of job_executions behind")
    with refused, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [parent])
    assert JobExecution.objects.filter(**{column: parent}).exists()


def test_job_delete_removes_executions_first_so_its_delete_passes(fleet):
    """jobs.services deletes set-based, children first: the job's delete leaves nothing behind."""
    job_delete(job=fleet[1], force=True)
    assert not Job.objects.exists() and not JobExecution.objects.exists() and not ExecutionHistory.objects.exists()


def _in_thread(work, *, done: threading.Event | None = None) -> tuple[threading.Thread, dict]:
    """Run work() on a connection of its own; its exception (if any) in outcome["error"]."""
    outcome = {}

    def run():
        try:
            outcome["result"] = work()
        except Exception as exc:  # the test looks at it
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.postgres
def test_a_device_deleted_during_a_fan_out_is_refused_not_orphaned(postgres_only, tenant, make_device):
    """The fan-out locks its devices' rows as it reads them: a DELETE of one waits for its commit, then
    finds the new execution and is refused, as with the foreign key."""
    devices = [make_device(tenant, f"d{n}", tags={"site": "paris"}) for n in range(3)]
    inserted, release = threading.Event(), threading.Event()

    def fan_out():
        with transaction.atomic():
            job_create(tenant=tenant, job_id="fw", document_type="firmware_update", tags={"site": "paris"})
            inserted.set()
            release.wait(10)

    def delete():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM device_state WHERE id = %s", [devices[0].pk])

    fanning, _ = _in_thread(fan_out)
    assert inserted.wait(10)
    deleting, outcome = _in_thread(delete)
    deleting.join(0.5)
    assert deleting.is_alive()  # waiting on the fan-out's lock of the row
    release.set()
    fanning.join(10), deleting.join(10)
    assert "leaves rows of job_executions behind" in str(outcome.get("error"))
    assert Device.objects.filter(pk=devices[0].pk).exists()
    assert JobExecution.objects.filter(device_id=devices[0].pk, job__job_id="fw").exists()


@pytest.mark.postgres
def test_a_fan_out_during_a_device_delete_leaves_that_device_out(postgres_only, tenant, make_device):
    """A device deleted (not yet committed) when the fan-out reads it: the fan-out waits, then skips it."""
    devices = [make_device(tenant, f"d{n}", tags={"site": "paris"}) for n in range(3)]
    deleted, release = threading.Event(), threading.Event()

    def delete():
        with transaction.atomic():
            Device.objects.filter(pk=devices[0].pk).delete()  # Django's cascade, then the row
            deleted.set()
            release.wait(10)

    deleting, _ = _in_thread(delete)
    assert deleted.wait(10)
    fanning, outcome = _in_thread(
        lambda: job_create(tenant=tenant, job_id="fw", document_type="firmware_update", tags={"site": "paris"})
    )
    fanning.join(0.5)
    assert fanning.is_alive()  # waiting on the delete's lock of the row
    release.set()
    deleting.join(10), fanning.join(10)
    assert "error" not in outcome, outcome
    assert sorted(JobExecution.objects.filter(job__job_id="fw").values_list("device__device_id", flat=True)) == [
        "d1",
        "d2",
    ]
    assert Job.objects.get(job_id="fw").total == 2
