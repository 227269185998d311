"""`manage.py mqtt_bridge --processes N` (mqtt_bridge.processes): N bridges in one shared subscription group.

On a real Mosquitto (shared subscriptions): every report lands once; a child killed mid-stream is
restarted and loses nothing; SIGTERM stops them all with exit 0; the supervisor killed takes its
children with it.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from devices.models import Device
from mqtt_bridge.processes import child_ids
from mqtt_bridge.tests.conftest import (
    BridgeProcess,
    MqttClient,
    PrivateMosquitto,
    purge_session,
    reports_landed,
    stream_reports,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_children_keep_the_base_id_then_number_themselves():
    children = child_ids("iotcloud-bridge-web1", 3)
    assert [c.client_id for c in children] == [
        "iotcloud-bridge-web1",
        "iotcloud-bridge-web1-2",
        "iotcloud-bridge-web1-3",
    ]
    command = children[1].command("iotcloud")
    assert command[-6:] == ["--processes", "1", "--client-id", "iotcloud-bridge-web1-2", "--shared-group", "iotcloud"]


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.fixture
def broker():
    if not shutil.which("mosquitto"):
        pytest.skip("needs mosquitto (shared subscriptions)")
    broker = PrivateMosquitto()
    broker.start()
    yield broker
    broker.cleanup()


class Bridges(BridgeProcess):
    """BridgeProcess running two bridges under the supervisor."""

    def __init__(self, broker, client_id):
        super().__init__(broker, client_id)
        self.env["MQTT_BRIDGE_PROCESSES"] = "2"

    def start(self):
        super().start()

        def ready():
            return self.output().count("subscribed to reports") >= 2 and len(children_of(self.process.pid)) == 2

        wait_until(ready, message="both bridge processes to subscribe")


def test_two_processes_share_reports_survive_a_killed_child_and_stop_together(broker, provision, mqtt_tenant):
    devices = provision(120)
    bridges = Bridges(broker.settings, client_id=f"test-procs-{mqtt_tenant.id}")
    bridges.start()
    try:
        first, second = children_of(bridges.process.pid)
        with MqttClient(broker.settings) as publisher:
            sender = stream_reports(publisher, mqtt_tenant.id, devices, 0.005)

            def landed():
                return reports_landed(mqtt_tenant)

            wait_until(lambda: landed() >= 20, message="some reports to land")
            os.kill(second, signal.SIGKILL)  # one bridge crashes mid-stream
            sender.join(30)
            wait_until(lambda: landed() == len(devices), timeout=60, message="every report, the killed one's too")

        def restarted():
            now = children_of(bridges.process.pid)
            return len(now) == 2 and second not in now

        wait_until(restarted, message="the supervisor to restart the killed bridge")
        assert first in children_of(bridges.process.pid), "the other bridge went on"
        for n, device in enumerate(devices):
            assert Device.objects.get(pk=device.pk).reported_state == {"seq": n}
        assert "exited with -9; restarting" in bridges.output()

        children = children_of(bridges.process.pid)
        assert bridges.terminate() == 0  # SIGTERM: both stop, exit 0
        assert not any(alive(pid) for pid in children)
    finally:
        if bridges.process and bridges.process.poll() is None:
            bridges.kill()
        for client_id in (bridges.env["MQTT_CLIENT_ID"], bridges.env["MQTT_CLIENT_ID"] + "-2"):
            purge_session(broker.settings, client_id)


def test_a_killed_supervisor_takes_its_bridges_with_it(broker, mqtt_tenant):
    bridges = Bridges(broker.settings, client_id=f"test-orphans-{mqtt_tenant.id}")
    bridges.start()
    children = children_of(bridges.process.pid)
    bridges.kill()  # SIGKILL: no chance to stop them itself
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=30, message="the bridges to stop")
    for client_id in (bridges.env["MQTT_CLIENT_ID"], bridges.env["MQTT_CLIENT_ID"] + "-2"):
        purge_session(broker.settings, client_id)
