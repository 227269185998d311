"""A broker that loses its state gets every device's retained desired state and jobs lists back from
the database, with no new write (mqtt_bridge.recovery): a real broker killed and restarted empty,
one back from an older copy of its state, one whose retained store was cleared under a surviving
session; the marking, the canary verdicts and the anti-entropy pass at unit level."""

from __future__ import annotations

import getpass
import json
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from devices.services import device_decommission, device_provision
from jobs.models import JobExecution
from jobs.services import job_create
from mqtt_bridge import recovery, topics
from mqtt_bridge.accounts import acl
from mqtt_bridge.config import BrokerSettings
from mqtt_bridge.delivery import desired_deliver_pending
from mqtt_bridge.recovery import (
    NO_SESSION,
    RETAINED_DESIRED,
    Canary,
    anti_entropy_pass,
    canary_key,
    canary_payload,
    canary_verdict,
    mark_for_republish,
    parse_canary_payload,
)
from mqtt_bridge.tests.conftest import ROOT, EmbeddedTestBroker, MqttClient, _port_open, free_port, wait_until
from twin.services import twin_update_desired

RECOVERY_TIMEOUT = 40  # paho's reconnect back-off, then a full republish


# --- brokers that lose their state ---------------------------------------------------------------


class CrashableMosquitto:
    """A Mosquitto of the test's own from the project's mqtt_bridge/mosquitto.conf (persistence on),
    on a fixed port: `kill` (SIGKILL, nothing saved), `stop` (SIGTERM, state saved), `wipe` (delete
    the saved state), `start` again."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-recovery-"))
        self.port = free_port()
        conf = (ROOT / "mqtt_bridge" / "mosquitto.conf").read_text()
        conf = re.sub(r"^listener 1883$", f"listener {self.port} 127.0.0.1", conf, flags=re.M)
        assert "persistence true" in conf and "/mosquitto/data/" in conf
        conf = conf.replace("/mosquitto/data/", f"{self.dir}/")
        # As root, mosquitto would switch to a user who cannot write self.dir.
        conf += f"\nuser {getpass.getuser()}\nlog_dest stderr\nlog_type error\n"
        (self.dir / "mosquitto.conf").write_text(conf)
        self.settings = BrokerSettings(host="127.0.0.1", port=self.port)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")])
        wait_until(lambda: _port_open(self.port), message="mosquitto to listen")

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self):
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def wipe(self):
        (self.dir / "mosquitto.db").unlink(missing_ok=True)

    def cleanup(self):
        if self.process:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RestartableEmbedded(EmbeddedTestBroker):
    """The embedded broker (memory only): every restart comes back empty, without sessions."""

    def kill(self):
        self.stop()

    def wipe(self):
        pass

    def cleanup(self):
        self.stop()


def _needs_mosquitto():
    if not shutil.which("mosquitto"):
        pytest.skip("needs the mosquitto binary (apt-get install mosquitto)")


@pytest.fixture
def mosquitto():
    _needs_mosquitto()
    broker = CrashableMosquitto()
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture(params=["mosquitto", "embedded"])
def crashable_broker(request):
    if request.param == "mosquitto":
        _needs_mosquitto()
        broker = CrashableMosquitto()
    else:
        broker = RestartableEmbedded()
    broker.start()
    yield broker
    broker.cleanup()


# --- helpers -------------------------------------------------------------------------------------


def retained_state(broker: BrokerSettings, tenant_id: str, quiet: float = 1.0) -> dict[str, object]:
    """Every retained message of the tenant's devices a subscriber that connects now gets (both
    dialects), payloads decoded; the jobs documents' `timestamp` (when published) left out."""
    with MqttClient(broker) as client:
        client.subscribe(f"tenant/{tenant_id}/#")
        client.subscribe("$aws/things/+/#")
        messages = client.collect(quiet=quiet)
    state = {}
    for message in messages:
        if not message.retain or not message.payload:
            continue
        body = json.loads(message.payload)
        if "/jobs/" in message.topic:
            body.pop("timestamp", None)
        state[message.topic] = body
    return state


def settled() -> bool:
    """Every desired version published, every jobs list delivered."""
    behind = [d for d in Device.objects.all() if d.desired_published_version != d.desired_version]
    return not behind and not JobExecution.objects.filter(notify_pending=True).exists()


