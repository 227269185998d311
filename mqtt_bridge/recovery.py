"""Getting the broker's retained state back when the broker loses it, without any new write.

What each device finds retained on the broker (its desired state, its jobs lists) comes from the
database, which is the source of truth. A broker can lose it: a crash before it persisted, a fresh
node, a failover, a lost volume. Three nets bring it back:

1. **No session.** When the bridge connects and the broker has no session for it
   (session_present False), every device's retained state is marked for republishing.
2. **Canary.** Each bridge keeps a retained canary on the broker (topics.bridge_canary) whose
   `seq` only grows, and reads every bridge's canary back on every connect and every
   MQTT_CANARY_CHECK_SECONDS, over a short connection of its own. Its own canary missing or older
   than the last one the broker acknowledged (the broker came back from an older copy of its
   state, its store was cleared), or another bridge's canary missing or gone back, means the
   broker lost messages: everything is marked. A canary rides at the end of every delivery batch
   that holds retained messages, and the batch counts as published only once the broker
   acknowledged it, so whatever delivery recorded is covered by a canary that came after it.
3. **Anti-entropy.** Every MQTT_ANTI_ENTROPY_SECONDS the bridge re-sends the retained state of the
   next MQTT_ANTI_ENTROPY_DEVICES devices, rolling through the fleet by id: whatever went missing
   unnoticed comes back within a bounded time, at a trickle.

Marking (`mark_for_republish`) is one set-based UPDATE per table that hands the work to the
ordinary reconciliation (delivery.desired_deliver_pending, delivery.jobs_deliver_pending): active
devices get their latest desired state, decommissioned ones the clearing empty message again,
never their old state. Marking twice is harmless, so several bridges may do it at once; losing a
mark is not, so the mark is committed before this bridge publishes the canary that says "this
broker is whole": a crash in between leaves the canary missing and the next check marks again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connection, models, transaction
from django.db.models import F, Max, Subquery
from django.db.utils import DatabaseError, InterfaceError

from devices.models import Device
from iotcloud import outbox
from jobs.choices import DESIRED_PATCH
from jobs.models import JobExecution
from mqtt_bridge import delivery, topics
from mqtt_bridge.client import V311, make_client
from mqtt_bridge.config import BrokerSettings
from mqtt_bridge.delivery import Publication, Publisher
from twin.models import NamedShadow

logger = logging.getLogger(__name__)

NO_SESSION = "the broker has no session for this bridge (a new or emptied broker, a failover, an expired session)"
# Canaries of bridges gone this long are cleared from the broker by the others (a recreated
# container comes back under a new client id, so old ones would pile up).
CANARY_RETENTION_SECONDS = 24 * 3600
# A bridge republishes its canary when it connects, behind every delivery batch and after a full
# republish; when it has been quiet this long, after a check too (kept fresh against pruning, and
# rarely: a store lost between a check's read and that write would go unnoticed by this canary).
CANARY_REFRESH_SECONDS = 3600
RETRY_SECONDS = 5.0  # a check the broker did not answer, a database error


# --- what the bridge keeps retained, table by table: the one place to add one ----------------------


@dataclass(frozen=True)
class RetainedDesired:
    """A table whose rows each own one retained desired message on the broker, delivered while
    `published` < `version` (delivery.py). `publications` builds the messages of rows read as
    `fields` (values_list tuples), as the table's delivery does."""

    model: type[models.Model]
    device_field: str  # the column holding the row's device (device_state.id)
    fields: tuple[str, ...]
    publications: Callable[[Sequence[tuple]], list[Publication]]
    version: str = "desired_version"
    published: str = "desired_published_version"


# Every retained desired message comes from one of these tables: the classic shadow's (the seed's
# shadow/desired) and the named shadows' (.../shadow/name/<name>/desired). The jobs lists
# (jobs/notify, notify-next, the AWS notify) need nothing here: they are republished by flagging an
# execution of the device (JobExecution.notify_pending, see _mark_jobs).
RETAINED_DESIRED: tuple[RetainedDesired, ...] = (
    RetainedDesired(Device, "id", delivery.DESIRED_FIELDS, delivery.desired_publications),
    RetainedDesired(NamedShadow, "device_id", delivery.NAMED_DESIRED_FIELDS, delivery.named_desired_publications),
)

