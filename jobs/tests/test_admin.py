"""Jobs admin: tenant scoping, the add form (through jobs.services), actions, live progress, query counts."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.choices import DeviceStatus, Role
from devices.models import Device
from iotcloud.testing import staff_client as staff
from jobs import services
from jobs.choices import ExecutionStatus, JobStatus
from jobs.models import Job, JobExecution

CHANGELIST = reverse("admin:jobs_job_changelist")
ADD = reverse("admin:jobs_job_add")
PROGRESS = reverse("admin:jobs_job_progress")
DEVICES = reverse("admin:jobs_job_devices")
EXECUTIONS = reverse("admin:jobs_jobexecution_changelist")


def job(tenant, devices, job_id, document_type="reboot"):
    return services.job_create(
        tenant=tenant, job_id=job_id, document_type=document_type, device_ids=[d.device_id for d in devices]
    )


def finish(device, job_id, status=ExecutionStatus.SUCCEEDED):
    services.execution_update(device=device, job_id=job_id, status=ExecutionStatus.IN_PROGRESS)
    if status != ExecutionStatus.IN_PROGRESS:
        services.execution_update(device=device, job_id=job_id, status=status)


@pytest.fixture
def alice(tenant):
    return staff(tenant, "alice-admin")


@pytest.fixture
def fleet(tenant, other_tenant, make_device):
    """Three devices in acme (two tagged berlin), one in globex, and a job in each tenant."""
    a = [make_device(tenant, f"pump-{i}", tags={"site": "berlin" if i < 2 else "paris"}) for i in range(3)]
    b = make_device(other_tenant, "globex-secret-device", tags={"site": "berlin"})
    return {
        "a": a,
        "b": b,
        "a_job": job(tenant, a, "acme-job"),
        "b_job": job(other_tenant, [b], "globex-secret-job", document_type="globex-only-type"),
    }


def add_form(**overrides):
    data = {
        "job_id": "",
        "document_type": "fw_update",
        "document_params": '{"url": "https://example.test/fw.bin"}',
        "description": "",
        "tags": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "in_progress_timeout_seconds": "",
        "rollout_criterion": "number_of_notified_things",  # a select: the browser always sends one
    }
    data.update(overrides)
    return data


# --- tenant scoping ------------------------------------------------------------------------------


def test_changelists_show_only_own_tenant(alice, fleet):
    jobs_page = alice.get(CHANGELIST)
    assert jobs_page.status_code == 200
    body = jobs_page.content.decode()
    assert "acme-job" in body
    assert "globex-secret-job" not in body
    assert "globex-only-type" not in body  # the document_type filter's choices are scoped too
    executions = alice.get(EXECUTIONS).content.decode()
    assert "pump-0" in executions
    assert "globex-secret" not in executions  # neither B's job (filter choices) nor B's device


def test_foreign_change_pages_are_not_found(alice, fleet):
    b_job = fleet["b_job"]
    b_execution = JobExecution.objects.get(job=b_job)
    for url in [
        reverse("admin:jobs_job_change", args=[b_job.pk]),
        reverse("admin:jobs_jobexecution_change", args=[b_execution.pk]),
    ]:
        response = alice.get(url)
        assert response.status_code in (302, 404), url
        if response.status_code == 302:
            assert response["Location"] == reverse("admin:index")


def test_forged_cancel_of_foreign_job_does_nothing(alice, fleet):
    b_job = fleet["b_job"]
    alice.post(CHANGELIST, {"action": "force_cancel", "_selected_action": [b_job.pk]})
    b_job.refresh_from_db()
    assert b_job.status == JobStatus.IN_PROGRESS
    assert JobExecution.objects.get(job=b_job).status == ExecutionStatus.QUEUED


def test_execution_filter_for_a_foreign_job_shows_nothing(alice, fleet):
    response = alice.get(EXECUTIONS, {"job__id__exact": fleet["b_job"].pk})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


def test_autocomplete_does_not_leak_foreign_objects(alice, fleet):
    jobs = alice.get(
        reverse("admin:autocomplete"),
        {"app_label": "jobs", "model_name": "jobexecution", "field_name": "job", "term": ""},
    )
    assert jobs.status_code == 200
    assert {r["text"] for r in jobs.json()["results"]} == {str(fleet["a_job"])}
    devices = alice.get(DEVICES, {"term": ""}).json()
    assert {r["text"] for r in devices["results"]} == {"pump-0", "pump-1", "pump-2"}
    assert alice.get(DEVICES, {"term": "globex"}).json()["results"] == []


def test_progress_json_omits_foreign_jobs(alice, fleet):
    a_job, b_job = fleet["a_job"], fleet["b_job"]
    data = alice.get(PROGRESS, {"ids": f"{a_job.pk},{b_job.pk}"}).json()
    assert set(data["jobs"]) == {str(a_job.pk)}
    assert alice.get(PROGRESS, {"ids": "1,x"}).status_code == 400
    assert alice.get(PROGRESS, {"ids": str(2**64)}).status_code == 400


def test_progress_json_gives_the_chart_of_a_visible_job_only(alice, fleet):
    a_job, b_job = fleet["a_job"], fleet["b_job"]
    data = alice.get(PROGRESS, {"ids": str(a_job.pk), "chart": str(a_job.pk)}).json()
    assert set(data["jobs"]) == {str(a_job.pk)}
    assert data["charts"][str(a_job.pk)].startswith('<svg class="iot-rollout-chart"')
    assert alice.get(PROGRESS, {"ids": "", "chart": str(b_job.pk)}).json() == {"jobs": {}, "charts": {}}
    assert "charts" not in alice.get(PROGRESS, {"ids": str(a_job.pk)}).json()  # not asked for
    for bad in ["x", "1,2", "-1", "", "²", str(2**64)]:
        refused = alice.get(PROGRESS, {"ids": str(a_job.pk), "chart": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["code"] == "invalid_chart" and "chart:" in refused.json()["detail"]


def test_superuser_sees_every_tenant(tenant, fleet):
    root = staff(None, "root", superuser=True)
    body = root.get(CHANGELIST).content.decode()
    assert "acme-job" in body and "globex-secret-job" in body
    data = root.get(PROGRESS, {"ids": f"{fleet['a_job'].pk},{fleet['b_job'].pk}"}).json()
    assert len(data["jobs"]) == 2


# --- add form ------------------------------------------------------------------------------------


def test_add_by_device_pick_creates_executions(alice, fleet):
    picked = fleet["a"][:2]
    response = alice.post(ADD, add_form(job_id="fw-13", devices=[d.pk for d in picked]))
    created = Job.objects.get(tenant=fleet["a"][0].tenant, job_id="fw-13")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:jobs_job_change", args=[created.pk])
    assert created.document_params == {"url": "https://example.test/fw.bin"}
    assert set(created.executions.values_list("device__device_id", flat=True)) == {"pump-0", "pump-1"}
    assert created.total == 2


@pytest.mark.parametrize("selector", ["site=berlin", '{"site": "berlin"}'])
def test_add_by_tag_selector(alice, fleet, selector):
    response = alice.post(ADD, add_form(tags=selector, expires_at_0="2999-01-01", expires_at_1="00:00:00"))
    assert response.status_code == 302, response.content.decode()[:3000]
    created = Job.objects.exclude(pk__in=[fleet["a_job"].pk, fleet["b_job"].pk]).get()
    assert created.job_id.startswith("job-")  # generated
    # Tag matches only inside the tenant: globex's berlin device is not targeted.
    assert set(created.executions.values_list("device__device_id", flat=True)) == {"pump-0", "pump-1"}
    assert created.expires_at is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"document_params": '{"url": '}, "Not valid JSON in the document params"),
        ({"document_params": "[1, 2]"}, "Document params must be a JSON object"),
        ({"document_params": "[" * 20_000 + "]" * 20_000}, "nested too deeply"),
        ({"document_params": '{"x": NaN}', "tags": "site=berlin"}, "NaN"),
        ({"tags": "{" + "[" * 20_000}, "Not valid JSON in the tag selector"),
        ({}, "Pick target devices, give a tag selector, or both"),
        ({"tags": "site"}, "is not key=value"),
        ({"tags": "site=nowhere"}, "no active device matches the tag selector"),
        ({"tags": "site=berlin", "job_id": "acme-job"}, "already exists"),
        ({"tags": "site=berlin", "job_id": "bad/id"}, "Invalid job id"),
        ({"tags": "site=berlin", "expires_at_0": "2001-01-01", "expires_at_1": "00:00:00"}, "must be in the future"),
        ({"tags": "site=berlin", "in_progress_timeout_seconds": "0"}, "greater than or equal to 1"),
    ],
)
def test_add_invalid_input_shows_error_and_creates_nothing(alice, fleet, overrides, message):
    before = (Job.objects.count(), JobExecution.objects.count())
    response = alice.post(ADD, add_form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert (Job.objects.count(), JobExecution.objects.count()) == before


def test_add_with_a_rollout_holds_executions_back_and_the_job_page_shows_it(alice, fleet):
    response = alice.post(ADD, add_form(job_id="paced", tags="site=berlin", rollout_type="constant",
                                        rollout_maximum_per_minute="10", abort_1_failure_type="ALL",
                                        abort_1_threshold_percentage="25", abort_1_min_executed="4"))  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get(job_id="paced")
    assert job.rollout == {"maximum_per_minute": 10} and job.abort_config["criteria"][0]["min_executed"] == 4
    assert not job.executions.filter(released_at__isnull=False).exists()
    page = alice.get(reverse("admin:jobs_job_change", args=[job.pk])).content.decode()
    assert "0 of 2 released, 2 waiting for release" in page and "threshold_percentage" in page
    assert f'<div data-job-chart="{job.pk}"><svg class="iot-rollout-chart"' in page  # the JS refreshes it


# --- add form: rollout, abort, schedule, retries and template fields --------------------------------


def created(client, **fields):
    """Post the add form (targets: acme's berlin devices) and return the job it created."""
    response = client.post(ADD, add_form(job_id="made", tags="site=berlin", **fields))
    assert response.status_code == 302, response.context["adminform"].form.errors
    return Job.objects.get(job_id="made")


def test_add_page_has_a_field_per_setting(alice, fleet):
    body = alice.get(ADD).content.decode()
    names = ["rollout_type", "rollout_increment_factor", "abort_3_threshold_percentage", "abort_force",
             "schedule_end_time_0", "schedule_timezone", "window_3_cron", "retry_timed_out", "template"]  # fmt: skip
    for name in names:
        assert f'name="{name}"' in body, name
    assert 'name="rollout"' not in body and 'name="abort_config"' not in body  # the JSON textareas are gone
    assert '<option value="reboot@1">reboot@1 · reboot (built-in)</option>' in body


def test_constant_rollout(alice, fleet):
    job = created(alice, rollout_type="constant", rollout_maximum_per_minute="100")
    assert job.rollout == {"maximum_per_minute": 100}


def test_exponential_rollout(alice, fleet):
    job = created(alice, rollout_type="exponential", rollout_base_rate_per_minute="50",
                  rollout_increment_factor="2.5", rollout_criterion="number_of_succeeded_things",
                  rollout_criterion_count="1000", rollout_maximum_per_minute="800")  # fmt: skip
    assert job.rollout == {
        "exponential": {"base_rate_per_minute": 50, "increment_factor": 2.5,
                        "rate_increase_criteria": {"number_of_succeeded_things": 1000}},
        "maximum_per_minute": 800,
    }  # fmt: skip


def test_no_settings_give_no_configurations(alice, fleet):
    job = created(alice)
    assert (job.rollout, job.abort_config, job.scheduling, job.retry_config) == ({}, {}, {}, {})
    assert job.executions.filter(released_at__isnull=False).count() == 2  # released at once


def test_abort_rows_and_force(alice, fleet):
    # Row 1 is blank: ignored.
    job = created(alice, abort_2_failure_type="FAILED", abort_2_threshold_percentage="10",
                  abort_2_min_executed="50", abort_3_failure_type="TIMED_OUT", abort_3_threshold_percentage="2.5",
                  abort_3_min_executed="1", abort_force="on")  # fmt: skip
    assert job.abort_config == {
        "criteria": [{"failure_type": "FAILED", "threshold_percentage": 10, "min_executed": 50},
                     {"failure_type": "TIMED_OUT", "threshold_percentage": 2.5, "min_executed": 1}],
        "force": True,
    }  # fmt: skip
    assert isinstance(job.abort_config["criteria"][0]["threshold_percentage"], int)  # as the API would store it


def test_schedule_with_a_window_and_a_time_zone(alice, fleet):
    job = created(alice, schedule_start_time_0="2999-01-01", schedule_start_time_1="02:00:00",
                  schedule_end_time_0="2999-01-08", schedule_end_time_1="02:00:00", schedule_end_behavior="CANCEL",
                  schedule_timezone="Europe/Paris", window_2_cron="0 2 * * 1-5",
                  window_2_duration_minutes="120")  # fmt: skip
    assert job.scheduling == {
        "start_time": "2999-01-01T02:00:00Z", "end_time": "2999-01-08T02:00:00Z", "end_behavior": "CANCEL",
        "timezone": "Europe/Paris", "maintenance_windows": [{"cron": "0 2 * * 1-5", "duration_minutes": 120}],
    }  # fmt: skip
    assert job.status == JobStatus.SCHEDULED


def test_retries(alice, fleet):
    job = created(alice, retry_failed="2", retry_timed_out="1")
    assert job.retry_config == {"criteria": [{"failure_type": "FAILED", "number_of_retries": 2},
                                             {"failure_type": "TIMED_OUT", "number_of_retries": 1}]}  # fmt: skip
    assert created_all(alice).retry_config == {"criteria": [{"failure_type": "ALL", "number_of_retries": 3}]}


def created_all(client):
    response = client.post(ADD, add_form(job_id="made-all", tags="site=berlin", retry_all="3"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    return Job.objects.get(job_id="made-all")


@pytest.fixture
def fw_template(tenant):
    from jobs.templates import template_save

    return template_save(tenant=tenant, name="fw", document_type="firmware_update",
                         document_params={"channel": "stable"}, required_params=["url"],
                         rollout={"maximum_per_minute": 5},
                         retry_config={"criteria": [{"failure_type": "FAILED", "number_of_retries": 1}]})  # fmt: skip


def test_template_gives_the_document_type_and_defaults(alice, fleet, fw_template):
    assert '<option value="fw@1">fw@1 · firmware_update</option>' in alice.get(ADD).content.decode()
    job = created(alice, template="fw@1", document_type="", retry_failed="0")
    assert (job.template, job.document_type) == ("fw@1", "firmware_update")
    assert job.document_params == {"channel": "stable", "url": "https://example.test/fw.bin"}  # the job's over it
    assert job.rollout == {"maximum_per_minute": 5}  # left blank: the template's
    assert job.retry_config == {"criteria": [{"failure_type": "FAILED", "number_of_retries": 0}]}  # given: the job's


def test_superuser_types_a_template(tenant, fleet):
    root = staff(None, "root", superuser=True)
    response = root.post(ADD, add_form(tenant=tenant.pk, job_id="typed", template="reboot", document_type="",
                                       document_params="", tags="site=berlin"))  # fmt: skip
    assert response.status_code == 302, response.context["adminform"].form.errors
    job = Job.objects.get(job_id="typed")
    assert (job.template, job.document_type, job.document_params) == ("reboot@1", "reboot", {"delay_seconds": 0})
    refused = root.post(ADD, add_form(tenant="globex", job_id="typed-2", template="fw", devices=[fleet["b"].pk]))
    assert "No job template &#x27;fw&#x27; in tenant &#x27;globex&#x27;" in refused.content.decode()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"rollout_type": "constant", "rollout_maximum_per_minute": "-3"}, "rollout_maximum_per_minute",
         "rollout.maximum_per_minute must be between 1 and 1,000,000"),
        ({"rollout_type": "constant"}, "rollout_maximum_per_minute", "rollout.maximum_per_minute must be an integer"),
        ({"rollout_type": "constant", "rollout_maximum_per_minute": "ten"}, "rollout_maximum_per_minute",
         "Enter a whole number"),
        ({"rollout_maximum_per_minute": "10"}, "rollout_type", "Choose constant or exponential"),
        ({"rollout_type": "constant", "rollout_maximum_per_minute": "10", "rollout_increment_factor": "2"},
         "rollout_increment_factor", "Only for an exponential rollout"),
        ({"rollout_type": "exponential", "rollout_base_rate_per_minute": "-1", "rollout_increment_factor": "2",
          "rollout_criterion_count": "10"}, "rollout_base_rate_per_minute",
         "rollout.exponential.base_rate_per_minute must be between 1"),
        ({"rollout_type": "exponential", "rollout_base_rate_per_minute": "10", "rollout_increment_factor": "9",
          "rollout_criterion_count": "10"}, "rollout_increment_factor", "must be between 1.1 and 5"),
        ({"rollout_type": "exponential", "rollout_base_rate_per_minute": "10", "rollout_increment_factor": "2"},
         "rollout_criterion_count", "rollout.exponential.rate_increase_criteria is required"),
        ({"rollout_type": "exponential", "rollout_base_rate_per_minute": "10", "rollout_increment_factor": "2",
          "rollout_criterion_count": "0"}, "rollout_criterion_count",
         "rate_increase_criteria.number_of_notified_things must be between 1"),
        ({"rollout_type": "exponential", "rollout_base_rate_per_minute": "100", "rollout_increment_factor": "2",
          "rollout_criterion_count": "5", "rollout_maximum_per_minute": "10"}, "rollout_maximum_per_minute",
         "must not be below exponential.base_rate_per_minute"),
        ({"abort_2_failure_type": "FAILED", "abort_2_threshold_percentage": "150", "abort_2_min_executed": "1"},
         "abort_2_threshold_percentage", "threshold_percentage must be above 0 and at most 100"),
        ({"abort_1_threshold_percentage": "10", "abort_1_min_executed": "1"}, "abort_1_failure_type",
         "failure_type must be one of FAILED, REJECTED, TIMED_OUT, ALL"),
        ({"abort_1_failure_type": "ALL", "abort_1_threshold_percentage": "10"}, "abort_1_min_executed",
         "min_executed must be an integer"),
        ({"abort_1_failure_type": "ALL", "abort_1_threshold_percentage": "10", "abort_1_min_executed": "1",
          "abort_3_failure_type": "ALL", "abort_3_threshold_percentage": "20", "abort_3_min_executed": "1"},
         "abort_3_failure_type", "ALL is given twice"),
        ({"abort_force": "on"}, "abort_force", "abort_config.criteria must be a list of 1 to 4 criteria"),
        ({"window_2_cron": "0 25 * * *", "window_2_duration_minutes": "60"}, "window_2_cron",
         "maintenance_windows[0].cron must be a 5-field cron expression"),
        ({"window_1_cron": "0 2 * * *", "window_1_duration_minutes": "0"}, "window_1_duration_minutes",
         "duration_minutes must be an integer between 1 and 10080"),
        ({"window_1_duration_minutes": "30"}, "window_1_cron", "cron must be a 5-field cron expression"),
        ({"schedule_timezone": "Mars/Olympus"}, "schedule_timezone", "scheduling.timezone must be an IANA time zone"),
        ({"schedule_start_time_0": "2999-01-08", "schedule_start_time_1": "00:00:00",
          "schedule_end_time_0": "2999-01-01", "schedule_end_time_1": "00:00:00"}, "schedule_end_time",
         "scheduling.end_time must be after scheduling.start_time"),
        ({"schedule_end_time_0": "2001-01-01", "schedule_end_time_1": "00:00:00"}, "schedule_end_time",
         "scheduling.end_time must be in the future"),
        ({"schedule_end_behavior": "CANCEL"}, "schedule_end_behavior", "needs scheduling.end_time"),
        ({"retry_failed": "11"}, "retry_failed", "number_of_retries must be an integer between 0 and 10"),
        ({"retry_timed_out": "-1"}, "retry_timed_out", "number_of_retries must be an integer between 0 and 10"),
        ({"retry_failed": "6", "retry_timed_out": "6"}, "retry_failed", "at most 10 retries in all"),
        ({"retry_failed": "1", "retry_all": "2"}, "retry_all", "ALL cannot be combined with FAILED or TIMED_OUT"),
        ({"template": "nope"}, "template", "No job template &#x27;nope&#x27; in tenant &#x27;acme&#x27;"),
        ({"template": "fw@x"}, "template", "the version must be a number"),
        ({"template": "fw", "document_type": "", "document_params": "{}"}, "document_params",
         "Template fw@1 needs document_params"),
        ({"template": "fw"}, "document_type", "document_type comes from template fw@1"),
        ({"document_type": ""}, "document_type", "Give a document_type or a template"),
    ],
)  # fmt: skip
def test_add_invalid_setting_is_shown_on_its_field_and_creates_nothing(alice, fleet, fw_template, fields, field,
                                                                        message):  # fmt: skip
    before = (Job.objects.count(), JobExecution.objects.count())
    response = alice.post(ADD, add_form(tags="site=berlin", **fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field], errors
    assert message in str(errors[field]), errors[field]
    assert (Job.objects.count(), JobExecution.objects.count()) == before


def test_a_group_with_an_error_is_not_collapsed(alice, fleet):
    def collapsed(response, group: str) -> bool:
        fieldset = next(f for f in response.context["adminform"] if f.name == group)
        return fieldset.is_collapsible

    page = alice.get(ADD)
    assert collapsed(page, "Abort criteria") and collapsed(page, "Schedule") and collapsed(page, "Retries")
    refused = alice.post(ADD, add_form(tags="site=berlin", abort_2_failure_type="FAILED",
                                       abort_2_threshold_percentage="150", abort_2_min_executed="1"))  # fmt: skip
    assert not collapsed(refused, "Abort criteria") and collapsed(refused, "Schedule")


def test_add_with_forged_foreign_device_is_refused(alice, fleet):
    before = Job.objects.count()
    response = alice.post(ADD, add_form(devices=[fleet["a"][0].pk, fleet["b"].pk]))
    assert response.status_code == 200
    assert "is not one of the available choices" in response.content.decode()
    assert Job.objects.count() == before


def test_add_with_decommissioned_device_is_refused(alice, fleet):
    device = fleet["a"][2]
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.DECOMMISSIONED)
    response = alice.post(ADD, add_form(devices=[device.pk]))
    assert response.status_code == 200
    assert "is not one of the available choices" in response.content.decode()


