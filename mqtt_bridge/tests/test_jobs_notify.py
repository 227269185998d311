"""jobs/notify over a real broker: the retained pending list follows the jobs."""

import json

from devices.services import device_decommission
from jobs.models import JobExecution
from jobs.services import execution_update, job_create
from mqtt_bridge import topics
from mqtt_bridge.tests.conftest import wait_until


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
    assert [(j["job_id"], j["document"]) for j in jobs] == [(job.job_id, {"type": "reboot", "params": {"delay_s": 5}})]
    assert latest_notify(mqtt_client, mqtt_tenant.id, other.device_id) is None  # untouched device: nothing

    execution_update(device=device, job_id=job.job_id, status="IN_PROGRESS")
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