DeviceSpan = tuple[int, int]  # device_state ids lo < id <= hi


def _in_span(queryset, field: str, span: DeviceSpan | None):
    if span is None:
        return queryset
    return queryset.filter(**{f"{field}__gt": span[0], f"{field}__lte": span[1]})


@dataclass(frozen=True)
class Marked:
    desired: int  # retained desired messages handed back to the reconciliation
    jobs: int  # devices whose jobs lists were handed back


def mark_for_republish(*, span: DeviceSpan | None = None) -> Marked:
    """Hand every device's retained state (or that of the devices in `span`) back to the
    reconciliation: one UPDATE per table, then a wake-up for every bridge on commit.

    Rows never written (desired_version 0) have nothing retained and are left alone. Rows already
    pending are marked too: one another bridge is publishing right now (claimed, not yet recorded)
    looks pending, and the UPDATE must wait for its lock and apply after its record, or the mark
    would be lost (PostgreSQL re-checks the condition only on rows that matched it before).
    """
    with transaction.atomic():
        desired = 0
        for table in RETAINED_DESIRED:
            rows = _in_span(table.model.objects.filter(**{f"{table.version}__gt": 0}), table.device_field, span)
            desired += rows.update(**{table.published: 0})
        jobs = _mark_jobs(span)
        outbox.wake_delivery()
    return Marked(desired, jobs)


def _mark_jobs(span: DeviceSpan | None) -> int:
    """Flag one execution (the newest) of every device that has any, so delivery publishes all its
    lists again (jobs/notify, the AWS jobs/notify, notify-next), and forget which execution
    notify-next last announced (notified_next: notify-next goes out only when that changes).

    Flagged ones are flagged again, for the same reason as desired: one being published now must
    stay flagged after its delivery clears it.
    """
    # Only what a device could see: not an execution its rollout holds back, nor one the platform runs.
    visible = JobExecution.objects.filter(released_at__isnull=False).exclude(job__document_type=DESIRED_PATCH)
    executions = _in_span(visible, "device_id", span)
    newest = executions.order_by().values("device_id").annotate(newest=Max("id")).values("newest")
    executions.filter(notified_next=True).update(notified_next=False)
    return JobExecution.objects.filter(pk__in=Subquery(newest)).update(notify_pending=True)


# --- anti-entropy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    devices: int  # devices the slice covered
    desired: int  # retained desired messages re-sent (acknowledged by the broker)
    jobs: int  # devices whose jobs lists were handed to the reconciliation
    after: int  # where the next slice starts (0: back at the beginning of the fleet)


def anti_entropy_pass(*, publish: Publisher, after: int, count: int) -> Sweep:
    """Re-send the retained state of the `count` devices after id `after`.

    Rows already up to date are re-sent as they are, under their row lock (FOR UPDATE SKIP LOCKED,
    as delivery claims them), with no record written: nothing changes in the database, so no
    backlog shows and no screen refreshes. Rows behind are the ordinary reconciliation's. Jobs
    lists are flagged for the reconciliation (they are built there).
    """
    ids = list(Device.objects.filter(id__gt=after).order_by("id").values_list("id", flat=True)[:count])
    if not ids:
        return Sweep(0, 0, 0, 0)
    span = (after, ids[-1])
    sent = 0
    with transaction.atomic():
        for table in RETAINED_DESIRED:
            up_to_date = {f"{table.published}__gt": 0, table.published: F(table.version)}
            rows = list(
                _in_span(table.model.objects.filter(**up_to_date), table.device_field, span)
                .order_by("id")
                .select_for_update(skip_locked=True)
                .values_list(*table.fields)
            )
            if rows:
                sent += len(publish(table.publications(rows)))
        jobs = _mark_jobs(span)
    return Sweep(len(ids), sent, jobs, ids[-1] if len(ids) == count else 0)


# --- canaries -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    seq: int  # grows with every canary a bridge publishes
    at: float  # when it was published (Unix time): for pruning the canaries of bridges gone