def test_superuser_picks_tenant_and_devices_must_belong_to_it(tenant, fleet):
    root = staff(None, "root", superuser=True)
    page = root.get(ADD)
    assert page.status_code == 200 and 'name="tenant"' in page.content.decode()
    refused = root.post(ADD, add_form(tenant=tenant.pk, devices=[fleet["b"].pk]))
    assert refused.status_code == 200
    assert "not in tenant &#x27;acme&#x27;: globex/globex-secret-device" in refused.content.decode()
    created = root.post(ADD, add_form(tenant="globex", job_id="root-job", devices=[fleet["b"].pk]))
    assert created.status_code == 302
    assert Job.objects.get(job_id="root-job").tenant_id == "globex"


def test_operator_add_page_has_no_tenant_field(alice, fleet):
    page = alice.get(ADD)
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="tenant"' not in body
    assert DEVICES in body  # the select2 widget asks our scoped endpoint


# --- roles and actions -------------------------------------------------------------------------------


def test_viewer_cannot_add_or_cancel(tenant, fleet):
    viewer = staff(tenant, "vera", role=Role.VIEWER)
    assert viewer.get(CHANGELIST).status_code == 200
    assert viewer.get(ADD).status_code == 403
    assert viewer.post(ADD, add_form(tags="site=berlin")).status_code == 403
    assert viewer.get(DEVICES).status_code == 403
    viewer.post(CHANGELIST, {"action": "force_cancel", "_selected_action": [fleet["a_job"].pk]})
    fleet["a_job"].refresh_from_db()
    assert fleet["a_job"].status == JobStatus.IN_PROGRESS
    assert "force_cancel" not in viewer.get(CHANGELIST).content.decode()


