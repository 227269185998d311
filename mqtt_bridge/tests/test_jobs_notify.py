"""Jobs notifications over a real broker: the retained seed jobs/notify, and notify-next and the AWS
jobs/notify, follow the jobs; the delivery is set-based."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.services import device_decommission
from jobs.choices import TransitionRules
from jobs.models import JobExecution
from jobs.services import execution_start_next, execution_update, job_create
from mqtt_bridge import topics
from mqtt_bridge.delivery import jobs_deliver_pending
from mqtt_bridge.tests.conftest import MqttClient, wait_until

NEW_TOPICS = (("native", "notify-next"), ("aws", "notify"), ("aws", "notify-next"))


@pytest.fixture
def clear_new_topics(mqtt_broker, mqtt_tenant):
    """Leave none of the notify-next / AWS notify retained messages behind on a shared broker."""
    devices = []
    yield devices.append
    with MqttClient(mqtt_broker) as client:
        for device in devices:
            for dialect, suffix in NEW_TOPICS:
                client.publish(topics.jobs_topic(dialect, mqtt_tenant.id, device.device_id, suffix), b"", retain=True)


def notified(device) -> bool:
    return not JobExecution.objects.filter(device_id=device.pk, notify_pending=True).exists()


def latest_notify(mqtt_client, tenant_id, device_id):
    client = mqtt_client().subscribe(topics.jobs_notify(tenant_id, device_id))
    messages = client.collect(count=1, quiet=1.0)
    return messages[-1] if messages else None


def test_notify_carries_the_pending_list_after_create_and_after_completion(
    start_bridge, provision, mqtt_client, mqtt_tenant
):
    start_bridge()
    device, other = provision(2)
    job = job_create(tenant=mqtt_tenant, document_type="reboot", document_params={"delay_s": 5},
                     device_ids=[device.device_id])  # fmt: skip
    wait_until(lambda: notified(device), message="jobs notify published")

    message = latest_notify(mqtt_client, mqtt_tenant.id, device.device_id)
    assert message.retain
    jobs = json.loads(message.payload)["jobs"]
    assert [(j["job_id"], j["document"], j["status"]) for j in jobs] == [
        (job.job_id, {"type": "reboot", "params": {"delay_s": 5}}, "QUEUED")
    ]
    assert latest_notify(mqtt_client, mqtt_tenant.id, other.device_id) is None  # untouched device: nothing

    execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")
    wait_until(lambda: notified(device), message="jobs notify after the claim")
    # A device that rebooted mid-job finds it in the list.
    (running,) = json.loads(latest_notify(mqtt_client, mqtt_tenant.id, device.device_id).payload)["jobs"]
    assert (running["job_id"], running["status"], running["execution_number"]) == (job.job_id, "IN_PROGRESS", 2)
    execution_update(device=device, job_id=job.job_id, status="SUCCEEDED")
    wait_until(lambda: notified(device), message="jobs notify after completion")
    assert json.loads(latest_notify(mqtt_client, mqtt_tenant.id, device.device_id).payload) == {"jobs": []}


def test_decommission_clears_the_jobs_notify_message(start_bridge, provision, mqtt_client, mqtt_tenant):
    start_bridge()
    (device,) = provision(1)
    job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[device.device_id])
    wait_until(lambda: notified(device), message="jobs notify published")
    device_decommission(device=device)
    wait_until(lambda: notified(device), message="jobs notify cleared")
    assert latest_notify(mqtt_client, mqtt_tenant.id, device.device_id) is None


def retained(mqtt_client, topic: str):
    messages = mqtt_client().subscribe(topic).collect(count=1, quiet=1.0)
    assert not messages or messages[-1].retain
    return json.loads(messages[-1].payload) if messages and messages[-1].payload else None


def test_notify_next_and_the_aws_notify_follow_the_jobs(start_bridge, provision, mqtt_client, mqtt_tenant,
                                                         clear_new_topics):  # fmt: skip
    start_bridge()
    (device,) = provision(1)
    clear_new_topics(device)
    thing = topics.thing_name(mqtt_tenant.id, device.device_id)
    next_topics = [topics.jobs_topic(d, mqtt_tenant.id, device.device_id, "notify-next") for d in ("native", "aws")]
    aws_notify = topics.jobs_topic("aws", mqtt_tenant.id, device.device_id, "notify")
    first = job_create(tenant=mqtt_tenant, document_type="reboot", job_id="first", device_ids=[device.device_id])
    job_create(tenant=mqtt_tenant, document_type="fw", document_params={"v": "2"}, job_id="second",
               device_ids=[device.device_id])  # fmt: skip
    wait_until(lambda: notified(device), message="jobs notifications published")

    for topic in next_topics:
        execution = retained(mqtt_client, topic)["execution"]
        assert (execution["jobId"], execution["status"], execution["thingName"]) == ("first", "QUEUED", thing)
        assert execution["jobDocument"] == {"type": "reboot", "params": {}}
        assert (execution["versionNumber"], execution["executionNumber"]) == (1, 1)
    listed = retained(mqtt_client, aws_notify)["jobs"]
    assert list(listed) == ["QUEUED"] and [j["jobId"] for j in listed["QUEUED"]] == ["first", "second"]

    execution_start_next(device=device)
    wait_until(lambda: notified(device), message="notifications after start-next")
    listed = retained(mqtt_client, aws_notify)["jobs"]
    assert [j["jobId"] for j in listed["IN_PROGRESS"]] == ["first"] and "startedAt" in listed["IN_PROGRESS"][0]
    assert [j["jobId"] for j in listed["QUEUED"]] == ["second"]
    # As AWS: notify-next is not sent again when only the next execution's state changed.
    assert retained(mqtt_client, next_topics[1])["execution"]["status"] == "QUEUED"

    execution_update(device=device, job_id=first.job_id, status="SUCCEEDED", rules=TransitionRules.AWS)
    wait_until(lambda: notified(device), message="notifications after the first job")
    for topic in next_topics:
        assert retained(mqtt_client, topic)["execution"]["jobId"] == "second"
    execution_update(device=device, job_id="second", status="REJECTED", rules=TransitionRules.AWS)
    wait_until(lambda: notified(device), message="notifications with nothing pending")
    for topic in next_topics:
        assert set(retained(mqtt_client, topic)) == {"timestamp"}  # nothing pending: no execution
    assert retained(mqtt_client, aws_notify)["jobs"] == {}


def test_only_the_enabled_dialects_get_the_new_topics(start_bridge, provision, mqtt_client, mqtt_tenant, settings,
                                                       clear_new_topics):  # fmt: skip
    settings.MQTT_DIALECTS = ["native"]
    start_bridge()
    (device,) = provision(1)
    clear_new_topics(device)
    job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[device.device_id])
    wait_until(lambda: notified(device), message="jobs notifications published")
    assert retained(mqtt_client, topics.jobs_notify(mqtt_tenant.id, device.device_id))["jobs"]
    assert retained(mqtt_client, topics.jobs_topic("native", mqtt_tenant.id, device.device_id, "notify-next"))
    assert retained(mqtt_client, f"$aws/things/{topics.thing_name(mqtt_tenant.id, device.device_id)}/jobs/#") is None


def test_decommission_clears_every_jobs_notification(start_bridge, provision, mqtt_client, mqtt_tenant,
                                                     clear_new_topics):  # fmt: skip
    start_bridge()
    (device,) = provision(1)
    clear_new_topics(device)
    job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[device.device_id])
    wait_until(lambda: notified(device), message="jobs notifications published")
    device_decommission(device=device)
    wait_until(lambda: notified(device), message="jobs notifications cleared")
    assert retained(mqtt_client, topics.jobs_notify(mqtt_tenant.id, device.device_id)) is None
    for dialect, suffix in NEW_TOPICS:
        assert retained(mqtt_client, topics.jobs_topic(dialect, mqtt_tenant.id, device.device_id, suffix)) is None


@pytest.mark.django_db
@pytest.mark.parametrize("count", [5, 60])
def test_the_delivery_costs_the_same_queries_for_5_or_60_devices(tenant, make_device, count,
                                                                 django_assert_max_num_queries):  # fmt: skip
    """Set-based: the flagged executions, their devices and every pending list are a fixed number of queries."""
    devices = [make_device(tenant, f"d{n:03}") for n in range(count)]
    for job_id in ("a", "b", "c"):
        job_create(tenant=tenant, document_type="reboot", job_id=job_id, device_ids=[d.device_id for d in devices])
    execution_update(device=devices[0], job_id="b", status="IN_PROGRESS")
    published = []
    with django_assert_max_num_queries(10):
        assert jobs_deliver_pending(publish=lambda p: published.extend(p) or p) == count
    assert len(published) == 4 * count  # seed notify, native notify-next, AWS notify and notify-next
    assert not JobExecution.objects.filter(notify_pending=True).exists()
    first = json.loads(next(p.payload for p in published if p.topic == topics.jobs_notify(tenant.id, "d000")))
    assert [(j["job_id"], j["status"]) for j in first["jobs"]] == [("b", "IN_PROGRESS"), ("a", "QUEUED"),
                                                                   ("c", "QUEUED")]  # fmt: skip


@pytest.mark.django_db
def test_a_device_stays_flagged_until_every_message_of_it_is_acknowledged(tenant, make_device):
    make_device(tenant, "one"), make_device(tenant, "two")
    job_create(tenant=tenant, document_type="reboot", device_ids=["one", "two"])
    drop = topics.jobs_topic("aws", tenant.id, "one", "notify-next")
    assert jobs_deliver_pending(publish=lambda pubs: [p for p in pubs if p.topic != drop]) == 1
    flagged = set(JobExecution.objects.filter(notify_pending=True).values_list("device__device_id", flat=True))
    assert flagged == {"one"}


@pytest.mark.django_db
def test_notify_next_is_published_when_the_next_execution_changes_only(tenant, make_device):
    device = make_device(tenant, "d")
    for job_id in ("a", "b"):
        job_create(tenant=tenant, document_type="reboot", job_id=job_id, device_ids=["d"])
    JobExecution.objects.filter(job__job_id="b").update(queued_at=timezone.now() + timedelta(seconds=1))

    def deliver():
        published = []
        jobs_deliver_pending(publish=lambda p: published.extend(p) or p)
        return {p.topic.split("/", 1)[0] + "/" + p.topic.rsplit("/", 1)[1]: p.payload for p in published}

    first = deliver()
    assert set(first) == {"tenant/notify", "tenant/notify-next", "$aws/notify", "$aws/notify-next"}
    assert json.loads(first["$aws/notify-next"])["execution"]["jobId"] == "a"
    execution_start_next(device=device)  # a: QUEUED -> IN_PROGRESS, still the next one
    assert set(deliver()) == {"tenant/notify", "$aws/notify"}
    execution_update(device=device, job_id="a", status="SUCCEEDED", rules=TransitionRules.AWS)
    after = deliver()
    assert json.loads(after["tenant/notify-next"])["execution"]["jobId"] == "b"
    execution_update(device=device, job_id="b", status="FAILED", rules=TransitionRules.AWS)
    assert set(json.loads(deliver()["$aws/notify-next"])) == {"timestamp"}

    # Clearing a device's marks (a broker that lost its retained store) has notify-next published again.
    job_create(tenant=tenant, document_type="reboot", job_id="c", device_ids=["d"])
    deliver()
    JobExecution.objects.filter(job__job_id="c").update(notified_next=False, notify_pending=True)
    assert json.loads(deliver()["tenant/notify-next"])["execution"]["jobId"] == "c"


def test_the_bridge_releases_a_rollout_at_its_pace(settings, start_bridge, provision, mqtt_client, mqtt_tenant):
    """The bridge's rollout thread releases one execution every 3 s here; a device hears of its job
    (jobs/notify) only once its execution is released."""
    settings.JOBS_ROLLOUT_TICK_SECONDS = 0.1
    devices = provision(3)
    start_bridge()
    started = timezone.now()
    job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[d.device_id for d in devices],
                     rollout={"maximum_per_minute": 20})  # fmt: skip
    first, _, last = devices
    wait_until(lambda: JobExecution.objects.filter(job=job, device=first, released_at__isnull=False).exists(),
               message="the first execution released")  # fmt: skip
    wait_until(lambda: notified(first), message="its notify published")
    assert [j["job_id"] for j in json.loads(latest_notify(mqtt_client, mqtt_tenant.id, first.device_id).payload)[
        "jobs"]] == [job.job_id]  # fmt: skip
    assert JobExecution.objects.get(job=job, device=last).released_at is None
    assert latest_notify(mqtt_client, mqtt_tenant.id, last.device_id) is None  # nothing yet for the last one
    wait_until(lambda: JobExecution.objects.filter(job=job, device=last, released_at__isnull=False).exists(),
               message="the last execution released")  # fmt: skip
    released_at = JobExecution.objects.get(job=job, device=last).released_at
    assert released_at - started >= timedelta(seconds=5.5)  # one every 3 s: the third 6 s after the first
    wait_until(lambda: notified(last), message="its notify published")
    assert json.loads(latest_notify(mqtt_client, mqtt_tenant.id, last.device_id).payload)["jobs"][0]["job_id"] == (
        job.job_id
    )