def make_fleet(tenant):
    """Devices with desired writes, one decommissioned after its desired state was published, jobs."""
    devices = {name: device_provision(tenant=tenant, device_id=name)[0] for name in ("a", "b", "c", "d", "e")}
    for n in range(2):
        twin_update_desired(device=devices["a"], document={"interval": 10 * (n + 1)})
    twin_update_desired(device=devices["b"], document={"mode": "eco"})
    for n in range(3):
        twin_update_desired(device=devices["c"], document={"n": n})
    twin_update_desired(device=devices["d"], document={"soon": "gone"})
    job_create(tenant=tenant, document_type="reboot", job_id="reboot-1", device_ids=["a", "e"])
    job_create(tenant=tenant, document_type="rotate-key", job_id="rotate-1", device_ids=["d"])
    return devices


def own_topics(state: dict, tenant_id: str, device_id: str) -> list[str]:
    native = f"tenant/{tenant_id}/device/{device_id}/"
    aws = f"$aws/things/{topics.thing_name(tenant_id, device_id)}/"
    return sorted(t for t in state if t.startswith((native, aws)))


def versions() -> dict[int, int]:
    return dict(Device.objects.values_list("id", "desired_version"))


def restart_cleanly(mosquitto: CrashableMosquitto, bridge) -> None:
    """SIGTERM (the broker saves its state), start again; returns once the bridge judged it."""
    mosquitto.stop()
    wait_until(lambda: not bridge.connected.is_set(), timeout=10, message="the bridge to notice")
    mosquitto.start()
    wait_until(lambda: bridge.connected.is_set() and bridge.recovery._verified, timeout=RECOVERY_TIMEOUT,
               message="the broker judged whole")  # fmt: skip


# --- the broker restarted empty ----------------------------------------------------------------


def test_a_broker_restarted_empty_gets_every_retained_state_back_with_no_new_write(
    crashable_broker, start_bridge, mqtt_tenant, caplog
):
    devices = make_fleet(mqtt_tenant)
    bridge = start_bridge(broker=crashable_broker.settings)
    wait_until(lambda: settled() and bridge.recovery._verified, message="first delivery")
    device_decommission(device=devices["d"])
    wait_until(settled, message="the decommissioned device cleared")
    before = retained_state(crashable_broker.settings, mqtt_tenant.id)
    t = mqtt_tenant.id
    assert before[topics.desired(t, "a")]["version"] == 2
    assert before[topics.desired(t, "c")]["version"] == 3
    assert [j["job_id"] for j in before[topics.jobs_notify(t, "e")]["jobs"]] == ["reboot-1"]
    assert own_topics(before, t, "d") == []  # cleared by decommission
    assert topics.desired(t, "e") not in before  # never written: nothing to keep
    written = versions()
    republishes = bridge.stats["full_republishes"]

    caplog.set_level(logging.WARNING, logger="mqtt_bridge.recovery")
    crashable_broker.kill()
    crashable_broker.wipe()
    crashable_broker.start()
    wait_until(
        lambda: retained_state(crashable_broker.settings, t) == before, timeout=RECOVERY_TIMEOUT,
        message="every retained message back",
    )  # fmt: skip
    assert versions() == written  # no new write: the database was the source
    after = retained_state(crashable_broker.settings, t)
    assert own_topics(after, t, "d") == []  # stays cleared, never resurrected
    assert after[topics.desired(t, "a")]["desired"] == {"interval": 20}
    assert bridge.stats["full_republishes"] > republishes
    assert any(NO_SESSION in r.getMessage() and "marked" in r.getMessage() for r in caplog.records)


# --- the broker came back from an older copy of its state (killed before it saved) -------------------