def test_cancel_then_force_cancel(alice, fleet):
    a_job = fleet["a_job"]
    pump0, pump1, _ = fleet["a"]
    finish(pump0, "acme-job", ExecutionStatus.IN_PROGRESS)
    finish(pump1, "acme-job")
    response = alice.post(CHANGELIST, {"action": "cancel", "_selected_action": [a_job.pk]}, follow=True)
    assert "Canceled 1 job(s): acme-job" in response.content.decode()
    a_job.refresh_from_db()
    assert a_job.status == JobStatus.CANCELED
    statuses = dict(a_job.executions.values_list("device__device_id", "status"))
    assert statuses == {"pump-0": "IN_PROGRESS", "pump-1": "SUCCEEDED", "pump-2": "CANCELED"}
    alice.post(CHANGELIST, {"action": "force_cancel", "_selected_action": [a_job.pk]})
    assert a_job.executions.get(device=pump0).status == ExecutionStatus.CANCELED


def test_cancel_of_completed_job_warns(alice, fleet):
    for device in fleet["a"]:
        finish(device, "acme-job")
    response = alice.post(CHANGELIST, {"action": "cancel", "_selected_action": [fleet["a_job"].pk]}, follow=True)
    assert "Not canceled: Job &#x27;acme-job&#x27; is already completed" in response.content.decode()
    fleet["a_job"].refresh_from_db()
    assert fleet["a_job"].status == JobStatus.COMPLETED


