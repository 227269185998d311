"""Shadow round trips over MQTT: update -> update/accepted, get -> get/accepted, operator write -> update/delta.

    .venv/bin/python bench/mqtt_shadow_rtt/run.py [--rate 1000] [--seconds 30] [--devices 1000] [--processes 2]

Devices are paho clients (MQTT 3.1.1, one connection each, QoS 1 both ways) in --processes
load processes, each driving its share of the devices from one event loop (epoll). Together
they send shadow requests on the native topics at a fixed total --rate (open loop: request k
leaves at its scheduled time whatever the answers do), round-robin over the devices, a
--get-share of them gets ({"clientToken"}), the rest partial reports
({"state": {"reported": {...}}, "clientToken"}); each process stamps its own sends and the
answers (clientToken matched). Meanwhile an operator process writes desired state through
twin.services.twin_update_desired at --operator-rate over random devices, stamping each
commit; the device stamps the update/delta it gets. Everything runs against PostgreSQL, the
real bridge (`manage.py mqtt_bridge`) and a private Mosquitto configured from
mqtt_bridge/mosquitto.conf. The first --warmup seconds are sent but not measured.
Reported: the request and answer rates achieved, p50/p90/p99/max per kind, how late the
load was on its own schedule, rejected and unanswered requests, deltas missing, CPU per
process group. Goal: round-trip p99 <= 20 ms at 1,000 requests/s, every request answered.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import queue
import random
import selectors
import socket
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt

from bench.common import BenchError, app, cli, cpu, log, seed, servers
from bench.common.report import percentile, table

GOAL_P99_MS = 20.0
GOAL_RATE = 1000.0
TENANT = "bench"
KINDS = ("update", "get")
DELTAS_QUIET_S = 2.0


def options(p):
    p.add_argument("--rate", type=float, default=GOAL_RATE, help="shadow requests per second, all devices together")
    p.add_argument("--seconds", type=float, default=30, help="measured seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=3, help="seconds sent at --rate before measuring")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2, help="load processes (the devices split between them)")
    p.add_argument("--get-share", type=float, default=0.5, help="share of the requests that are gets")
    p.add_argument("--operator-rate", type=float, default=20, help="operator desired writes per second")
    p.add_argument("--drain", type=float, default=30, help="seconds to wait at most for the last answers and deltas")
    p.add_argument(
        "--rate-limit", default="", help="MQTT_REPORT_RATE_LIMIT of the bridge (default: the setting's, 20/s)"
    )
    p.add_argument("--batch-wait-ms", type=int, help="MQTT_BATCH_WAIT_MS of the bridge (default: the setting's)")
    p.add_argument(
        "--broker-config", choices=["project", "bench"], default="project",
        help="Mosquitto from mqtt_bridge/mosquitto.conf (default), or bench/common's MOSQUITTO_CONF "
        "(unlimited in-flight messages, as bench/mqtt_ingest uses)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1)


def check(p, args) -> None:
    if args.processes < 1 or args.devices < args.processes:
        p.error("--processes must be between 1 and --devices")
    if not 0 <= args.get_share <= 1:
        p.error("--get-share is between 0 and 1")


def check_rate_limit(args) -> None:
    """Requests count against the per-device MQTT rate limit: refuse a load that would hit it."""
    from django.conf import settings

    from devices.throttling import parse_rate

    limit = parse_rate(args.rate_limit or settings.MQTT_REPORT_RATE_LIMIT, name="--rate-limit")
    per_device = args.rate / args.devices
    if limit is not None and per_device > 0.5 * limit.requests / limit.period_seconds:
        raise BenchError(
            f"{per_device:g} requests/s per device is too close to MQTT_REPORT_RATE_LIMIT {limit.text}: "
            "use more --devices (or a higher --rate-limit, which the output then shows)"
        )


# --- the devices (load processes) ----------------------------------------------------------------


def _topic(device_id: str, suffix: str) -> str:
    return f"tenant/{TENANT}/device/{device_id}/shadow/{suffix}"


ANSWERS = ("update/accepted", "update/rejected", "get/accepted", "get/rejected", "update/delta")


class Devices:
    """One load process: its devices' paho clients on one epoll loop, the requests it sent and their answers."""

    def __init__(self, index: int, port: int, device_ids: list[str], args):
        self.index, self.port, self.device_ids, self.args = index, port, device_ids, args
        self.selector = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.connected = self.subscribed = 0
        self.pending: dict[str, tuple[str, float, bool]] = {}  # clientToken -> (kind, sent at, measured)
        self.latency: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.rejected: Counter = Counter()
        self.unexpected = 0  # answers to no request of ours (duplicates)
        self.deltas: list[tuple[str, int, float]] = []  # (device_id, operator write number, arrival)
        self.writing: set[mqtt.Client] = set()
        self.last_delta = 0.0
        self.answered_span = (0.0, 0.0)  # first and last accepted answer to a measured request

    # paho callbacks (in loop_read, this process's only thread)
    def on_connect(self, client, device_id, flags, reason_code, properties):
        if reason_code.is_failure:
            raise BenchError(f"device {device_id} refused: {reason_code}")
        self.connected += 1

    def on_subscribe(self, client, device_id, mid, reason_codes, properties):
        if any(code.is_failure for code in reason_codes):
            raise BenchError(f"device {device_id}: subscription refused {reason_codes}")
        self.subscribed += 1

    def on_message(self, client, device_id, message):
        now = time.perf_counter()
        body = json.loads(message.payload)
        kind, outcome = message.topic.rsplit("/", 2)[-2:]
        if outcome == "delta":
            self.deltas.append((device_id, body["state"].get("op", -1), now))
            self.last_delta = now
            return
        sent = self.pending.pop(body.get("clientToken"), None)
        if sent is None:
            self.unexpected += 1
        elif outcome == "rejected":
            self.rejected[f"{kind}: {body.get('code')}"] += 1
        elif sent[2]:
            self.latency[kind].append((now - sent[1]) * 1000)
            self.answered_span = (self.answered_span[0] or now, now)

    def setup(self) -> None:
        for device_id in self.device_ids:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"rtt-{device_id}", protocol=mqtt.MQTTv311,
                userdata=device_id,
            )  # fmt: skip
            client.on_connect, client.on_subscribe, client.on_message = (
                self.on_connect, self.on_subscribe, self.on_message
            )  # fmt: skip
            client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.max_inflight_messages_set(0)
            client.connect("127.0.0.1", self.port, keepalive=60)
            self.selector.register(client.socket(), selectors.EVENT_READ, client)
            self.clients.append(client)
        self._wait(lambda: self.connected == len(self.clients), "connect")
        for client, device_id in zip(self.clients, self.device_ids, strict=True):
            client.subscribe([(_topic(device_id, suffix), 1) for suffix in ANSWERS])
            self._flush(client)
        self._wait(lambda: self.subscribed == len(self.clients), "subscribe")

    def _wait(self, done, what: str, timeout: float = 60) -> None:
        deadline = time.perf_counter() + timeout
        while not done():
            if time.perf_counter() > deadline:
                raise BenchError(f"load process {self.index}: devices did not {what} within {timeout:g} s")
            self.poll(0.05)

    def _flush(self, client) -> None:
        """paho writes at once when it can; what the socket did not take waits for EVENT_WRITE."""
        wants = client.want_write()
        if wants != (client in self.writing):
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            self.selector.modify(client.socket(), events, client)
            (self.writing.add if wants else self.writing.discard)(client)

    def poll(self, timeout: float) -> None:
        for key, mask in self.selector.select(max(0.0, timeout)):
            client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()
            self._flush(client)

    def run(self, t0: float) -> dict:
        """Send on schedule from t0 (perf_counter), then wait for the last answers."""
        args = self.args
        rng = random.Random(args.seed * 1000 + self.index)
        interval = args.processes / args.rate  # this process's share of the rate
        offset = t0 + self.index / args.rate  # the processes interleave
        measured_from, end = t0 + args.warmup, t0 + args.warmup + args.seconds
        sent = Counter()
        lateness: list[float] = []
        first = last = None
        k, last_misc = 0, time.perf_counter()
        while (scheduled := offset + k * interval) < end:
            now = time.perf_counter()
            if scheduled > now:
                self.poll(scheduled - now)
                continue
            client = self.clients[k % len(self.clients)]
            device_id = self.device_ids[k % len(self.clients)]
            kind = "get" if rng.random() < args.get_share else "update"
            token = f"{self.index}.{k}"
            if kind == "get":
                payload = json.dumps({"clientToken": token})
            else:
                reported = {"seq": k, "temperature_c": round(20 + rng.random() * 5, 2), "rssi": -rng.randrange(40, 90)}
                payload = json.dumps({"state": {"reported": reported}, "clientToken": token})
            measured = scheduled >= measured_from
            at = time.perf_counter()
            self.pending[token] = (kind, at, measured)
            client.publish(_topic(device_id, kind), payload, qos=1)
            self._flush(client)
            if measured:
                sent[kind] += 1
                lateness.append((at - scheduled) * 1000)
                first = first if first is not None else at
                last = at
            k += 1
            if at - last_misc > 1:  # keepalive pings
                for c in self.clients:
                    c.loop_misc()
                last_misc = at
        # The last answers, then the deltas still on their way (until none came for DELTAS_QUIET_S).
        drain_until = time.perf_counter() + args.drain
        while time.perf_counter() < drain_until and (
            self.pending or time.perf_counter() - max(self.last_delta, end) < DELTAS_QUIET_S
        ):
            self.poll(0.05)
        unanswered = Counter(kind for kind, _, _ in self.pending.values())
        unanswered_measured = Counter(kind for kind, _, measured in self.pending.values() if measured)
        for client in self.clients:
            client.disconnect()
        return {
            "index": self.index,
            "devices": len(self.clients),
            "sent_total": k,
            "sent": dict(sent),
            "first_send": first,
            "last_send": last,
            "answered_span": self.answered_span,
            "latency_ms": self.latency,
            "lateness_ms": lateness,
            "rejected": dict(self.rejected),
            "unanswered": dict(unanswered),
            "unanswered_measured": dict(unanswered_measured),
            "unexpected": self.unexpected,
            "deltas": self.deltas,
            "cpu_s": time.process_time(),
        }


