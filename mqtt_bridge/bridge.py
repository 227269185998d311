"""The MQTT bridge daemon: desired delivery out, reported ingestion in.

Threads, each with its own database connection:
- paho's network loop (loop_start): receives reports into a queue;
- ingest: drains the queue in batches, writes each batch in one
  transaction, then acknowledges its messages (manual ack) in arrival order,
  so a crash before the commit means the broker redelivers, never a loss;
- deliver: publishes pending desired states and jobs-notify lists whenever
  woken (PostgreSQL NOTIFY, a (re)connect) or every MQTT_POLL_SECONDS;
- sweep: times out stuck job executions and closes expired jobs;
- rollout: releases executions of jobs with a rollout at their pace, aborts jobs past an abort
  criterion (jobs.release), every JOBS_ROLLOUT_TICK_SECONDS;
- heartbeat: upserts this bridge's bridge_heartbeats row (liveness, counters);
- recovery: judges the broker on every connect and periodically (its session, the retained
  canaries) and marks every device's retained state for republishing when the broker lost it;
  deliver also re-sends a slice of the fleet now and then (mqtt_bridge.recovery);
- listen (PostgreSQL only): LISTEN for desired changes and wake deliver;
- accounts (MQTT_DEVICE_AUTH=dynsec): keeps per-device broker accounts in step.
stop() lets the batch in flight finish, then disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import DatabaseError, InterfaceError

from devices.audit import acting, audit_prune
from iotcloud import outbox
from jobs.release import rollout_tick
from jobs.services import job_sweep, jobs_prune
from mqtt_bridge import topics
from mqtt_bridge.accounts.sync import AccountsLoop
from mqtt_bridge.client import V5, connect_async, detect_protocol, make_client
from mqtt_bridge.config import BrokerSettings, broker_settings
from mqtt_bridge.delivery import (
    Publication,
    desired_deliver_pending,
    jobs_deliver_pending,
    named_desired_deliver_pending,
    shadow_event_publications,
    shadow_events_deliver_pending,
)
from mqtt_bridge.heartbeat import Heartbeat
from mqtt_bridge.ingest import (
    RETAINED,
    Incoming,
    ingest_batch,
    log_verdicts,
    rejection_replies,
    request_replies,
    retained_topics,
)
from mqtt_bridge.listener import NotificationListener
from mqtt_bridge.recovery import Recovery
from twin.engine import leased_events, shadow_events_delete

logger = logging.getLogger(__name__)


class Bridge:
    def __init__(
        self,
        *,
        broker: BrokerSettings | None = None,
        client_id: str | None = None,
        shared_group: str | None = None,
        batch_max: int | None = None,
        batch_wait: float | None = None,
        poll_seconds: float | None = None,
    ):
        self.broker = broker or broker_settings()
        self.client_id = client_id or settings.MQTT_CLIENT_ID
        self.shared_group = settings.MQTT_SHARED_GROUP if shared_group is None else shared_group
        self.batch_max = batch_max or settings.MQTT_BATCH_MAX
        self.batch_wait = batch_wait if batch_wait is not None else settings.MQTT_BATCH_WAIT_MS / 1000
        self.poll_seconds = poll_seconds or settings.MQTT_POLL_SECONDS
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the reports subscription
        self.wake = threading.Event()
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.stats = {"received": 0, "accepted": 0, "rejected": 0, "published": 0, "events": 0,
                      "rate_limited": 0, "retained": 0}  # fmt: skip
        self._threads: list[threading.Thread] = []
        self._listener: NotificationListener | None = None
        self.client: mqtt.Client | None = None
        self.accounts: AccountsLoop | None = None  # per-device broker accounts (MQTT_DEVICE_AUTH=dynsec)
        self.recovery = Recovery(self)  # the broker's retained state back after it lost it
        # Shadow events of our own batches, published right after their commit (ingest thread only):
        # (event id, its messages' infos, when) until the broker acknowledged them all, then their ids
        # until they are deleted (about once a second: one statement for all, off the batches' path).
        self._unconfirmed: list[tuple[int, list[mqtt.MQTTMessageInfo], float]] = []
        self._confirmed: list[int] = []
        self._forgotten_at = 0.0
        self._recycled_at = 0.0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.protocol = detect_protocol(self.broker)
        self.client = make_client(
            self.broker, client_id=self.client_id, protocol=self.protocol, persistent=True, manual_ack=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # Messages are acknowledged once their batch is committed: let the broker send a full batch
        # while the previous one is written (MQTT 5; a 3.1.1 session gets the broker's in-flight limit).
        connect_async(
            self.client, self.broker, protocol=self.protocol, persistent=True, receive_maximum=2 * self.batch_max
        )
        self.client.loop_start()
        self._spawn("ingest", self._ingest_loop)
        self._spawn("deliver", self._deliver_loop)
        self._spawn("sweep", self._sweep_loop)
        self._spawn("rollout", self._rollout_loop)
        self._spawn("heartbeat", Heartbeat(self).run)  # bridge_heartbeats row for /readyz and /metrics
        self._spawn("recovery", self.recovery.run)
        if settings.MQTT_DEVICE_AUTH == "dynsec":
            self.accounts = AccountsLoop(
                self.broker, client_id=f"{self.client_id}-accounts", stopping=self.stopping,
                poll_seconds=self.poll_seconds,
            )  # fmt: skip
            self._spawn("accounts", self.accounts.run)
        if connection.vendor == "postgresql":
            self._listener = NotificationListener(
                outbox.DELIVERY_CHANNEL, on_notify=self._notified, stopping=self.stopping
            )
            self._spawn("listen", self._listener.run)
        logger.info(
            "bridge started broker=%s client_id=%s protocol=%s shared_group=%s",
            self.broker, self.client_id, "5" if self.protocol == V5 else "3.1.1", self.shared_group or "-",
        )  # fmt: skip

    def _notified(self) -> None:
        self.wake.set()
        if self.accounts is not None:
            self.accounts.wake.set()

    def stop(self, timeout: float = 30) -> None:
        """Finish the batch in flight, disconnect, close database connections."""
        self.stopping.set()
        self.wake.set()
        self.recovery.wake.set()
        if self.accounts is not None:
            self.accounts.wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
        close_old_connections()
        connection.close()
        logger.info("bridge stopped stats=%s", self.stats)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self.stopping.wait(1):
                pass
        finally:
            self.stop()

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=self._guard(name, target), name=f"bridge-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guard(self, name, target):
        def run():
            try:
                target()
            except Exception:
                # A thread dying silently would stall delivery or ingestion; stop
                # the whole bridge so the supervisor restarts it.
                logger.exception("bridge thread %s crashed; stopping", name)
                self.stopping.set()
            finally:
                connection.close()

        return run

    # --- paho callbacks (network thread) -------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.error("broker refused connection: %s", reason_code)
            return
        logger.info("connected to %s session_present=%s", self.broker, flags.session_present)
        # Subscribing here means every reconnect resubscribes: the seed's reports and the device
        # protocol's requests (MQTT_DIALECTS), in one SUBSCRIBE.
        filters = [topics.REPORTED_FILTER, *topics.request_filters(settings.MQTT_DIALECTS), topics.REGISTRATION_FILTER]
        if settings.MQTT_DEVICE_AUTH == "dynsec":  # claim certificates log in only where the broker has accounts
            filters.append(topics.CLAIM_REGISTRATION_FILTER)
        if self.shared_group and flags.session_present:
            # A session that ran unshared before (one bridge, now several: mqtt_bridge --processes) still
            # holds the plain subscriptions: it would get every report twice.
            client.unsubscribe(list(filters))
        filters = [topics.subscription(f, self.shared_group) for f in filters]
        if self.protocol == V5:
            # retainAsPublished: a device's message published with the retain flag shows it at once,
            # not only when the broker replays it after a reconnect (see ingest._refusal).
            options = mqtt.SubscribeOptions(qos=1, retainAsPublished=True)
            client.subscribe([(f, options) for f in filters])
        else:
            client.subscribe([(f, 1) for f in filters])
        self.recovery.connected(flags.session_present)  # before anything is published on this connection
        self.connected.set()
        self.wake.set()  # catch up on anything written while we were away

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(code.is_failure for code in reason_codes):
            logger.error("broker refused the reports subscription: %s", reason_codes)
            return
        logger.info("subscribed to reports and requests")
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        self.subscribed.clear()
        if not self.stopping.is_set():
            logger.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        self.inbox.put(message)

    # --- ingestion -----------------------------------------------------------------

    def _ingest_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                self._forget_published_events()
                if self.stopping.is_set():
                    return
                continue
            self._ingest(batch)
            if time.monotonic() - self._forgotten_at >= 1:
                self._forget_published_events()

    def _next_batch(self) -> list[mqtt.MQTTMessage]:
        """The first message (waiting up to 0.2 s for one), then whatever is queued behind it, up to
        batch_max, waiting up to batch_wait (MQTT_BATCH_WAIT_MS, 0 by default) for more. Without a wait
        a dry queue ends the batch at once: under load batches fill by themselves while the previous one
        is written, and at low load a wait would only delay every request."""
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _ingest(self, batch: Sequence[mqtt.MQTTMessage]) -> None:
        incoming = [Incoming(_topic(m), m.payload, m.mid, m.qos, bool(m.retain)) for m in batch]
        attempt = 0
        while True:
            self._recycle_connection()
            try:
                with leased_events(settings.MQTT_EVENT_LEASE_SECONDS) as events, acting("system", "mqtt"):
                    verdicts = ingest_batch(incoming)
                replies = rejection_replies(verdicts) + request_replies(verdicts)
                break
            except (DatabaseError, InterfaceError):
                # Nothing was committed and nothing acknowledged: retry; if we
                # stop instead, the broker redelivers to our persistent session.
                attempt += 1
                logger.exception("batch of %d failed (attempt %d); retrying", len(batch), attempt)
                connection.close()
                self._recycled_at = 0.0
                if self.stopping.wait(min(30, 0.5 * 2**attempt)):
                    return
        # Committed: now, and only now, acknowledge, in arrival order.
        for message in batch:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
        for topic, payload in replies:
            self.client.publish(topic, payload, qos=1)
        for topic in retained_topics(verdicts):
            self.client.publish(topic, b"", qos=1, retain=True)  # clear the broker's copy
        self._publish_events(events)
        if connection.vendor != "postgresql" and any(_may_write(v) for v in verdicts):
            self.wake.set()  # no NOTIFY on SQLite: a device's desired write or a job's lists to publish
        log_verdicts(verdicts)
        accepted = sum(v.accepted for v in verdicts)
        codes = [v.error.code for v in verdicts if v.error is not None]
        self.stats["received"] += len(batch)
        self.stats["accepted"] += accepted
        self.stats["rejected"] += len(batch) - accepted
        self.stats["rate_limited"] += codes.count("rate_limited")
        self.stats["retained"] += codes.count(RETAINED)

    def _recycle_connection(self) -> None:
        """close_old_connections (CONN_MAX_AGE, the health check) at most once a second, not per batch:
        the health check costs a round trip."""
        now = time.monotonic()
        if now - self._recycled_at >= 1:
            self._recycled_at = now
            close_old_connections()

    def _publish_events(self, events) -> None:
        """Our batch's shadow events, right behind its answers (leased to us: the delivery loop waits)."""
        now = time.monotonic()
        for event in events:
            infos = [self.client.publish(p.topic, p.payload, qos=1) for p in shadow_event_publications(event)]
            self._unconfirmed.append((event.pk, infos, now))
            self.stats["events"] += len(infos)

    def _collect_confirmed_events(self) -> None:
        """Move the events whose every message the broker acknowledged to _confirmed (to delete); give
        up on those it has not acknowledged within the lease: the delivery loop publishes them again."""
        lease = settings.MQTT_EVENT_LEASE_SECONDS
        now = time.monotonic()
        waiting = []
        for pk, infos, since in self._unconfirmed:
            try:
                published = all(info.is_published() for info in infos)
            except (RuntimeError, ValueError):  # never queued (no connection): the lease runs out
                continue
            if published:
                self._confirmed.append(pk)
            elif now - since < lease:
                waiting.append((pk, infos, since))
        self._unconfirmed = waiting

    def _forget_published_events(self) -> None:
        self._forgotten_at = time.monotonic()
        self._collect_confirmed_events()
        if not self._confirmed:
            return
        self._recycle_connection()
        try:
            shadow_events_delete(self._confirmed)
            self._confirmed = []
        except (DatabaseError, InterfaceError):
            logger.exception("could not delete %d published shadow events; retrying", len(self._confirmed))
            connection.close()

    # --- desired delivery ------------------------------------------------------

    def _deliver_loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.poll_seconds)
            self.wake.clear()
            if self.stopping.is_set():
                return
            if not self.connected.is_set():
                continue
            close_old_connections()
            try:
                # Each kind until it has nothing left; one found empty is not asked again in this pass
                # (what is written meanwhile wakes us again: NOTIFY, or the next poll).
                kinds = list(DELIVERIES)
                while kinds and not self.stopping.is_set() and self.connected.is_set():
                    kinds = [deliver for deliver in kinds if deliver(publish=self._publish_all)]
                if self.connected.is_set():
                    self.recovery.anti_entropy(publish=self._publish_all)
            except (DatabaseError, InterfaceError):
                logger.exception("desired delivery failed; retrying")
                connection.close()
                self.stopping.wait(1)

    def _sweep_loop(self) -> None:
        """Job timeouts and expiry; safe to run in every bridge at once (conditional updates). Hourly,
        the audit trail's retention too."""
        pruned_at = 0.0
        while not self.stopping.wait(settings.JOBS_SWEEP_SECONDS):
            close_old_connections()
            try:
                job_sweep()
                if time.monotonic() - pruned_at >= 3600:
                    pruned_at = time.monotonic()
                    audit_prune()
                    jobs_prune()
            except (DatabaseError, InterfaceError):
                logger.exception("job sweep failed; retrying")
                connection.close()

    def _rollout_loop(self) -> None:
        """Rollout pacing and abort criteria; safe in every bridge at once (each job under its row lock)."""
        while not self.stopping.wait(settings.JOBS_ROLLOUT_TICK_SECONDS):
            close_old_connections()
            try:
                rollout_tick()
            except (DatabaseError, InterfaceError):
                logger.exception("rollout tick failed; retrying")
                connection.close()

    def _publish_all(self, publications: Sequence[Publication]) -> list[Publication]:
        """Publish at QoS 1 (retained unless said otherwise); return those the broker acknowledged in time."""
        infos = [(p, self.client.publish(p.topic, p.payload, qos=1, retain=p.retain)) for p in publications]
        # The canary behind the batch: once acknowledged, a broker that lost the batch shows it (recovery.py).
        canary = self.recovery.batch_canary(publications)
        canary_info = self.client.publish(canary.topic, canary.payload, qos=1, retain=True) if canary else None
        deadline = time.monotonic() + settings.MQTT_PUBLISH_TIMEOUT_SECONDS
        acknowledged = []
        for publication, info in infos:
            # Not queued (not connected: the broker went away): counts as not acknowledged.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                if info.is_published():  # raises too when the publish failed
                    acknowledged.append(publication)
        if canary_info is not None and not self.recovery.batch_covered(canary, canary_info, deadline):
            acknowledged = []  # not covered by a canary: all stay pending
        if len(acknowledged) < len(publications):
            logger.warning(
                "broker acknowledged %d of %d desired publications; the rest stay pending",
                len(acknowledged), len(publications),
            )  # fmt: skip
            self._discard_unacknowledged()
        events = sum(1 for p in acknowledged if not p.retain)
        self.stats["events"] += events
        self.stats["published"] += len(acknowledged) - events
        return acknowledged

    def _discard_unacknowledged(self) -> None:
        # paho would resend these after a reconnect, possibly after another
        # bridge has published a newer version: drop them, the reconciliation
        # republishes the latest state instead.
        # Only the retained ones (desired, jobs lists, the canary): request answers and shadow events
        # stay queued, or a slow broker would cost devices their answers.
        client = self.client
        with client._out_message_mutex:  # paho internals, pinned version (see requirements.txt)
            stale = [mid for mid, message in client._out_messages.items() if message.retain]
            for mid in stale:
                message = client._out_messages.pop(mid)
                if message.state != mqtt.mqtt_ms_queued:  # it held an in-flight slot
                    client._inflight_messages = max(0, client._inflight_messages - 1)
            client._update_inflight()  # send what waited behind them


DELIVERIES = (desired_deliver_pending, jobs_deliver_pending, named_desired_deliver_pending,
              shadow_events_deliver_pending)  # fmt: skip
READS = frozenset({topics.GET, topics.GET_PENDING, topics.DESCRIBE})


def _may_write(verdict) -> bool:
    """Did this request possibly change something to publish? (Not a get, nor refused: no delivery pass.)"""
    if not verdict.replies or not verdict.accepted:
        return False
    request = topics.parse_request(verdict.message.topic)
    return request is None or request.operation not in READS


def _topic(message: mqtt.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        return repr(message._topic)