def test_job_page_is_read_only(alice, fleet):
    a_job = fleet["a_job"]
    url = reverse("admin:jobs_job_change", args=[a_job.pk])
    page = alice.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert f'data-job-progress="{a_job.pk}"' in body
    assert f"{EXECUTIONS}?job__id__exact={a_job.pk}" in body
    assert 'name="_save"' not in body
    assert alice.post(url, {"status": "COMPLETED"}).status_code == 403
    a_job.refresh_from_db()
    assert a_job.status == JobStatus.IN_PROGRESS


def test_executions_are_read_only(alice, fleet):
    execution = JobExecution.objects.filter(job=fleet["a_job"]).first()
    assert alice.get(reverse("admin:jobs_jobexecution_add")).status_code == 403
    url = reverse("admin:jobs_jobexecution_change", args=[execution.pk])
    assert alice.get(url).status_code == 200
    assert alice.post(url, {"status": "SUCCEEDED"}).status_code == 403


# --- progress ------------------------------------------------------------------------------------------


def test_progress_counts(alice, fleet):
    a_job = fleet["a_job"]
    pump0, pump1, _ = fleet["a"]
    finish(pump0, "acme-job")
    finish(pump1, "acme-job", ExecutionStatus.IN_PROGRESS)
    item = alice.get(PROGRESS, {"ids": str(a_job.pk)}).json()["jobs"][str(a_job.pk)]
    assert item["status"] == JobStatus.IN_PROGRESS
    assert item["total"] == 3 and item["remaining"] == 2
    assert item["counts"]["SUCCEEDED"] == 1
    assert item["counts"]["IN_PROGRESS"] == 1
    assert item["counts"]["QUEUED"] == 1
    assert item["percent_done"] == pytest.approx(33.3)
    assert "succeeded <b>1</b> · in progress <b>1</b> · queued <b>1</b> of <b>3</b>" in item["html"]
    assert "succeeded <b>1</b> · in progress <b>1</b> · queued <b>1</b> of <b>3</b>" in (
        alice.get(CHANGELIST).content.decode()
    )


