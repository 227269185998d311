"""`manage.py mqtt_bridge --processes N` (mqtt_bridge.partitions): one bridge, N ingest worker processes.

The pure parts (which worker a topic goes to, the order of acknowledgements), then real processes on
a real Mosquitto: every report lands once and each device keeps its last report (its messages meet
one worker, in order); a worker killed mid-stream is restarted and loses nothing; SIGTERM stops them
all with exit 0; the bridge killed takes its workers with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from devices.models import Device
from mqtt_bridge import topics
from mqtt_bridge.ingest import Incoming
from mqtt_bridge.ingest_loop import Counts
from mqtt_bridge.partitions import AckOrder, decode_done, decode_message, encode_done, encode_message, worker_of
from mqtt_bridge.tests.conftest import (
    BridgeProcess,
    MqttClient,
    PrivateMosquitto,
    purge_session,
    reports_landed,
    wait_until,
)

ROUNDS = 5


# --- routing and acknowledgements ------------------------------------------------------------------


def test_a_devices_topics_share_a_key_in_both_dialects():
    base = "tenant/acme/device/pump-1"
    native = [topics.reported("acme", "pump-1"), f"{base}/shadow/update", f"{base}/jobs/start-next",
              f"{base}/shadow/name/cfg/update"]  # fmt: skip
    aws = ["$aws/things/acme:pump-1/shadow/update", "$aws/things/acme:pump-1/jobs/j1/update"]
    assert {topics.partition_key(t) for t in native + aws} == {"acme:pump-1"}
    assert topics.partition_key(topics.reported("acme", "pump-2")) == "acme:pump-2"
    assert topics.partition_key("tenant/_iotcloud/provisioning/acme/serial-9/register") == (
        "tenant/_iotcloud/provisioning/acme/serial-9/register"
    )
    assert topics.partition_key("garbage") == "garbage"


def test_every_worker_gets_devices_and_a_device_always_the_same_one():
    count = 4
    chosen = {worker_of(topics.reported("t", f"d{n}"), count) for n in range(200)}
    assert chosen == set(range(count))
    for n in range(50):
        device = f"d{n}"
        assert worker_of(topics.reported("t", device), count) == worker_of(f"$aws/things/t:{device}/shadow/get", count)


def test_acknowledgements_follow_the_arrival_order_whoever_commits_first():
    order = AckOrder()
    for mid in (7, 3, 9, 4):
        order.received(mid)
    assert order.committed([9]) == []  # 7 and 3 are not committed yet
    assert order.committed([3]) == []
    assert order.committed([7]) == [7, 3, 9]
    assert order.committed([4]) == [4]
    assert len(order) == 0


def test_an_unknown_or_repeated_packet_id_acknowledges_nothing():
    order = AckOrder()
    order.received(5)
    assert order.committed([8]) == []  # a copy from before a reconnect: not outstanding
    order.reset()  # a new connection: the broker sends 5 again
    assert order.committed([5]) == []
    order.received(5)
    assert order.committed([5]) == [5]
    assert order.committed([5]) == []  # acknowledged once


def test_frames_carry_messages_and_commits_unchanged():
    message = Incoming("tenant/t/device/d/shadow/reported", b'{"x":1}', mid=42, qos=1, retained=True)
    assert decode_message(encode_message(message)) == message
    counts = Counts(received=2, accepted=1, rate_limited=0, retained=1, events=3)
    qos0 = Incoming("tenant/t/device/e/shadow/reported", b"{}", mid=0, qos=0)
    assert decode_done(encode_done([message, qos0], counts, True)) == ([42], counts, True)


class _Exited:
    pid, returncode = 4242, -9

    def wait(self):
        return self.returncode


class _Closed:
    def close(self):
        pass


def test_a_worker_that_dies_while_the_bridge_stops_is_not_started_again(monkeypatch):
    """The restart pause ends early when the bridge stops, and no worker is spawned after that."""
    from mqtt_bridge import partitions

    monkeypatch.setattr(partitions, "RESTART_PAUSE_SECONDS", 30)
    stopping = threading.Event()
    group = partitions.Partitions(1, client_id="t", protocol=5, acknowledge=lambda mids: None,
                                  counted=lambda counts, may_write: None, stopping=stopping)  # fmt: skip
    worker = group.workers[0]
    worker.process, worker.from_worker, worker.to_worker = _Exited(), _Closed(), _Closed()
    spawned = []
    monkeypatch.setattr(worker, "spawn", lambda: spawned.append(True))
    threading.Timer(0.1, stopping.set).start()
    started = time.monotonic()
    assert group._restart(worker) is False
    assert time.monotonic() - started < 5 and spawned == []
    stopping.clear()
    monkeypatch.setattr(partitions, "RESTART_PAUSE_SECONDS", 0)
    assert group._restart(worker) is True and spawned == [True]  # not stopping: started again


# --- real processes -----------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every live child, whichever of its threads started it (/proc/<pid>/task/<tid>/children is per thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return [p for p in found if alive(p)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.fixture
def broker():
    if not shutil.which("mosquitto"):
        pytest.skip("needs mosquitto")
    broker = PrivateMosquitto()
    broker.start()
    yield broker
    broker.cleanup()


class Workers(BridgeProcess):
    """BridgeProcess with two ingest workers."""

    def __init__(self, broker, client_id):
        super().__init__(broker, client_id)
        self.env["MQTT_BRIDGE_PROCESSES"] = "2"

    def start(self):
        super().start()

        def ready():
            return self.output().count("ingest worker started client_id") >= 2 and len(self.workers()) == 2

        wait_until(ready, message="both ingest workers to start")

    def workers(self) -> list[int]:
        return children_of(self.process.pid)


@contextlib.contextmanager
def running(broker, client_id: str):
    """Workers started; at the end killed if still running, and their session purged."""
    bridge = Workers(broker.settings, client_id=client_id)
    bridge.start()
    try:
        yield bridge
    finally:
        if bridge.process and bridge.process.poll() is None:
            bridge.kill()
        purge_session(broker.settings, bridge.env["MQTT_CLIENT_ID"])


def stream_rounds(publisher, tenant_id: str, devices, pause: float, *, back_to_back=False) -> threading.Thread:
    """ROUNDS reports per device, round after round (back_to_back: a device's rounds one after the other),
    as fast as `pause` allows, in a thread (started)."""
    order = [(d, r) for d in devices for r in range(ROUNDS)] if back_to_back else [
        (d, r) for r in range(ROUNDS) for d in devices]  # fmt: skip

    def stream():
        for device, round_ in order:
            publisher.publish(topics.reported(tenant_id, device.device_id),
                              json.dumps({"reported": {"round": round_}, "version": 0}))  # fmt: skip
            if pause:
                threading.Event().wait(pause)

    sender = threading.Thread(target=stream)
    sender.start()
    return sender


def last_round_everywhere(devices) -> bool:
    return all(d.reported_state == {"round": ROUNDS - 1} for d in Device.objects.filter(pk__in=[d.pk for d in devices]))


@pytest.mark.django_db(transaction=True)
def test_workers_apply_each_devices_reports_in_order_and_survive_a_killed_worker(broker, provision, mqtt_tenant):
    devices = provision(60)
    with running(broker, f"test-workers-{mqtt_tenant.id}") as bridge:
        first, second = bridge.workers()
        with MqttClient(broker.settings) as publisher:
            sender = stream_rounds(publisher, mqtt_tenant.id, devices, 0.001)
            wait_until(lambda: reports_landed(mqtt_tenant) >= 20, message="some reports to land")
            os.kill(second, signal.SIGKILL)  # one worker crashes mid-stream
            sender.join(60)
            wait_until(lambda: last_round_everywhere(devices), timeout=60,
                       message="every device's last round, the killed worker's devices too")  # fmt: skip

        def restarted():
            now = bridge.workers()
            return len(now) == 2 and second not in now

        wait_until(restarted, message="the bridge to restart the killed worker")
        assert first in bridge.workers(), "the other worker went on"
        assert "exited with -9; restarting" in bridge.output()

        workers = bridge.workers()
        assert bridge.terminate() == 0  # SIGTERM: the bridge and its workers stop, exit 0
        assert not any(alive(pid) for pid in workers)


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_rounds_leaves_every_device_at_its_last_one(broker, provision, mqtt_tenant):
    """No pause between reports, a device's rounds one after the other: they are in flight at once
    (routed to any worker, or to several bridges sharing a subscription, some land out of order)."""
    devices = provision(150)
    with running(broker, f"test-burst-{mqtt_tenant.id}") as bridge:
        with MqttClient(broker.settings) as publisher:
            stream_rounds(publisher, mqtt_tenant.id, devices, 0, back_to_back=True).join(60)
            wait_until(lambda: last_round_everywhere(devices), timeout=60, message="every device's last round")
        assert bridge.terminate() == 0
        stats = bridge.output().rsplit("bridge stopped stats=", 1)[1]
        assert f"'accepted': {len(devices) * ROUNDS}," in stats and "'rejected': 0," in stats


@pytest.mark.django_db(transaction=True)
def test_a_bridge_killed_mid_stream_loses_no_report_when_it_comes_back(broker, provision, mqtt_tenant):
    """SIGKILL of the bridge itself: its workers die with it, nothing uncommitted was acknowledged, and the
    broker redelivers it all to the bridge's session when it is back."""
    devices = provision(60)
    with running(broker, f"test-lead-kill-{mqtt_tenant.id}") as bridge:
        with MqttClient(broker.settings) as publisher:
            sender = stream_rounds(publisher, mqtt_tenant.id, devices, 0.002)
            wait_until(lambda: reports_landed(mqtt_tenant) >= 10, message="some reports to land")
            workers = bridge.workers()
            bridge.kill()
            wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30, message="its workers to die")
            sender.join(60)
            assert not last_round_everywhere(devices), "the stream was done before the kill; nothing was tested"
            bridge.start()
            wait_until(lambda: last_round_everywhere(devices), timeout=60, message="every device's last round")
        assert bridge.terminate() == 0


@pytest.mark.django_db(transaction=True)
def test_a_killed_bridge_takes_its_workers_with_it(broker, mqtt_tenant):
    bridge = Workers(broker.settings, client_id=f"test-orphans-{mqtt_tenant.id}")
    bridge.start()
    workers = bridge.workers()
    bridge.kill()  # SIGKILL: no chance to stop them itself
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30, message="the workers to stop")
    purge_session(broker.settings, bridge.env["MQTT_CLIENT_ID"])