def load_process(index, port, device_ids, args, ready, start, t0, results) -> None:
    try:
        devices = Devices(index, port, device_ids, args)
        devices.setup()
    except Exception:
        ready.put(f"load process {index} failed:\n{traceback.format_exc()}")
        return
    ready.put(None)
    # No collector pauses in the measuring loop: what it allocates is freed by reference counting.
    gc.collect()
    gc.freeze()
    gc.disable()
    start.wait()
    try:
        results.put(devices.run(t0.value))
    except Exception:
        results.put({"error": f"load process {index} failed:\n{traceback.format_exc()}"})


# --- the operator -------------------------------------------------------------------------------


def operator_process(args, ready, start, t0, results) -> None:
    """Desired writes at --operator-rate over random devices during the measured seconds; the commit stamped."""
    from django.db import transaction

    from devices.models import Device
    from twin.services import twin_update_desired

    try:
        devices = list(Device.objects.filter(tenant_id=TENANT).order_by("device_id"))  # also opens the connection
    except Exception:
        ready.put(f"the operator process failed:\n{traceback.format_exc()}")
        return
    ready.put(None)
    start.wait()
    rng = random.Random(args.seed)
    begin, end = t0.value + args.warmup, t0.value + args.warmup + args.seconds
    writes, n, behind = [], 0, 0
    while args.operator_rate > 0 and (scheduled := begin + n / args.operator_rate) < end:
        if (pause := scheduled - time.perf_counter()) > 0:
            time.sleep(pause)
        elif pause < -0.005:
            behind += 1
        device = rng.choice(devices)
        try:
            with transaction.atomic():
                twin_update_desired(device=device, document={"op": n})
        except Exception:
            results.put({"error": f"the operator process failed:\n{traceback.format_exc()}"})
            return
        writes.append((device.device_id, n, time.perf_counter()))  # the commit returned
        n += 1
    results.put({"operator": True, "writes": writes, "behind": behind, "cpu_s": time.process_time()})


