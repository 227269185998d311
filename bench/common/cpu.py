"""CPU used during a measured phase, per group of processes (gunicorn, the bridge, PostgreSQL, ...), from /proc.

    with CpuMonitor(gunicorn=server.pids, postgres=postgres_pids(db.name)) as cpu:
        ...                                  # the measured work
    cpu.usage  # {"wall_s", "cpu_s": {group: s}, "pct": {group: %, "other": %}, "machine": {...}, "noisy"}

Percentages are of one core (200 = two cores busy). Each group is a function returning its
pids, asked at the start, at the end and every `rescan_s` seconds (0: start and end only);
the known processes are read every second in between (a few files: the monitor must not
steal time from what it measures, e.g. a subscriber stamping arrivals). A process that
starts during the phase counts from zero, one that ends counts up to its last reading.
CPU measured another way (a child's rusage, a worker's own process_time) is added with
`cpu.add(group, seconds)`. "other" is whatever else kept the machine busy (other jobs,
kernel threads): above 15 % the phase is flagged `noisy`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NOISY_OTHER_PCT = 15.0


def proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds of all its threads) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return raw[raw.index("(") + 1 : raw.rindex(")")], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []


def children_of(ppid: int) -> list[int]:
    return sorted(pid for pid in all_pids() if (st := proc_stat(pid)) and st[1] == ppid)


def machine_ticks() -> dict[str, int]:
    """Machine-wide CPU clock ticks from /proc/stat: busy, idle, iowait, steal."""
    try:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
        )
    except (OSError, ValueError, IndexError):
        return {}
    return {"busy": user + nice + system + irq + softirq, "idle": idle, "iowait": iowait, "steal": steal}


def machine_busy_pct(seconds: float = 1.0) -> float | None:
    """How busy the whole machine is over `seconds` (% of one core), e.g. to warn before a full run."""
    before = machine_ticks()
    time.sleep(seconds)
    after = machine_ticks()
    if not before or not after:
        return None
    return round(100 * (after["busy"] + after["steal"] - before["busy"] - before["steal"]) / CLK_TCK / seconds, 1)


# A backend's title: "postgres: [<cluster>: ]<user> <database> <host>(<port>)|[local] <state>".
_BACKEND_TITLE = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\]) ")


def postgres_pids(dbname: str) -> Callable[[], list[int]]:
    """PostgreSQL's processes working for `dbname`: its backends and the shared background processes
    (checkpointer, WAL writer, ...); other databases' backends count as "other"."""

    def pids() -> list[int]:
        out = []
        for pid in all_pids():
            st = proc_stat(pid)
            if st is None or st[0] != "postgres":
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            m = _BACKEND_TITLE.match(title)
            if m is None or m.group(1) == dbname:
                out.append(pid)
        return out

    return pids


class CpuMonitor:
    INTERVAL = 1.0

    def __init__(self, rescan_s: float = 5.0, **groups: Callable[[], Iterable[int]]):
        self.groups, self.rescan_s = groups, rescan_s
        self.known: dict[str, set[int]] = {}
        self.extra: dict[str, float] = {}
        self.usage: dict = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.first: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict[int, float]] = {}

    def _sample(self, rescan: bool = True) -> dict[str, dict[int, float]]:
        if rescan:
            self.known = {name: set(pids()) for name, pids in self.groups.items()}
        return {name: {pid: st[2] for pid in pids if (st := proc_stat(pid))} for name, pids in self.known.items()}

    def _update(self, sample: dict[str, dict[int, float]]) -> None:
        with self._lock:
            for name, procs in sample.items():
                for pid, seconds in procs.items():
                    self.last[name][pid] = seconds
                    self.first[name].setdefault(pid, 0.0)  # started during the phase: all its time counts

    def _loop(self) -> None:
        scanned = time.monotonic()
        while not self._stop.wait(self.INTERVAL):
            rescan = bool(self.rescan_s) and time.monotonic() - scanned >= self.rescan_s
            self._update(self._sample(rescan))
            scanned = time.monotonic() if rescan else scanned

    def add(self, group: str, seconds: float) -> None:
        self.extra[group] = self.extra.get(group, 0.0) + seconds

    def __enter__(self) -> CpuMonitor:
        self.machine0 = machine_ticks()
        self.first = self._sample()
        self.last = {name: dict(procs) for name, procs in self.first.items()}
        self.wall0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="cpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.wall0
        self._stop.set()
        self._thread.join()
        self._update(self._sample())
        machine1 = machine_ticks()
        cpu_s = {
            name: sum(t - self.first[name].get(pid, 0.0) for pid, t in self.last[name].items()) for name in self.groups
        }
        for name, seconds in self.extra.items():
            cpu_s[name] = cpu_s.get(name, 0.0) + seconds
        pct = {name: round(100 * s / wall, 1) for name, s in cpu_s.items()}
        usage = {"wall_s": round(wall, 3), "capacity_pct": 100 * (os.cpu_count() or 1)}
        if self.machine0 and machine1:
            machine = {k: round(100 * (machine1[k] - self.machine0[k]) / CLK_TCK / wall, 1) for k in machine1}
            usage["machine"] = {f"{k}_pct": v for k, v in machine.items()}
            pct["other"] = round(max(0.0, machine["busy"] - sum(pct.values())), 1)
        usage["cpu_s"] = {name: round(s, 2) for name, s in cpu_s.items()}
        usage["pct"] = pct
        usage["noisy"] = (
            pct.get("other", 0) > NOISY_OTHER_PCT or usage.get("machine", {}).get("steal_pct", 0) > NOISY_OTHER_PCT
        )
        self.usage = usage


def summary(usage: dict) -> str:
    """One line: 'gunicorn 160%  postgres 30%  wrk 8%  other 2%  idle 0%' (of one core)."""
    parts = [f"{name} {value:.0f}%" for name, value in usage.get("pct", {}).items()]
    machine = usage.get("machine", {})
    if machine:
        parts.append(f"idle {machine.get('idle_pct', 0) + machine.get('iowait_pct', 0):.0f}%")
    return "  ".join(parts) + ("  ~ not quiet" if usage.get("noisy") else "")