def test_changelist_queries_do_not_grow_with_jobs(tenant, alice, make_device, django_assert_max_num_queries):
    devices = [make_device(tenant, f"d-{i}") for i in range(3)]

    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            assert alice.get(CHANGELIST).status_code == 200
        return len(queries)

    job(tenant, devices, "first")
    few = page_queries()
    for i in range(25):
        job(tenant, devices, f"more-{i}")
    with django_assert_max_num_queries(few):
        alice.get(CHANGELIST)
    assert page_queries() <= few
    executions_page = CaptureQueriesContext(connection)
    with executions_page:
        alice.get(EXECUTIONS)
    assert len(executions_page) <= few


def test_executions_list_counts_at_most_the_cap(alice, fleet, monkeypatch):
    from jobs.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "COUNT_CAP", 1)
    monkeypatch.setattr("jobs.admin.JobExecutionAdmin.list_per_page", 1)
    response = alice.get(EXECUTIONS)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 2  # of 3: the count stops at cap + 1
    assert len(response.context["cl"].result_list) == 1


def test_jobs_progress_is_one_query(fleet, django_assert_num_queries):
    from jobs.selectors import jobs_progress

    with django_assert_num_queries(1):
        progress = jobs_progress([fleet["a_job"].pk, fleet["b_job"].pk])
    assert progress[fleet["a_job"].pk]["total"] == 3
    assert progress[fleet["b_job"].pk]["counts"]["QUEUED"] == 1