# --- the run ------------------------------------------------------------------------------------


def wait_subscribed(bridge: servers.Bridge, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any("subscribed to reports" in m for m in servers.log_messages(bridge.log_text())):
        bridge.check_alive("before subscribing")
        if time.monotonic() > deadline:
            raise BenchError(f"the bridge did not subscribe within {timeout:g} s:\n{bridge.log_tail()}")
        time.sleep(0.05)


def stats(values: list[float]) -> dict:
    return {
        "count": len(values),
        **{f"p{p}": round(percentile(values, p), 3) for p in (50, 90, 99)},
        "max": round(max(values), 3) if values else float("nan"),
    }


def bench(args, run) -> int:
    db = run.database()
    app.setup_django(run.database_url)
    check_rate_limit(args)
    device_ids = [d.device_id for d in seed.devices(args.devices, tenant_id=TENANT)[1]]
    app.close_connections()  # the load and operator processes fork: no shared database socket

    bridge_env = {}
    if args.rate_limit:
        bridge_env["MQTT_REPORT_RATE_LIMIT"] = args.rate_limit
    if args.batch_wait_ms is not None:
        bridge_env["MQTT_BATCH_WAIT_MS"] = str(args.batch_wait_ms)
    broker = run.start(servers.Mosquitto(servers.project_conf if args.broker_config == "project" else None))
    bridge = run.start(servers.Bridge(run.env(**bridge_env), broker.url))
    wait_subscribed(bridge)

    ctx = mp.get_context("fork")
    ready, results, start, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    shares = [device_ids[n :: args.processes] for n in range(args.processes)]
    workers = [
        ctx.Process(target=load_process, args=(n, broker.port, share, args, ready, start, t0, results), daemon=True)
        for n, share in enumerate(shares)
    ]
    workers.append(ctx.Process(target=operator_process, args=(args, ready, start, t0, results), daemon=True))
    for w in workers:
        w.start()
    run.stack.callback(lambda: [w.kill() for w in workers if w.is_alive()])
    log(f"{args.devices:,} devices connecting from {args.processes} load processes")
    for _ in workers:
        if (failure := ready.get(timeout=120)) is not None:
            raise BenchError(failure)

    groups = {
        "bridge": bridge.pids,
        "mosquitto": broker.pids,
        "postgres": cpu.postgres_pids(db.name),
        "load": lambda: [w.pid for w in workers[:-1]],
        "operator": lambda: [workers[-1].pid],
        "bench": lambda: [os.getpid()],
    }
    log(
        f"{args.rate:g} requests/s ({args.get_share:.0%} gets) for {args.warmup:g} + {args.seconds:g} s, "
        f"{args.operator_rate:g} operator writes/s"
    )
    t0.value = time.perf_counter() + 0.5
    start.set()
    time.sleep(max(0.0, t0.value + args.warmup - time.perf_counter()))
    with cpu.CpuMonitor(rescan_s=0, **groups) as usage:  # no /proc scans while the devices stamp
        time.sleep(max(0.0, t0.value + args.warmup + args.seconds - time.perf_counter()))
    outcomes = []
    deadline = time.monotonic() + args.drain + 120
    while len(outcomes) < len(workers):
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            if time.monotonic() > deadline or sum(w.exitcode not in (None, 0) for w in workers):
                raise BenchError("a load or operator process died without its results") from None
            continue
        if "error" in outcomes[-1]:
            raise BenchError(outcomes[-1]["error"])
    for w in workers:
        w.join(10)
    bridge_stats = bridge.stop()
    bridge_warnings = warnings(bridge.log_text())
    versions = db.query("SELECT coalesce(sum(shadow_version), 0) FROM device_state")[0][0]
    return summarize(args, run, db, usage.usage, outcomes, bridge_stats, bridge_warnings, int(versions))


def warnings(log_text: str) -> list[str]:
    """The bridge's log records at WARNING and above (JSON logs: level and message)."""
    out = []
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            out.append(f"{record['level']} {record.get('logger')}: {record.get('message')}"[:500])
    return out


def summarize(args, run, db, usage, outcomes, bridge_stats, bridge_warnings, versions) -> int:
    operator = next(o for o in outcomes if o.get("operator"))
    loads = sorted((o for o in outcomes if not o.get("operator")), key=lambda o: o["index"])
    latency = {kind: [v for o in loads for v in o["latency_ms"][kind]] for kind in KINDS}
    both = latency["update"] + latency["get"]
    sent = Counter()
    for o in loads:
        sent.update(o["sent"])
    sent_total = sum(o["sent_total"] for o in loads)
    rejected, unanswered, unanswered_measured = Counter(), Counter(), Counter()
    for o in loads:
        rejected.update(o["rejected"])
        unanswered.update(o["unanswered"])
        unanswered_measured.update(o["unanswered_measured"])
    window = max(o["last_send"] for o in loads) - min(o["first_send"] for o in loads)
    achieved = sum(sent.values()) / window if window > 0 else 0.0
    answered_from = min(o["answered_span"][0] for o in loads if o["answered_span"][0]) if both else 0.0
    answered_to = max(o["answered_span"][1] for o in loads) if both else 0.0
    answered_rate = len(both) / (answered_to - answered_from) if answered_to > answered_from else 0.0
    lateness = [v for o in loads for v in o["lateness_ms"]]

    arrivals: dict[tuple[str, int], float] = {}
    for o in loads:
        for device_id, op, at in o["deltas"]:
            arrivals.setdefault((device_id, op), at)
    writes = operator["writes"]
    delta_ms = [(arrivals[(d, n)] - at) * 1000 for d, n, at in writes if (d, n) in arrivals]
    deltas_missing = len(writes) - len(delta_ms)
    write_rate = len(writes) / args.seconds

    report = run.report(config={**{k: v for k, v in vars(args).items() if k != "output"}, **db.info})
    limit = args.rate_limit or "the default (20/s)"
    print(
        f"\nShadow round trips: {args.devices:,} devices in {args.processes} load processes, "
        f"{args.rate:g} requests/s aimed at ({args.get_share:.0%} gets) for {args.seconds:g} s after a "
        f"{args.warmup:g} s warm-up; {args.operator_rate:g} operator writes/s; bridge MQTT_REPORT_RATE_LIMIT "
        f"{limit}{f', MQTT_BATCH_WAIT_MS {args.batch_wait_ms}' if args.batch_wait_ms is not None else ''}\n"
    )
    rows = []
    for name, values, count, missing in (
        ("update -> update/accepted", latency["update"], sent["update"], unanswered_measured["update"]),
        ("get -> get/accepted", latency["get"], sent["get"], unanswered_measured["get"]),
        ("both", both, sent["update"] + sent["get"], sum(unanswered_measured.values())),
        ("operator write -> update/delta", delta_ms, len(writes), deltas_missing),
    ):
        s = stats(values)
        rows.append([name, count, s["count"], missing, *(f"{s[k]:.2f}" for k in ("p50", "p90", "p99", "max"))])
    print(table(["round trip", "sent", "answered", "unanswered", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    late = stats(lateness)
    print(
        f"\nrequests/s achieved {achieved:,.1f} (aimed at {args.rate:g}), accepted answers/s {answered_rate:,.1f}; "
        f"the load's own lateness on its schedule p99 {late['p99']:.2f} ms, max {late['max']:.2f} ms"
    )
    print(f"rejected: {dict(rejected) or 0}; unanswered over the whole run (warm-up included): "
          f"{sum(unanswered.values())}; answers to no request: {sum(o['unexpected'] for o in loads)}")  # fmt: skip
    print(f"bridge: {bridge_stats}; {len(bridge_warnings)} warning(s) logged")
    for line in bridge_warnings[:5]:
        print(f"  {line[:200]}")
    print(f"CPU (% of one core): {cpu.summary(usage)}")

    report.rate("shadow requests", achieved=round(achieved, 1), target=args.rate, unit="req/s",
                note=f"sent on schedule, load lateness p99 {late['p99']:.1f} ms")  # fmt: skip
    report.rate("accepted answers", achieved=round(answered_rate, 1), unit="answers/s",
                note=f"{len(both):,} over {answered_to - answered_from:.1f} s, first to last")  # fmt: skip
    report.rate("operator desired writes", achieved=round(write_rate, 1), target=args.operator_rate, unit="writes/s",
                note=f"behind schedule at {operator['behind']} of {len(writes)}")  # fmt: skip
    p99 = percentile(both, 99)
    report.goal("round trip p99 (update and get)", achieved=round(p99, 2), target=GOAL_P99_MS, unit="ms",
                met=p99 <= GOAL_P99_MS)  # fmt: skip
    report.goal("requests/s achieved", achieved=round(achieved, 1), target=GOAL_RATE, unit="req/s",
                met=achieved >= 0.99 * GOAL_RATE, relation=">=")  # fmt: skip
    if sum(unanswered.values()):
        report.problem(f"{sum(unanswered.values())} requests unanswered: {dict(unanswered)}")
    if rejected:
        report.problem(f"{sum(rejected.values())} requests rejected: {dict(rejected)}")
    if deltas_missing:
        report.problem(f"{deltas_missing} of {len(writes)} operator writes never reached the device as a delta")
    if bridge_stats.get("received") != sent_total:
        report.problem(f"the bridge received {bridge_stats.get('received')} of {sent_total} requests")
    accepted_updates = sum(len(o["latency_ms"]["update"]) for o in loads)  # measured only: a lower bound
    if versions < accepted_updates + len(writes):
        report.problem(f"the shadows' versions add up to {versions}, fewer than the accepted changes")
    report.data.update(
        sent=dict(sent), sent_total=sent_total, window_s=round(window, 3),
        latency_ms={"update": stats(latency["update"]), "get": stats(latency["get"]), "both": stats(both),
                    "delta": stats(delta_ms)},
        load_lateness_ms=late, rejected=dict(rejected), unanswered=dict(unanswered),
        unanswered_measured=dict(unanswered_measured), deltas_missing=deltas_missing,
        operator_writes=len(writes), shadow_versions=versions, bridge_stats=bridge_stats,
        bridge_warnings={"count": len(bridge_warnings), "first": bridge_warnings[:20]},
        load_cpu_s=[round(o["cpu_s"], 2) for o in loads], operator_cpu_s=round(operator["cpu_s"], 2), cpu=usage,
    )  # fmt: skip
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    sys.exit(
        cli.main(
            "mqtt_shadow_rtt",
            __doc__,
            options,
            bench,
            check=check,
            smoke={"devices": 20, "rate": 100, "seconds": 1.5, "warmup": 0.5, "operator_rate": 5, "drain": 5},
        )
    )
