"""Several bridge processes on one box: `manage.py mqtt_bridge --processes N`.

One bridge is one Python process, bound by its GIL to about one core. N of them share the load as
several hosts' bridges do (README "Scaling out"): the same shared subscription group (`$share/<group>/...`,
so the broker splits the reports between them), each its own client id and persistent session, and
the delivery, rollout and account loops split their work through the database (SKIP LOCKED). This
module is only the supervisor: it starts the N children (`mqtt_bridge --processes 1` with their own
client id), restarts one that dies (after a pause, so a crash loop does not spin), passes SIGTERM and
SIGINT on, and waits for them. The children die with it, even when it is killed (Linux:
PR_SET_PDEATHSIG), so a SIGKILL of the supervisor leaves no bridge behind, and their sessions
resume when it comes back.

Client ids: the first child keeps the base id (MQTT_CLIENT_ID or --client-id), so a bridge that ran
alone and now runs as N resumes its own session; the others are `<base>-2` ... `<base>-N`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_GROUP = "iotcloud"
RESTART_PAUSE_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0
MANAGE = Path(__file__).resolve().parents[1] / "manage.py"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Child:
    index: int
    client_id: str

    def command(self, shared_group: str) -> list[str]:
        return [sys.executable, str(MANAGE), "mqtt_bridge", "--processes", "1", "--client-id", self.client_id,
                "--shared-group", shared_group]  # fmt: skip


def child_ids(base: str, count: int) -> list[Child]:
    return [Child(i, base if i == 1 else f"{base}-{i}") for i in range(1, count + 1)]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the children outlive a killed supervisor
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, count: int, *, client_id: str, shared_group: str):
        self.children = child_ids(client_id, count)
        self.shared_group = shared_group
        self.stopping = threading.Event()
        self.running: dict[int, subprocess.Popen] = {}

    def _start(self, child: Child) -> None:
        process = subprocess.Popen(child.command(self.shared_group), preexec_fn=_die_with_parent)  # noqa: S603
        self.running[child.index] = process
        logger.info("bridge process %d started pid=%d client_id=%s", child.index, process.pid, child.client_id)

    def run(self) -> int:
        logger.info("%d bridge processes, shared group %s", len(self.children), self.shared_group)
        for child in self.children:
            self._start(child)
        restart_at: dict[int, float] = {}
        while not self.stopping.is_set():
            for child in self.children:
                process = self.running.get(child.index)
                if process is not None and process.poll() is not None:
                    logger.warning("bridge process %d (pid %d) exited with %s; restarting in %.0f s",
                                   child.index, process.pid, process.returncode, RESTART_PAUSE_SECONDS)  # fmt: skip
                    del self.running[child.index]
                    restart_at[child.index] = time.monotonic() + RESTART_PAUSE_SECONDS
                if child.index in restart_at and time.monotonic() >= restart_at[child.index]:
                    del restart_at[child.index]
                    self._start(child)
            self.stopping.wait(0.2)
        return self._stop_all()

    def request_stop(self, signum, frame) -> None:
        self.stopping.set()

    def _stop_all(self) -> int:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.running.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("bridge process pid %d did not stop in %.0f s: killed", process.pid, STOP_GRACE_SECONDS)
                process.kill()
                process.wait()
        logger.info("bridge processes stopped")
        return 0


def default_processes(has_external_broker: bool) -> int:
    """The number of cores with an external broker (MQTT_URL); 1 with the embedded one (`make run`)."""
    return max(1, os.cpu_count() or 1) if has_external_broker else 1