def test_a_broker_back_from_an_older_copy_of_its_state_is_caught_by_the_canary(
    mosquitto, start_bridge, mqtt_tenant, caplog
):
    t = mqtt_tenant.id
    a, _ = (device_provision(tenant=mqtt_tenant, device_id=name)[0] for name in ("a", "b"))
    twin_update_desired(device=a, document={"v": 1})
    bridge = start_bridge(broker=mosquitto.settings)
    wait_until(lambda: settled() and bridge.recovery._verified, message="first delivery")

    # A clean restart saves the state (the bridge's session too): no republish afterwards.
    republishes = bridge.stats["full_republishes"]
    restart_cleanly(mosquitto, bridge)
    assert bridge.stats["full_republishes"] == republishes

    twin_update_desired(device=a, document={"v": 2})
    job_create(tenant=mqtt_tenant, document_type="reboot", job_id="after-save", device_ids=["b"])
    wait_until(settled, message="the writes after the save delivered")
    before = retained_state(mosquitto.settings, t)
    assert before[topics.desired(t, "a")]["version"] == 2
    written = versions()

    caplog.set_level(logging.WARNING, logger="mqtt_bridge.recovery")
    mosquitto.kill()  # nothing saved since the clean restart: it comes back with v1 and no jobs
    mosquitto.start()
    wait_until(
        lambda: retained_state(mosquitto.settings, t) == before, timeout=RECOVERY_TIMEOUT,
        message="the lost writes back",
    )  # fmt: skip
    assert versions() == written
    assert bridge.stats["full_republishes"] == republishes + 1
    assert any("canary went back" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_clean_broker_restart_republishes_nothing(mosquitto, start_bridge, mqtt_tenant):
    a, _ = device_provision(tenant=mqtt_tenant, device_id="a")
    twin_update_desired(device=a, document={"v": 1})
    bridge = start_bridge(broker=mosquitto.settings)
    wait_until(lambda: settled() and bridge.recovery._verified, message="first delivery")
    republishes, published = bridge.stats["full_republishes"], bridge.stats["published"]
    for _ in range(2):
        restart_cleanly(mosquitto, bridge)
    assert (bridge.stats["full_republishes"], bridge.stats["published"]) == (republishes, published)


# --- the retained store lost while the session survives ------------------------------------------------


def _clear_by_hand(broker: BrokerSettings, state: dict, client_id: str) -> None:
    with MqttClient(broker) as client:
        for topic in [*state, topics.bridge_canary(canary_key(client_id))]:
            client.publish(topic, b"", retain=True)


def test_a_broker_whose_retained_store_was_cleared_under_a_surviving_session(
    mosquitto, start_bridge, mqtt_tenant, caplog
):
    """The bridge reconnects to its persistent session on a broker without retained messages."""
    devices = make_fleet(mqtt_tenant)
    bridge = start_bridge(broker=mosquitto.settings)
    wait_until(lambda: settled() and bridge.recovery._verified, message="first delivery")
    device_decommission(device=devices["d"])
    wait_until(settled, message="the decommissioned device cleared")
    before = retained_state(mosquitto.settings, mqtt_tenant.id)
    written = versions()

    caplog.set_level(logging.INFO, logger="mqtt_bridge")
    _clear_by_hand(mosquitto.settings, before, bridge.client_id)
    assert retained_state(mosquitto.settings, mqtt_tenant.id, quiet=0.3) == {}
    mosquitto.stop()  # saved: the session, no retained message
    mosquitto.start()
    wait_until(lambda: retained_state(mosquitto.settings, mqtt_tenant.id) == before, timeout=RECOVERY_TIMEOUT,
               message="every retained message back")  # fmt: skip
    assert versions() == written
    messages = [r.getMessage() for r in caplog.records]
    assert any("session_present=True" in m for m in messages), messages
    assert any("this bridge's canary is missing" in m for m in messages), messages


def test_the_periodic_check_catches_a_store_lost_while_connected(
    mosquitto, start_bridge, mqtt_tenant, settings, caplog
):
    settings.MQTT_CANARY_CHECK_SECONDS = 0.5
    make_fleet(mqtt_tenant)
    bridge = start_bridge(broker=mosquitto.settings)
    wait_until(lambda: settled() and bridge.recovery._verified, message="first delivery")
    before = retained_state(mosquitto.settings, mqtt_tenant.id)
    republishes = bridge.stats["full_republishes"]

    caplog.set_level(logging.WARNING, logger="mqtt_bridge.recovery")
    _clear_by_hand(mosquitto.settings, before, bridge.client_id)  # e.g. a cluster node lost it
    wait_until(lambda: retained_state(mosquitto.settings, mqtt_tenant.id) == before, timeout=RECOVERY_TIMEOUT,
               message="every retained message back")  # fmt: skip
    assert bridge.stats["full_republishes"] == republishes + 1
    assert bridge.connected.is_set()
    assert any("canary is missing" in r.getMessage() for r in caplog.records)


# --- marking ----------------------------------------------------------------------------------------------


def _published_as_written(*devices):
    for device in devices:
        Device.objects.filter(pk=device.pk).update(desired_published_version=device.desired_version)


def test_marking_is_set_based_and_leaves_unwritten_devices_alone(tenant):
    devices = {name: device_provision(tenant=tenant, device_id=name)[0] for name in ("a", "b", "c", "d")}
    a = twin_update_desired(device=devices["a"], document={"x": 1})
    c = twin_update_desired(device=devices["c"], document={"x": 1})
    _published_as_written(a, c)
    device_decommission(device=devices["c"])  # pending clear (published 0)
    _published_as_written(Device.objects.get(pk=c.pk))  # ... and cleared
    job_create(tenant=tenant, document_type="reboot", device_ids=["a", "b"])
    job_create(tenant=tenant, document_type="reboot", device_ids=["b"])
    # What no device sees is not republished: d's executions, held back by a rollout or run by the platform.
    job_create(tenant=tenant, document_type="reboot", device_ids=["d"], rollout={"maximum_per_minute": 1})
    job_create(tenant=tenant, document_type="desired_state_patch", device_ids=["d"],
               document_params={"patch": {"x": 2}})  # fmt: skip
    JobExecution.objects.update(notify_pending=False)
    JobExecution.objects.filter(device=devices["a"]).update(notified_next=True)  # notify-next announced it

    with CaptureQueriesContext(connection) as queries:
        marked = mark_for_republish()
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert len(updates) == len(RETAINED_DESIRED) + 2  # one per table; the jobs flags and notify-next marks
    assert (marked.desired, marked.jobs) == (2, 2)  # a, and c (decommissioned: cleared again); a and b
    rows = {d.device_id: d for d in Device.objects.all()}
    assert rows["a"].desired_published_version == 0 < rows["a"].desired_version
    assert rows["c"].desired_published_version == 0 < rows["c"].desired_version
    assert rows["b"].desired_version == rows["b"].desired_published_version == 0  # nothing was ever retained
    flagged = JobExecution.objects.filter(notify_pending=True)
    assert sorted(flagged.values_list("device__device_id", flat=True)) == ["a", "b"]  # one per device
    assert not JobExecution.objects.filter(notified_next=True).exists()  # notify-next goes out again too

    assert mark_for_republish() == marked  # again: harmless, the same marks
    assert Device.objects.get(pk=rows["b"].pk).desired_published_version == 0
    assert JobExecution.objects.filter(notify_pending=True).count() == 2


def test_marking_a_span_touches_only_its_devices(tenant):
    devices = [device_provision(tenant=tenant, device_id=f"d{n}")[0] for n in range(4)]
    _published_as_written(*(twin_update_desired(device=d, document={"n": 1}) for d in devices))
    job_create(tenant=tenant, document_type="reboot", device_ids=[d.device_id for d in devices])
    JobExecution.objects.update(notify_pending=False)
    marked = mark_for_republish(span=(devices[0].pk, devices[2].pk))  # d1, d2
    assert (marked.desired, marked.jobs) == (2, 2)
    lagging = Device.objects.filter(desired_published_version=0).values_list("device_id", flat=True)
    assert sorted(lagging) == ["d1", "d2"]


@pytest.mark.postgres
def test_a_mark_is_never_lost_to_a_publication_in_flight(postgres_only, tenant):
    """Another bridge records a publication while the mark runs: the mark waits for its row lock,
    and applies after its record."""
    device, _ = device_provision(tenant=tenant, device_id="a")
    twin_update_desired(device=device, document={"x": 1})
    claimed, release = threading.Event(), threading.Event()

    def slow_broker(publications):
        claimed.set()
        release.wait(10)
        return list(publications)

    def other_bridge():
        try:
            desired_deliver_pending(publish=slow_broker)
        finally:
            connection.close()

    thread = threading.Thread(target=other_bridge)
    thread.start()
    assert claimed.wait(10)
    threading.Timer(0.5, release.set).start()
    marked = mark_for_republish()  # blocks on the claimed row until the other bridge commits
    thread.join(10)
    assert marked.desired == 1
    assert Device.objects.get(pk=device.pk).desired_published_version == 0  # still to republish


# --- anti-entropy --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, acknowledge=True):
        self.batches, self.acknowledge = [], acknowledge

    def __call__(self, publications):
        self.batches.append(list(publications))
        return list(publications) if self.acknowledge else []


def test_anti_entropy_resends_a_slice_and_moves_on(tenant):
    devices = [device_provision(tenant=tenant, device_id=f"d{n}")[0] for n in range(5)]
    for device in devices:
        twin_update_desired(device=device, document={"id": device.device_id})
    _published_as_written(*Device.objects.filter(device_id__in=["d0", "d1", "d3", "d4"]))  # d2 still pending
    device_decommission(device=devices[4])
    _published_as_written(Device.objects.get(pk=devices[4].pk))  # cleared
    job_create(tenant=tenant, document_type="reboot", device_ids=["d1", "d3"])
    JobExecution.objects.update(notify_pending=False)
    before = list(Device.objects.order_by("id").values_list("desired_version", "desired_published_version"))

    publish = Recorder()
    first = anti_entropy_pass(publish=publish, after=0, count=3)  # d0 d1 d2
    assert (first.devices, first.desired, first.jobs, first.after) == (3, 2, 1, devices[2].pk)
    assert [p.topic for p in publish.batches[0]] == [topics.desired(tenant.id, f"d{n}") for n in (0, 1)]
    assert json.loads(publish.batches[0][1].payload)["desired"] == {"id": "d1"}
    assert JobExecution.objects.get(notify_pending=True).device_id == devices[1].pk

    second = anti_entropy_pass(publish=publish, after=first.after, count=3)  # d3 d4: the end of the fleet
    assert (second.devices, second.desired, second.jobs, second.after) == (2, 2, 1, 0)
    assert [(p.topic, p.payload) for p in publish.batches[1]] == [
        (topics.desired(tenant.id, "d3"), publish.batches[1][0].payload),
        (topics.desired(tenant.id, "d4"), b""),  # decommissioned: cleared again, never resurrected
    ]
    # Nothing was written for desired: no backlog, no versions moved.
    assert list(Device.objects.order_by("id").values_list("desired_version", "desired_published_version")) == before
    third = anti_entropy_pass(publish=publish, after=second.after, count=3)  # round again
    assert third.after == devices[2].pk


def test_anti_entropy_is_paced_and_counted(tenant):
    devices = [device_provision(tenant=tenant, device_id=f"d{n}")[0] for n in range(3)]
    _published_as_written(*(twin_update_desired(device=d, document={"n": 1}) for d in devices))
    bridge = SimpleNamespace(client_id="b1", stats={}, wake=threading.Event())
    rec = recovery.Recovery(bridge, check_seconds=0, anti_entropy_seconds=60, anti_entropy_devices=2)
    publish = Recorder()
    rec.anti_entropy(publish)
    assert publish.batches == []  # not due yet
    rec._next_sweep = 0
    rec.anti_entropy(publish)
    rec.anti_entropy(publish)  # due again only in 60 s
    assert (len(publish.batches), rec.cursor, bridge.stats["anti_entropy"]) == (1, devices[1].pk, 2)
    rec._next_sweep = 0
    rec.anti_entropy(publish)
    assert (rec.cursor, bridge.stats["anti_entropy"]) == (0, 3)
    off = recovery.Recovery(bridge, check_seconds=0, anti_entropy_seconds=0)
    off._next_sweep = 0
    off.anti_entropy(publish)
    assert len(publish.batches) == 2


# --- canaries ----------------------------------------------------------------------------------------------


def test_canary_verdicts():
    now = time.time()
    mine, theirs = Canary(10, now), Canary(7, now - 30)
    judge = lambda found, own_seq=10, known=None: canary_verdict(  # noqa: E731
        found, own_key="me", own_seq=own_seq, known=known or {}, now=now
    )
    assert judge({"me": mine}) is None
    assert judge({"me": Canary(12, now)}) is None  # newer: a batch acknowledged meanwhile
    assert "missing" in judge({})
    assert "went back" in judge({"me": Canary(9, now)})
    assert judge({"me": mine}, own_seq=0) is None  # a new process: nothing to compare yet
    known = {"me": mine, "them": theirs}
    assert judge({"me": mine, "them": Canary(8, now)}, known=known) is None  # they went on
    assert "bridge them is missing" in judge({"me": mine}, known=known)
    assert "bridge them went back" in judge({"me": mine, "them": Canary(6, now)}, known=known)
    gone = {"me": mine, "them": Canary(7, now - recovery.CANARY_RETENTION_SECONDS - 1)}
    assert judge({"me": mine}, known=gone) is None  # a bridge gone for a day: pruned, not lost


def test_canary_payloads_and_topics():
    canary = Canary(1733051234000000000, 1733051234.5)
    assert parse_canary_payload(canary_payload(canary)) == canary
    for bad in (b"", b"{", b"[]", b'{"seq": "1", "at": 1}', b'{"seq": true, "at": 1}', b'{"seq": 1}'):
        assert parse_canary_payload(bad) is None
    key = canary_key("iotcloud-bridge-host-0123456789abcdef")
    assert re.fullmatch(r"[0-9a-f]{16}", key) and "host" not in key
    assert topics.parse_canary(topics.bridge_canary(key)) == key
    assert topics.parse_canary(topics.bridge_probe(key)) is None
    assert topics.parse_canary(topics.desired("acme", "d1")) is None
    assert acl.topic_matches(topics.CANARY_FILTER, topics.bridge_canary(key))
    assert not acl.topic_matches(topics.CANARY_FILTER, topics.bridge_probe(key))


def test_devices_can_neither_write_nor_read_the_platform_topics():
    from iotcloud.rules import TENANT_ID

    assert not TENANT_ID.matches(topics.PLATFORM_ROOT.split("/")[1])  # no tenant can be named so
    key = canary_key("b1")
    for tenant_id, device_id in (("acme", "d1"), ("_iotcloud", "bridge")):
        for topic in (topics.bridge_canary(key), topics.bridge_probe(key), topics.CANARY_FILTER, "tenant/#"):
            for action in (acl.PUBLISH, acl.SUBSCRIBE, acl.RECEIVE):
                assert not acl.device_may(action, tenant_id, device_id, topic), (action, tenant_id, topic)
    # The bridge's own subscriptions never see them either.
    for subscribed in (topics.REPORTED_FILTER, *topics.request_filters(topics.DIALECTS)):
        assert not acl.topic_matches(subscribed, topics.bridge_canary(key))
        assert not acl.topic_matches(subscribed, topics.bridge_probe(key))
    assert topics.parse_request(topics.bridge_canary(key)) is None


# --- the recovery thread's decisions, with the broker faked ------------------------------------------------


class FakeInfo:
    def __init__(self, ok):
        self.ok = ok

    def wait_for_publish(self, timeout=None):
        pass

    def is_published(self):
        return self.ok


class FakeClient:
    def __init__(self, store):
        self.store, self.acknowledge = store, True

    def publish(self, topic, payload, qos=0, retain=False):
        if retain and self.acknowledge:
            key = topics.parse_canary(topic)
            if key is not None and payload:
                self.store[key] = parse_canary_payload(payload)
        return FakeInfo(self.acknowledge)


@pytest.fixture
def fake_bridge(monkeypatch):
    store: dict[str, Canary] = {}
    reads = []  # scripted answers of read_canaries (None: no answer); else the store as it is

    def read(broker, **kwargs):
        return reads.pop(0) if reads else dict(store)

    marks = []
    monkeypatch.setattr(recovery, "read_canaries", read)
    monkeypatch.setattr(recovery, "mark_for_republish", lambda: marks.append(1) or recovery.Marked(3, 1))
    bridge = SimpleNamespace(
        client_id="bridge-1", broker=None, stats={}, wake=threading.Event(), stopping=threading.Event(),
        connected=threading.Event(), client=FakeClient(store),
    )  # fmt: skip
    rec = recovery.Recovery(bridge, check_seconds=60, anti_entropy_seconds=0)
    return SimpleNamespace(bridge=bridge, rec=rec, store=store, reads=reads, marks=marks)


def test_no_session_marks_then_publishes_and_verifies_the_canary(fake_bridge, caplog):
    f = fake_bridge
    f.rec.connected(session_present=False)
    assert f.rec.batch_canary([SimpleNamespace(retain=True)]) is None  # nothing says "whole" yet
    caplog.set_level(logging.WARNING, logger="mqtt_bridge.recovery")
    f.rec.step()
    assert f.marks == [1] and f.bridge.stats["full_republishes"] == 1 and f.bridge.wake.is_set()
    assert f.rec.key in f.store and f.rec._verified
    assert f.rec.batch_canary([SimpleNamespace(retain=True)]) is not None
    assert f.rec.batch_canary([SimpleNamespace(retain=False)]) is None  # events only: nothing retained
    assert "marked 3 desired message(s) and 1 jobs list(s)" in caplog.text and NO_SESSION in caplog.text
    f.rec.step()  # nothing due
    assert f.marks == [1]


def test_a_session_and_a_whole_broker_republish_nothing(fake_bridge):
    f = fake_bridge
    f.rec.connected(session_present=False)
    f.rec.step()
    f.rec.connected(session_present=True)  # a network blip
    f.rec.step()
    assert f.marks == [1] and f.rec._verified


def test_a_missing_canary_is_read_twice_before_everything_is_republished(fake_bridge):
    f = fake_bridge
    f.rec.connected(session_present=False)
    f.rec.step()
    own = f.store[f.rec.key]
    f.rec.connected(session_present=True)
    f.reads[:] = [{}, {f.rec.key: own}]  # late retained delivery: the second read finds it
    f.rec.step()
    assert f.marks == [1]
    f.store.clear()
    f.rec.connected(session_present=True)
    f.rec.step()
    assert f.marks == [1, 1] and f.rec._verified and f.rec.key in f.store


def test_a_broker_that_does_not_answer_is_asked_again_later(fake_bridge):
    f = fake_bridge
    f.rec.connected(session_present=True)
    f.reads[:] = [None]
    f.rec.step()
    assert f.marks == [] and not f.rec._verified
    assert 0 < f.rec._next_check - time.monotonic() <= recovery.RETRY_SECONDS
    f.rec._next_check = 0
    f.rec.step()  # answers now: this bridge's canary was never there (first run): republish once
    assert f.marks == [1] and f.rec._verified


def test_a_broker_that_does_not_keep_the_canary_turns_the_check_off(fake_bridge, caplog):
    f = fake_bridge
    f.rec.connected(session_present=False)
    f.reads[:] = [{}]  # the read-back after publishing: not there
    f.rec.step()
    assert "does not keep this bridge's retained canary" in caplog.text
    assert f.rec._disabled and not f.rec._verified
    f.rec._next_check = 0
    f.rec.step()
    assert f.marks == [1]  # no checks (and no republishing on every one of them) until the next connect


def test_an_unacknowledged_batch_canary_leaves_the_batch_pending(fake_bridge):
    f = fake_bridge
    f.rec.connected(session_present=False)
    f.rec.step()
    canary = f.rec.batch_canary([SimpleNamespace(retain=True)])
    assert not f.rec.batch_covered(canary, FakeInfo(False), time.monotonic())
    assert f.rec.own_seq < canary.seq
    assert f.rec.batch_covered(canary, FakeInfo(True), time.monotonic())
    assert f.rec.own_seq == canary.seq


def test_the_counters_reach_metrics(client, settings, db):
    from django.utils import timezone

    from mqtt_bridge.heartbeat import write_beat
    from mqtt_bridge.models import BridgeHeartbeat

    settings.METRICS_TOKEN = "metrics-token"
    now = timezone.now()
    stats = {"published": 9, "full_republishes": 2, "anti_entropy": 500}
    write_beat(BridgeHeartbeat(client_id="bridge-1", started_at=now, last_beat_at=now, stats=stats))
    body = client.get("/metrics", headers={"Authorization": "Bearer metrics-token"}).content.decode()
    assert 'iotcloud_bridge_full_republishes_total{client_id="bridge-1"} 2.0' in body
    assert 'iotcloud_bridge_anti_entropy_resent_total{client_id="bridge-1"} 500.0' in body


def test_named_shadows_retained_desired_comes_back_too(tenant):
    """A named shadow's retained desired (and a deleted one's clearing message) is marked with the rest."""
    from mqtt_bridge.delivery import named_desired_deliver_pending
    from twin.models import NamedShadow
    from twin.services import shadow_delete, shadow_write_desired

    device = device_provision(tenant=tenant, device_id="n1")[0]
    shadow_write_desired(device=device, shadow_name="cfg", document={"rate": 5})
    shadow_write_desired(device=device, shadow_name="old", document={"x": 1})
    shadow_delete(device=device, shadow_name="old")
    sent = []

    def publish(publications):
        sent.extend(publications)
        return publications

    assert named_desired_deliver_pending(publish=publish) == 2
    assert not NamedShadow.objects.filter(desired_published_version=0).exists()
    sent.clear()
    mark_for_republish()
    assert named_desired_deliver_pending(publish=publish) == 2  # no new write: both again from the database
    by_topic = {p.topic: p.payload for p in sent}
    assert json.loads(by_topic[topics.named_desired(tenant.id, "n1", "cfg")])["desired"] == {"rate": 5}
    assert by_topic[topics.named_desired(tenant.id, "n1", "old")] == b""  # deleted: cleared, never resurrected
    assert NamedShadow.objects.get(name="cfg").desired_version == 1