def test_expired_job_is_shown_timed_out(alice, tenant, make_device):
    device = make_device(tenant, "late")
    created = services.job_create(
        tenant=tenant, job_id="soon", document_type="x", device_ids=["late"],
        expires_at=timezone.now() + timedelta(seconds=30),
    )  # fmt: skip
    services.job_sweep(now=timezone.now() + timedelta(minutes=1))
    item = alice.get(PROGRESS, {"ids": str(created.pk)}).json()["jobs"][str(created.pk)]
    assert item["counts"]["TIMED_OUT"] == 1 and item["status"] == JobStatus.COMPLETED
    assert device.pk


# --- templates ------------------------------------------------------------------------------------


def template_form(tenant, **overrides):
    return {"tenant": tenant.pk, "name": "fw", "description": "", "document_type": "fw_update",
            "document_params": '{"channel": "stable"}', "required_params": '["url"]', "rollout": "{}",
            "abort_config": "{}", "retry_config": "{}", "in_progress_timeout_seconds": "", **overrides}  # fmt: skip


def test_adding_a_template_in_admin_saves_its_next_version(alice, tenant):
    from jobs.models import JobTemplate

    add = reverse("admin:jobs_jobtemplate_add")
    assert alice.post(add, template_form(tenant)).status_code == 302
    assert alice.post(add, template_form(tenant, document_params='{"channel": "beta"}')).status_code == 302
    versions = list(JobTemplate.objects.filter(tenant=tenant, name="fw").order_by("version").values_list(
        "version", "document_params", "created_by"))  # fmt: skip
    assert versions == [(1, {"channel": "stable"}, "operator:alice-admin"), (2, {"channel": "beta"},
                                                                              "operator:alice-admin")]  # fmt: skip
    refused = alice.post(add, template_form(tenant, rollout='{"maximum_per_minute": -1}'))
    assert refused.status_code == 200 and "rollout.maximum_per_minute" in refused.content.decode()
    assert JobTemplate.objects.count() == 2
    change = reverse("admin:jobs_jobtemplate_change", args=[JobTemplate.objects.first().pk])
    page = alice.get(change)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # a version is read-only