def canary_key(client_id: str) -> str:
    """The topic level naming a bridge: derived from its client id, which it does not reveal."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:16]


def canary_payload(canary: Canary) -> bytes:
    return json.dumps({"seq": canary.seq, "at": round(canary.at, 3)}, separators=(",", ":")).encode()


def parse_canary_payload(payload: bytes) -> Canary | None:
    try:
        body = json.loads(payload)
        seq, at = body["seq"], body["at"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(at, int | float) or isinstance(at, bool):
        return None
    return Canary(seq, float(at))


def canary_verdict(
    found: dict[str, Canary], *, own_key: str, own_seq: int, known: dict[str, Canary], now: float
) -> str | None:
    """Why the broker lost retained messages, judging by the canaries it holds (`found`), or None.

    own_seq: the newest of this bridge's canaries the broker acknowledged; known: the canaries an
    earlier check found (each bridge's seq only grows, so one that went back was lost).
    """
    mine = found.get(own_key)
    if mine is None:
        return "this bridge's canary is missing from the broker (its retained store was lost or cleared)"
    if mine.seq < own_seq:
        return "this bridge's canary went back (the broker came back from an older copy of its state)"
    for key, canary in sorted(known.items()):
        if key == own_key or now - canary.at > CANARY_RETENTION_SECONDS:
            continue
        seen = found.get(key)
        if seen is None:
            return f"the canary of bridge {key} is missing from the broker"
        if seen.seq < canary.seq:
            return f"the canary of bridge {key} went back (the broker came back from an older copy of its state)"
    return None


def read_canaries(broker: BrokerSettings, *, client_id: str, probe: str, timeout: float) -> dict[str, Canary] | None:
    """Every bridge's canary the broker holds now, read over a short connection of its own; None
    when the broker did not answer in time.

    A fresh subscription gets the retained canaries, then our probe (published after the SUBACK)
    comes back behind them: the end of the list.
    """
    found: dict[str, Canary] = {}
    token = uuid.uuid4().hex.encode()
    done, answered = threading.Event(), threading.Event()
    client = make_client(broker, client_id=client_id, protocol=V311, persistent=False)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.warning("canary check: the broker refused the connection: %s", reason_code)
            done.set()
            return
        client.subscribe([(topics.CANARY_FILTER, 1), (probe, 1)])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if any(code.is_failure for code in reason_codes):
            logger.warning("canary check: the broker refused the subscription: %s", reason_codes)
            done.set()
            return
        client.publish(probe, token, qos=1)

    def on_message(client, userdata, message):
        if message.topic == probe:
            if message.payload == token:
                answered.set()
                done.set()
            return
        key, canary = topics.parse_canary(message.topic), parse_canary_payload(message.payload)
        if key is not None and canary is not None and (key not in found or found[key].seq < canary.seq):
            found[key] = canary

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except (OSError, ValueError) as exc:
        logger.warning("canary check: cannot reach the broker at %s: %s", broker, exc)
        return None
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(found) if answered.is_set() else None


# --- the bridge's side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCanary:
    topic: str
    payload: bytes
    seq: int


class Recovery:
    """Runs in the bridge's `recovery` thread (`run`); the bridge calls `connected` from paho's
    on_connect, `batch_canary` / `batch_covered` around each delivery batch, and `anti_entropy`
    from its deliver thread."""

    def __init__(self, bridge, *, check_seconds=None, anti_entropy_seconds=None, anti_entropy_devices=None):
        self.bridge = bridge
        self.key = canary_key(bridge.client_id)
        self.check_seconds = settings.MQTT_CANARY_CHECK_SECONDS if check_seconds is None else check_seconds
        self.anti_entropy_seconds = (
            settings.MQTT_ANTI_ENTROPY_SECONDS if anti_entropy_seconds is None else anti_entropy_seconds
        )
        self.anti_entropy_devices = (
            settings.MQTT_ANTI_ENTROPY_DEVICES if anti_entropy_devices is None else anti_entropy_devices
        )
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None  # a full republish is owed (kept until the mark committed)
        self._check_due = False
        self._verified = False  # the broker kept our canary on this connection: canaries ride along
        self._disabled = False  # ... or it did not: no canary checks until the next connect
        self._issued = 0  # the newest canary seq handed out
        self.own_seq = 0  # the newest of our canaries the broker acknowledged
        self._own_at = 0.0  # ... and when
        self.known: dict[str, Canary] = {}  # every bridge's canary, as the last check found it
        self._next_check = math.inf
        self._next_sweep = time.monotonic() + self.anti_entropy_seconds
        self.cursor = 0  # anti-entropy: the next slice starts after this device id
        bridge.stats.setdefault("full_republishes", 0)
        bridge.stats.setdefault("anti_entropy", 0)

    @property
    def canaries(self) -> bool:
        return self.check_seconds > 0

    # --- hooks --------------------------------------------------------------------------------------

    def connected(self, session_present: bool) -> None:
        """paho's on_connect (network thread): judge the broker again before trusting it."""
        with self._lock:
            self._verified = self._disabled = False  # no canary rides along until the broker is judged
            if not session_present and self._reason is None:
                self._reason = NO_SESSION
            self._check_due = self.canaries
        self.wake.set()

    def batch_canary(self, publications: Sequence[Publication]) -> BatchCanary | None:
        """The canary to publish after a delivery batch (None: none rides along)."""
        if not any(p.retain for p in publications):
            return None
        with self._lock:
            if not self._verified:
                return None
            seq = self._next_seq()
        return BatchCanary(topics.bridge_canary(self.key), canary_payload(Canary(seq, time.time())), seq)

    def batch_covered(self, canary: BatchCanary, info, deadline: float) -> bool:
        """Whether the broker acknowledged the batch's canary by `deadline` (else the batch is
        treated as not acknowledged, and stays pending)."""
        return self._acknowledged(canary.seq, info, deadline)

    def _acknowledged(self, seq: int, info, deadline: float) -> bool:
        published = False
        with contextlib.suppress(RuntimeError, ValueError):  # not queued (not connected): not acknowledged
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            published = info.is_published()
        if not published:
            return False
        with self._lock:
            self.own_seq, self._own_at = max(self.own_seq, seq), time.time()
        return True

    def anti_entropy(self, publish: Publisher) -> None:
        """Deliver thread: re-send the next slice of the fleet when one is due."""
        if self.anti_entropy_seconds <= 0 or self.anti_entropy_devices <= 0:
            return
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.anti_entropy_seconds
        sweep = anti_entropy_pass(publish=publish, after=self.cursor, count=self.anti_entropy_devices)
        self.cursor = sweep.after
        self.bridge.stats["anti_entropy"] += sweep.desired
        if sweep.jobs:
            self.bridge.wake.set()  # their lists are the reconciliation's
        logger.debug(
            "anti-entropy: %d device(s), %d desired message(s) re-sent, %d jobs list(s); next after id %d",
            sweep.devices, sweep.desired, sweep.jobs, sweep.after,
        )  # fmt: skip

    # --- the recovery thread ------------------------------------------------------------------------

    def run(self) -> None:
        stopping = self.bridge.stopping
        while not stopping.is_set():
            self.wake.wait(self._wait_seconds())
            self.wake.clear()
            if stopping.is_set():
                return
            if not self.bridge.connected.wait(1.0):  # (connected() runs just before the bridge says so)
                continue
            close_old_connections()
            try:
                self.step()
            except (DatabaseError, InterfaceError):
                logger.exception("broker recovery: database error; retrying in %g s", RETRY_SECONDS)
                connection.close()
                stopping.wait(RETRY_SECONDS)
            except (OSError, RuntimeError, ValueError) as exc:  # paho refusing a publish (connection lost)
                logger.warning("broker recovery: %s; judging the broker again in %g s", exc, RETRY_SECONDS)
                self._retry_soon()

    def _wait_seconds(self) -> float:
        with self._lock:
            owed = self._reason is not None or self._check_due
        if owed:
            return 1.0
        return max(0.05, min(self._next_check - time.monotonic(), 3600.0))

    def step(self) -> None:
        """Judge the broker when due, republish everything when it lost state, then (re)publish our canary."""
        now = time.monotonic()
        with self._lock:
            if self.canaries and not self._disabled and now >= self._next_check:
                self._check_due = True
            reason, due = self._reason, self._check_due
        if reason is None and due:
            found = self._read_confirmed()
            if found is None:
                self._retry_soon()
                return
            reason = self._judge(found)
            self._remember(found)
            with self._lock:
                self._check_due = False
                if reason is not None:
                    self._verified = False  # until the mark is committed, no canary says "whole"
                    self._reason = reason
            self._next_check = now + self.check_seconds
        if reason is not None:
            self._republish_all(reason)
        if self.canaries and (reason is not None or (due and self._canary_stale())):
            self._publish_canary()

    def _canary_stale(self) -> bool:
        with self._lock:
            return not self._verified or time.time() - self._own_at > CANARY_REFRESH_SECONDS

    def _read(self) -> dict[str, Canary] | None:
        return read_canaries(
            self.bridge.broker, client_id=f"{self.bridge.client_id}-canary", probe=topics.bridge_probe(self.key),
            timeout=settings.MQTT_PUBLISH_TIMEOUT_SECONDS,
        )  # fmt: skip

    def _read_confirmed(self) -> dict[str, Canary] | None:
        """The canaries; a verdict of loss is read twice (a broker may deliver the retained ones late)."""
        found = self._read()
        if found is None or self._judge(found) is None:
            return found
        return self._read()

    def _judge(self, found: dict[str, Canary]) -> str | None:
        with self._lock:
            own_seq = self.own_seq
        return canary_verdict(found, own_key=self.key, own_seq=own_seq, known=self.known, now=time.time())

    def _remember(self, found: dict[str, Canary]) -> None:
        now = time.time()
        stale = [key for key, canary in found.items() if key != self.key and now - canary.at > CANARY_RETENTION_SECONDS]
        for key in stale:  # a bridge gone for a day: clear its canary
            self.bridge.client.publish(topics.bridge_canary(key), b"", qos=1, retain=True)
        self.known = {key: canary for key, canary in found.items() if key not in stale}
        mine = found.get(self.key)
        if mine is not None:
            with self._lock:
                self._issued = max(self._issued, mine.seq)

    def _republish_all(self, reason: str) -> None:
        marked = mark_for_republish()
        logger.warning(
            "republishing every device's retained state: %s; marked %d desired message(s) and %d jobs list(s)",
            reason, marked.desired, marked.jobs,
        )  # fmt: skip
        self.bridge.stats["full_republishes"] += 1
        with self._lock:
            if self._reason == reason:
                self._reason = None
        self.bridge.wake.set()

    def _publish_canary(self) -> None:
        """Publish our canary; the first one on a connection is read back, to know the broker keeps it."""
        with self._lock:
            seq = self._next_seq()
        info = self.bridge.client.publish(
            topics.bridge_canary(self.key), canary_payload(Canary(seq, time.time())), qos=1, retain=True
        )
        if not self._acknowledged(seq, info, time.monotonic() + settings.MQTT_PUBLISH_TIMEOUT_SECONDS):
            logger.warning("the broker did not acknowledge this bridge's canary; trying again in %g s", RETRY_SECONDS)
            self._retry_soon()
            return
        with self._lock:
            verified = self._verified
        if not verified:
            found = self._read()
            if found is None:
                self._retry_soon()
                return
            mine = found.get(self.key)
            if mine is None or mine.seq < seq:
                logger.error(
                    "the broker does not keep this bridge's retained canary (%s): its loss is not detected by "
                    "canary until the next connect; the session check and anti-entropy remain",
                    topics.bridge_canary(self.key),
                )  # fmt: skip
                with self._lock:
                    self._disabled, self._check_due = True, False
                return
            self._remember(found)
        with self._lock:
            self._verified, self._check_due = True, False
        self._next_check = time.monotonic() + self.check_seconds

    def _retry_soon(self) -> None:
        """Judge the broker again in RETRY_SECONDS (it did not answer, or not in time)."""
        with self._lock:
            self._check_due = False
        self._next_check = time.monotonic() + RETRY_SECONDS

    def _next_seq(self) -> int:  # under self._lock
        self._issued = max(time.time_ns(), self._issued + 1)
        return self._issued
