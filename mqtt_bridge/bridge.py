"""The MQTT bridge daemon: desired delivery out, reported ingestion in.

Threads, each with its own database connection:
- paho's network loop (loop_start): receives reports into the ingest loop's queue, or with
  `processes` > 1 hands each to the ingest worker process of its device (mqtt_bridge.partitions);
- ingest (mqtt_bridge.ingest_loop): drains the queue in batches, writes each batch in one
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
import threading
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import DatabaseError, InterfaceError

from devices.audit import audit_prune
from devices.services import operator_tokens_prune
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
    shadow_events_deliver_pending,
)
from mqtt_bridge.heartbeat import Heartbeat
from mqtt_bridge.ingest import Incoming
from mqtt_bridge.ingest_loop import Counts, IngestLoop, incoming
from mqtt_bridge.listener import NotificationListener
from mqtt_bridge.partitions import Partitions
from mqtt_bridge.recovery import Recovery

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
        processes: int = 1,
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
        self.processes = processes  # 1: ingest in this process; N > 1: N ingest workers (mqtt_bridge.partitions)
        self.ingest: IngestLoop | None = None
        self.partitions: Partitions | None = None
        self._stats_lock = threading.Lock()
        self.stats = {"received": 0, "accepted": 0, "rejected": 0, "published": 0, "events": 0,
                      "rate_limited": 0, "retained": 0}  # fmt: skip
        self._threads: list[threading.Thread] = []
        self._listener: NotificationListener | None = None
        self.client: mqtt.Client | None = None
        self.accounts: AccountsLoop | None = None  # per-device broker accounts (MQTT_DEVICE_AUTH=dynsec)
        self.recovery = Recovery(self)  # the broker's retained state back after it lost it

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
        if self.processes > 1:
            self.partitions = Partitions(
                self.processes, client_id=self.client_id, protocol=self.protocol, acknowledge=self._acknowledge,
                counted=self._counted, stopping=self.stopping,
            )  # fmt: skip
            self.partitions.start()
        else:
            self.ingest = IngestLoop(
                publisher=lambda: self.client, done=self._batch_done, stopping=self.stopping,
                batch_max=self.batch_max, batch_wait=self.batch_wait,
            )  # fmt: skip
        # Messages are acknowledged once their batch is committed: let the broker send a full batch
        # while the previous one is written (MQTT 5; a 3.1.1 session gets the broker's in-flight limit).
        connect_async(
            self.client, self.broker, protocol=self.protocol, persistent=True, receive_maximum=2 * self.batch_max
        )
        self.client.loop_start()
        if self.ingest is not None:
            self._spawn("ingest", self.ingest.run)
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
            "bridge started broker=%s client_id=%s protocol=%s shared_group=%s ingest_processes=%d",
            self.broker, self.client_id, "5" if self.protocol == V5 else "3.1.1", self.shared_group or "-",
            self.processes,
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
        if self.partitions is not None:  # their last commits acknowledged before we disconnect
            self.partitions.stop(max(0.1, deadline - time.monotonic()))
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
            # A session that ran unshared before (one bridge, now several hosts in a shared group) still
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
        if self.partitions is not None:
            self.partitions.reconnected()  # the broker sends again what we had not acknowledged
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
        if self.partitions is not None:
            self.partitions.route(incoming(message))
        else:
            self.ingest.inbox.put(incoming(message))

    # --- ingestion -----------------------------------------------------------------

    def _batch_done(self, messages: Sequence[Incoming], counts: Counts, may_write: bool) -> None:
        """The in-process ingest loop committed a batch: acknowledge it, in arrival order."""
        for message in messages:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
        self._counted(counts, may_write)

    def _acknowledge(self, mids: list[int]) -> None:
        for mid in mids:
            self.client.ack(mid, 1)

    def _counted(self, counts: Counts, may_write: bool) -> None:
        with self._stats_lock:
            counts.add_to(self.stats)
        if may_write:
            self.wake.set()

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
        the audit trail's retention too, and expired operator tokens."""
        pruned_at = 0.0
        while not self.stopping.wait(settings.JOBS_SWEEP_SECONDS):
            close_old_connections()
            try:
                job_sweep()
                if time.monotonic() - pruned_at >= 3600:
                    pruned_at = time.monotonic()
                    audit_prune()
                    jobs_prune()
                    operator_tokens_prune()
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
