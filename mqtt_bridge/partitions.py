"""`manage.py mqtt_bridge --processes N`: one bridge receiving, N ingest worker processes writing.

One bridge is one Python process, bound by its GIL to about one core, and most of its work per report
is after the broker: JSON, validation, the engine, the database. So with N > 1 the bridge keeps one
MQTT session and everything else it does (delivery, sweep, rollout, recovery, accounts), and hands
each message it receives to one of N worker processes (`mqtt_bridge --ingest-worker`), chosen by the
device the topic names (topics.partition_key). A device's messages therefore always meet one worker,
in the order the broker delivered them, and are applied in that order: several bridges sharing a
subscription cannot promise that (the broker's round robin splits a device's reports between them).

Each worker runs the bridge's ingest loop (mqtt_bridge.ingest_loop: batch, commit, answer on its own
MQTT connection) and reports every committed batch back over its pipe; only then does the bridge
acknowledge those messages to the broker, in the order they arrived (MQTT 5 section 4.6), whichever
worker committed first (AckOrder). Nothing is acknowledged before its commit, so:
- a worker that dies is restarted (after RESTART_PAUSE_SECONDS) and sent again what it had not
  committed (the bridge keeps each QoS 1 message until its commit is reported);
- the bridge killed takes its workers with it (PR_SET_PDEATHSIG), and the broker redelivers every
  unacknowledged message to its persistent session when it is back;
- the workers ignore SIGTERM and SIGINT (a terminal's Ctrl-C or a service manager signals the whole
  group): the bridge stops them by closing their input, after which each finishes what it was sent;
- on a reconnect the broker redelivers what was not acknowledged, so the bookkeeping starts afresh.
A batch committed just before its worker died is applied again when it is sent again, as a report
committed just before a single bridge's crash is (the broker redelivers it): at least once, never lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from mqtt_bridge import topics
from mqtt_bridge.ingest import Incoming
from mqtt_bridge.ingest_loop import Counts

logger = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0
PIPE_BYTES = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size
MANAGE = Path(__file__).resolve().parents[1] / "manage.py"
PR_SET_PDEATHSIG = 1


def default_processes(has_external_broker: bool) -> int:
    """The number of cores with an external broker (MQTT_URL); 1 with the embedded one (`make run`)."""
    return max(1, os.cpu_count() or 1) if has_external_broker else 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux): a worker's uncommitted messages were never
    acknowledged, so nothing is lost. Elsewhere the closed pipe stops it (mqtt_bridge.ingest_worker)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def worker_of(topic: str, count: int) -> int:
    return zlib.crc32(topics.partition_key(topic).encode()) % count


class AckOrder:
    """Which QoS 1 messages may be acknowledged now: those committed with nothing uncommitted before them."""

    def __init__(self):
        self._order: deque[int] = deque()  # packet ids, as received
        self._committed: dict[int, bool] = {}  # outstanding packet id -> committed yet

    def received(self, mid: int) -> None:
        self._order.append(mid)
        self._committed[mid] = False

    def committed(self, mids: Sequence[int]) -> list[int]:
        """The packet ids to acknowledge now, in order. An id not outstanding is ignored: a copy from
        before a reconnect, whose redelivered twin is acknowledged when it is committed itself."""
        for mid in mids:
            if mid in self._committed:
                self._committed[mid] = True
        ready = []
        while self._order and self._committed.get(self._order[0]):
            mid = self._order.popleft()
            del self._committed[mid]
            ready.append(mid)
        return ready

    def reset(self) -> None:
        self._order.clear()
        self._committed.clear()

    def __len__(self) -> int:
        return len(self._order)


def encode_message(message: Incoming) -> bytes:
    return pickle.dumps((message.topic, message.payload, message.mid, message.qos, message.retained), protocol=5)


def decode_message(frame: bytes) -> Incoming:
    return Incoming(*pickle.loads(frame))  # noqa: S301 (our own child process, over its private pipe)


def encode_done(messages: Sequence[Incoming], counts: Counts, may_write: bool) -> bytes:
    acknowledged = [m.mid for m in messages if m.qos > 0]
    return pickle.dumps((acknowledged, counts, may_write), protocol=5)


def decode_done(frame: bytes) -> tuple[list[int], Counts, bool]:
    return pickle.loads(frame)  # noqa: S301 (our own child process, over its private pipe)


def _widen(fd: int) -> None:
    """A larger pipe (Linux: 64 KiB by default, about 300 reports), so a worker busy with a batch does not
    block the network thread, which must go on receiving and acknowledging for the other workers."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Worker:
    """One ingest worker process as the bridge sees it: its pipes and what it has not committed yet."""

    def __init__(self, index: int, client_id: str, protocol: int):
        self.index = index
        self.client_id = client_id
        self.protocol = protocol
        self.lock = threading.Lock()  # sending to it, and its unacknowledged messages
        self.unacked: dict[int, bytes] = {}  # packet id -> frame, QoS 1 messages sent and not committed
        self.process: subprocess.Popen | None = None
        self.to_worker: Connection | None = None
        self.from_worker: Connection | None = None

    def spawn(self) -> None:
        """Start the process (caller holds the lock) and send it again what it had not committed."""
        worker_reads, bridge_writes = os.pipe()
        bridge_reads, worker_writes = os.pipe()
        _widen(bridge_writes)
        command = [sys.executable, str(MANAGE), "mqtt_bridge", "--ingest-worker", "--worker-fds",
                   f"{worker_reads},{worker_writes}", "--client-id", self.client_id,
                   "--protocol", str(self.protocol)]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603
            command, pass_fds=(worker_reads, worker_writes), preexec_fn=die_with_parent
        )
        os.close(worker_reads)
        os.close(worker_writes)
        self.to_worker = Connection(bridge_writes, readable=False)
        self.from_worker = Connection(bridge_reads, writable=False)
        for frame in self.unacked.values():
            self.send(frame)
        logger.info("ingest worker %d started pid=%d resent=%d", self.index + 1, self.process.pid, len(self.unacked))

    def send(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # it died: its reader restarts it and sends them all again
            self.to_worker.send_bytes(frame)

    def close_input(self) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.to_worker.close()


class Partitions:
    """The bridge's N ingest workers: route() each received message, acknowledge() what they committed."""

    def __init__(
        self,
        count: int,
        *,
        client_id: str,
        protocol: int,
        acknowledge: Callable[[list[int]], None],
        counted: Callable[[Counts, bool], None],
        stopping: threading.Event,
    ):
        self.workers = [_Worker(i, f"{client_id}-ingest-{i + 1}", protocol) for i in range(count)]
        self._acknowledge = acknowledge
        self._counted = counted
        self.stopping = stopping
        self.order = AckOrder()
        self._order_lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            with worker.lock:
                worker.spawn()
            reader = threading.Thread(target=self._read, args=(worker,), name=f"bridge-worker-{worker.index + 1}",
                                      daemon=True)  # fmt: skip
            reader.start()
            self._readers.append(reader)

    def route(self, message: Incoming) -> None:
        """On the network thread: to the worker of the message's device."""
        worker = self.workers[worker_of(message.topic, len(self.workers))]
        frame = encode_message(message)
        if message.qos > 0:
            with self._order_lock:
                self.order.received(message.mid)
        with worker.lock:
            if message.qos > 0:
                worker.unacked[message.mid] = frame
            worker.send(frame)

    def reconnected(self) -> None:
        """A new connection: the broker sends again whatever was not acknowledged."""
        with self._order_lock:
            self.order.reset()
        for worker in self.workers:
            with worker.lock:
                worker.unacked.clear()

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                mids, counts, may_write = decode_done(worker.from_worker.recv_bytes())
            except (EOFError, OSError):
                if not self._restart(worker):
                    return
                continue
            with worker.lock:
                for mid in mids:
                    worker.unacked.pop(mid, None)
            with self._order_lock:  # acknowledged in order, so under the same lock as the order
                ready = self.order.committed(mids)
                if ready:
                    self._acknowledge(ready)
            self._counted(counts, may_write)

    def _restart(self, worker: _Worker) -> bool:
        """Its pipe closed: it exited. Start it again unless the bridge is stopping."""
        code = worker.process.wait()
        with contextlib.suppress(OSError):
            worker.from_worker.close()
        if self.stopping.is_set():
            return False
        logger.warning("ingest worker %d (pid %d) exited with %s; restarting in %.0f s",
                       worker.index + 1, worker.process.pid, code, RESTART_PAUSE_SECONDS)  # fmt: skip
        if self.stopping.wait(RESTART_PAUSE_SECONDS):
            return False
        with worker.lock:  # stop() closes inputs under this lock once stopping is set: never a late spawn
            if self.stopping.is_set():
                return False
            with contextlib.suppress(OSError):
                worker.to_worker.close()
            worker.spawn()
        return True

    def stop(self, timeout: float) -> None:
        """Let each worker finish what it was sent (its input closed), then wait for their last commits."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.close_input()
        for reader in self._readers:
            reader.join(max(0.1, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                logger.error("ingest worker %d did not stop in time: killed", worker.index + 1)
                worker.process.kill()
                worker.process.wait()
