"""make run's default path: embedded broker + bridge + a device with its own MQTT credentials.

Runs even when MQTT_URL points at Mosquitto, so the zero-setup path is always tested.
"""

import time

import pytest

from devices.models import Device
from iotcloud.testing import make_operator_client
from mqtt_bridge.management.commands.simulate_devices import NativeDevice, SimulatedDevice
from mqtt_bridge.tests.conftest import EmbeddedTestBroker, wait_until


@pytest.mark.parametrize("kind", [NativeDevice, SimulatedDevice], ids=["native", "seed"])
def test_desired_reaches_a_simulated_device_and_it_syncs(kind, start_bridge, provision, mqtt_tenant):
    broker = EmbeddedTestBroker()
    broker.start()
    device_sim = None
    try:
        start_bridge(broker=broker.settings)
        (device,) = provision(1)
        log = []
        device_sim = kind(broker.settings, mqtt_tenant.id, device.device_id, device.token, log.append)
        operator = make_operator_client(mqtt_tenant, f"op-{mqtt_tenant.id}")
        operator.patch(f"/customer/devices/{device.device_id}/twin/desired", {"desired": {"interval": 15}}, expect=200)

        def synced():
            twin = operator.get(f"/customer/devices/{device.device_id}/twin", expect=200).json()
            return twin["sync_status"] == "synced" and twin["reported"].get("interval") == 15

        wait_until(synced, message="the simulated device to apply and report desired")
        assert any("applied desired v1" in line or 'applied delta {"interval": 15}' in line for line in log), log
        assert Device.objects.get(pk=device.pk).reported_version == 1
        if kind is NativeDevice:  # partial reports: its reading stays beside the applied setting
            assert "temperature_c" in Device.objects.get(pk=device.pk).reported_state
    finally:
        if device_sim:
            device_sim.close()
        time.sleep(0.1)
        broker.stop()


def test_a_device_with_a_wrong_token_cannot_connect(provision, mqtt_tenant):
    broker = EmbeddedTestBroker()
    broker.start()
    try:
        (device,) = provision(1)
        log = []
        sim = SimulatedDevice(broker.settings, mqtt_tenant.id, device.device_id, "iotd_wrong", log.append)
        wait_until(lambda: any("refused" in line for line in log), message="refusal")
        sim.close()
    finally:
        broker.stop()


def test_simulated_devices_run_a_job_to_completion(start_bridge, provision, mqtt_tenant, live_server):
    from jobs.choices import JobStatus
    from jobs.models import Job
    from jobs.services import job_create

    broker = EmbeddedTestBroker()
    broker.start()
    sims = []
    try:
        start_bridge(broker=broker.settings)
        devices = provision(3)
        log = []
        sims = [
            SimulatedDevice(broker.settings, mqtt_tenant.id, d.device_id, d.token, log.append,
                            api_url=live_server.url, job_seconds=0.1)
            for d in devices
        ]  # fmt: skip
        job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
        wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED, timeout=30,
                   message="the simulated fleet to finish the job")  # fmt: skip
        # Each device logs after its PUT returns, so the job may complete just before the last line lands.
        wait_until(lambda: sum("SUCCEEDED" in line for line in log) == 3, message="each device to log its success")
    finally:
        for sim in sims:
            sim.close()
        time.sleep(0.1)
        broker.stop()


def test_a_native_simulated_device_takes_its_shadow_on_connect_and_runs_jobs_over_mqtt(
    start_bridge, provision, mqtt_tenant
):
    from jobs.choices import ExecutionStatus, JobStatus
    from jobs.models import Job, JobExecution
    from jobs.services import job_create
    from twin.services import twin_update_desired

    broker = EmbeddedTestBroker()
    broker.start()
    sims = []
    try:
        start_bridge(broker=broker.settings)
        devices = provision(2)
        twin_update_desired(device=devices[0], document={"mode": "eco"})  # before it connects: get finds it
        job = job_create(tenant=mqtt_tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
        log = []
        sims = [NativeDevice(broker.settings, mqtt_tenant.id, d.device_id, d.token, log.append, job_seconds=0.1)
                for d in devices]  # fmt: skip
        wait_until(lambda: Device.objects.get(pk=devices[0].pk).reported_state.get("mode") == "eco",
                   message="the delta of its get applied and reported")  # fmt: skip
        wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED, timeout=30,
                   message="the fleet to finish the job over MQTT")  # fmt: skip
        details = list(JobExecution.objects.filter(job=job).values_list("status", "status_details"))
        assert details == [(ExecutionStatus.SUCCEEDED, {"simulated": "true"})] * 2
    finally:
        for sim in sims:
            sim.close()
        time.sleep(0.1)
        broker.stop()
