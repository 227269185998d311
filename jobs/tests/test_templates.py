"""Job templates: named, versioned documents with defaults; built-ins; jobs created from them."""

from __future__ import annotations

import pytest

from jobs.models import Job, JobTemplate

pytestmark = pytest.mark.django_db


def save(operator, expect=201, **body):
    return operator.post("/customer/job-templates", {"name": "fw", "document_type": "firmware_update", **body},
                         expect=expect).json()  # fmt: skip


def test_saving_again_makes_the_next_version_and_jobs_take_the_latest_or_a_named_one(operator, tenant, make_device):
    make_device(tenant, "pump")
    first = save(operator, document_params={"channel": "stable", "version": "1.0"}, required_params=["version"])
    second = save(operator, document_params={"channel": "beta"}, required_params=["version"],
                  retry_config={"criteria": [{"failure_type": "FAILED", "number_of_retries": 1}]})  # fmt: skip
    assert (first["version"], second["version"]) == (1, 2) and JobTemplate.objects.count() == 2
    assert operator.get("/customer/job-templates/fw", expect=200).json()["version"] == 2
    assert operator.get("/customer/job-templates/fw?version=1", expect=200).json()["document_params"]["channel"] == (
        "stable"
    )
    targets = {"device_ids": ["pump"]}
    job = operator.post("/customer/jobs", {"template": "fw", "targets": targets,
                                           "document_params": {"version": "2.0"}}, expect=201).json()  # fmt: skip
    assert job["template"] == "fw@2" and job["document"] == {
        "type": "firmware_update", "params": {"channel": "beta", "version": "2.0"}
    }  # fmt: skip
    assert job["retry_config"]["criteria"][0]["number_of_retries"] == 1  # the template's default
    older = operator.post("/customer/jobs", {"template": "fw@1", "targets": targets, "retry_config": {},
                                             "document_params": {"version": "2.0"}}, expect=201).json()  # fmt: skip
    assert older["document"]["params"]["channel"] == "stable" and older["retry_config"] == {}  # the job's own wins


def test_builtins_are_there_for_every_tenant(operator, other_operator, tenant, make_device):
    listed = {t["name"]: t for t in operator.get("/customer/job-templates", expect=200).json()}
    assert {"reboot", "download-file", "apply-desired-patch"} <= listed.keys()
    assert listed["download-file"]["builtin"] and listed["download-file"]["required_params"] == ["url", "sha256"]
    make_device(tenant, "pump")
    body = {"template": "download-file", "targets": {"device_ids": ["pump"]}}
    refused = operator.post("/customer/jobs", {**body, "document_params": {"url": "https://x.test/a.bin"}}, expect=400)
    refused = refused.json()
    assert "sha256" in refused["detail"] and not Job.objects.exists()
    job = operator.post("/customer/jobs", {"template": "download-file", "targets": {"device_ids": ["pump"]},
                                           "document_params": {"url": "https://x.test/a.bin", "sha256": "ab" * 32}},
                        expect=201).json()  # fmt: skip
    assert job["document"]["type"] == "download_file" and job["template"] == "download-file@1"
    save(other_operator, name="reboot", document_type="reboot_now")  # a tenant's own shadows the built-in
    assert {t["name"]: t for t in other_operator.get("/customer/job-templates").json()}["reboot"]["builtin"] is False
    assert {t["name"]: t for t in operator.get("/customer/job-templates").json()}["reboot"]["builtin"] is True


@pytest.mark.parametrize(
    ("body", "expect", "text"),
    [
        ({"template": "nope"}, 404, "No job template 'nope'"),
        ({"template": "fw@x"}, 400, "version must be a number"),
        ({"template": "fw@9"}, 404, "No job template 'fw@9'"),
        ({"template": "fw@99999999999999999999"}, 400, "version must be a number"),
        ({"template": "f\u0000w"}, 400, "Null characters are not allowed"),
        ({"template": "fw", "document_type": "other"}, 400, "document_type comes from template fw@1"),
    ],
)
def test_bad_template_references_are_refused_and_nothing_is_created(operator, tenant, make_device, body, expect,
                                                                    text):  # fmt: skip
    make_device(tenant, "pump")
    save(operator)
    refused = operator.post("/customer/jobs", {"targets": {"device_ids": ["pump"]}, **body}, expect=expect).json()
    assert text in refused["detail"] and not Job.objects.exists()


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"name": "bad name"}, "Invalid template name"),
        ({"rollout": {"maximum_per_minute": 0}}, "rollout.maximum_per_minute"),
        ({"required_params": [""]}, "This field may not be blank"),
        ({"document_params": {"x": {"y": {"z": {"a": {"b": {"c": {"d": 1}}}}}}}}, "deep"),
    ],
)
def test_bad_templates_are_refused_naming_the_field(operator, body, text):
    refused = operator.post("/customer/job-templates", {"name": "fw", "document_type": "fw", **body}, expect=400)
    assert text in str(refused.json()) and not JobTemplate.objects.exists()


def test_templates_are_per_tenant(operator, other_operator):
    save(operator, document_params={"secret": "acme"})
    operator.get("/customer/job-templates/f%00w", expect=404)  # cannot exist: never reaches the database
    other_operator.get("/customer/job-templates/fw", expect=404)
    assert "fw" not in {t["name"] for t in other_operator.get("/customer/job-templates", expect=200).json()}
