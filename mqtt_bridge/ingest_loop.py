"""The ingest loop: batches from an inbox, each committed, then acknowledged and answered.

It runs as the bridge's ingest thread (one bridge process) or inside each ingest worker
(mqtt_bridge --processes N: mqtt_bridge.partitions). Either way: a batch is written in one
transaction (mqtt_bridge.ingest.ingest_batch); only after its commit are its messages handed to
`done` (the caller acknowledges them: a crash before the commit means the broker redelivers, never a
loss) and its answers, retained-copy clears and shadow events published on `publisher`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import DatabaseError, InterfaceError

from devices.audit import acting
from mqtt_bridge import topics
from mqtt_bridge.delivery import shadow_event_publications
from mqtt_bridge.ingest import (
    RETAINED,
    Incoming,
    ingest_batch,
    log_verdicts,
    rejection_replies,
    request_replies,
    retained_topics,
)
from twin.engine import leased_events, shadow_events_delete

logger = logging.getLogger(__name__)

READS = frozenset({topics.GET, topics.GET_PENDING, topics.DESCRIBE})


@dataclass(frozen=True)
class Counts:
    """What one committed batch added to the bridge's counters (bridge.stats)."""

    received: int
    accepted: int
    rate_limited: int
    retained: int
    events: int

    def add_to(self, stats: dict) -> None:
        stats["received"] += self.received
        stats["accepted"] += self.accepted
        stats["rejected"] += self.received - self.accepted
        stats["rate_limited"] += self.rate_limited
        stats["retained"] += self.retained
        stats["events"] += self.events


# done(messages, counts, may_write): after the commit; may_write: something to deliver may have changed
Done = Callable[[Sequence[Incoming], Counts, bool], None]


class IngestLoop:
    def __init__(
        self,
        *,
        publisher: Callable[[], mqtt.Client],
        done: Done,
        stopping: threading.Event,
        batch_max: int,
        batch_wait: float,
    ):
        self.publisher = publisher
        self.done = done
        self.stopping = stopping
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        # Shadow events of our own batches, published right after their commit: (event id, its
        # messages' infos, when) until the broker acknowledged them all, then their ids until they are
        # deleted (about once a second: one statement for all, off the batches' path).
        self._unconfirmed: list[tuple[int, list[mqtt.MQTTMessageInfo], float]] = []
        self._confirmed: list[int] = []
        self._forgotten_at = 0.0
        self._recycled_at = 0.0

    def run(self) -> None:
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

    def _next_batch(self) -> list[Incoming]:
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

    def _ingest(self, batch: Sequence[Incoming]) -> None:
        attempt = 0
        while True:
            self._recycle_connection()
            try:
                with leased_events(settings.MQTT_EVENT_LEASE_SECONDS) as events, acting("system", "mqtt"):
                    verdicts = ingest_batch(batch)
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
        client = self.publisher()
        for topic, payload in replies:
            client.publish(topic, payload, qos=1)
        for topic in retained_topics(verdicts):
            client.publish(topic, b"", qos=1, retain=True)  # clear the broker's copy
        published = self._publish_events(client, events)
        log_verdicts(verdicts)
        codes = [v.error.code for v in verdicts if v.error is not None]
        counts = Counts(
            received=len(batch), accepted=sum(v.accepted for v in verdicts), rate_limited=codes.count("rate_limited"),
            retained=codes.count(RETAINED), events=published,
        )  # fmt: skip
        # No NOTIFY on SQLite: a device's desired write or a job's lists to publish wake delivery this way.
        may_write = connection.vendor != "postgresql" and any(_may_write(v) for v in verdicts)
        self.done(batch, counts, may_write)

    def _recycle_connection(self) -> None:
        """close_old_connections (CONN_MAX_AGE, the health check) at most once a second, not per batch:
        the health check costs a round trip."""
        now = time.monotonic()
        if now - self._recycled_at >= 1:
            self._recycled_at = now
            close_old_connections()

    def _publish_events(self, client: mqtt.Client, events) -> int:
        """Our batch's shadow events, right behind its answers (leased to us: the delivery loop waits)."""
        now = time.monotonic()
        published = 0
        for event in events:
            infos = [client.publish(p.topic, p.payload, qos=1) for p in shadow_event_publications(event)]
            self._unconfirmed.append((event.pk, infos, now))
            published += len(infos)
        return published

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


def _may_write(verdict) -> bool:
    """Did this request possibly change something to publish? (Not a get, nor refused: no delivery pass.)"""
    if not verdict.replies or not verdict.accepted:
        return False
    request = topics.parse_request(verdict.message.topic)
    return request is None or request.operation not in READS


def incoming(message: mqtt.MQTTMessage) -> Incoming:
    """paho's message as the ingest loop takes it (a topic that is not UTF-8 stays visible, as its repr)."""
    try:
        topic = message.topic
    except UnicodeDecodeError:
        topic = repr(message._topic)
    return Incoming(topic, message.payload, message.mid, message.qos, bool(message.retain))