def test_cancel_and_revert_puts_a_desired_state_job_back_and_refuses_others(alice, tenant, fleet):
    from jobs.release import rollout_tick
    from twin.services import twin_update_desired

    twin_update_desired(device=fleet["a"][0], document={"mode": "eco"})
    patch = services.job_create(tenant=tenant, job_id="patch", document_type="desired_state_patch",
                                device_ids=["pump-0"], document_params={"patch": {"mode": "boost"}})  # fmt: skip
    rollout_tick()
    assert Device.objects.get(pk=fleet["a"][0].pk).desired_state == {"mode": "boost"}
    response = alice.post(CHANGELIST, {"action": "cancel_and_revert", "_selected_action": [patch.pk,
                                       fleet["a_job"].pk]}, follow=True)  # fmt: skip
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Job patch: canceled and reverted in admin by alice-admin; reverted 1 device(s)")
               for m in shown)  # fmt: skip
    assert any("Not reverted: revert: job 'acme-job' is not a desired-state job" in m for m in shown)
    assert Device.objects.get(pk=fleet["a"][0].pk).desired_state == {"mode": "eco"}
    assert Job.objects.get(pk=fleet["a_job"].pk).status == JobStatus.IN_PROGRESS  # untouched
    page = alice.get(reverse("admin:jobs_job_change", args=[patch.pk])).content.decode()
    assert "done: 1 device(s) put back" in page
