"""Desired-state delivery latency: from the commit of an operator's write to the device's MQTT subscriber.

    .venv/bin/python bench/desired_latency/run.py [--rate 200] [--seconds 30] [--devices 1000]

Writes go through twin.services.twin_update_desired (what the API, the admin and the
commands call), aiming at --rate writes per second over random devices; `manage.py
mqtt_bridge` (woken by PostgreSQL NOTIFY) publishes them to a private Mosquitto; a paho
subscriber on tenant/+/device/+/shadow/desired stamps each arrival. Reported: the write
rate achieved (next to the one aimed at), latency percentiles, deliveries missing.
A write overtaken by a newer one for the same device before the bridge got to it is
delivered as that newer version (retained = latest): coalesced, not lost.
Goal: p99 <= 25 ms, none missing.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt

from bench.common import app, cli, cpu, log, seed, servers
from bench.common.report import percentile, table

GOAL_P99_MS = 25.0


def options(p):
    p.add_argument("--rate", type=float, default=200, help="desired writes per second to aim at")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--devices", type=int, default=1000)


def subscribe(port: int, arrivals: dict) -> mqtt.Client:
    subscribed = threading.Event()

    def on_message(client, userdata, message):
        now = time.perf_counter()
        if message.retain or not message.payload:
            return  # only live deliveries count
        arrivals[(message.topic.split("/")[3], json.loads(message.payload)["version"])] = now

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(6, 1, 1)  # TCP_NODELAY
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("tenant/+/device/+/shadow/desired", qos=1)
    subscribed.wait(10)
    return client


def newest(arrivals: dict) -> dict[str, int]:
    """The newest version delivered per device."""
    out: dict[str, int] = {}
    for device_id, version in list(arrivals):
        out[device_id] = max(version, out.get(device_id, 0))
    return out


def bench(args, run) -> int:
    db = run.database()
    app.setup_django(run.database_url)
    from twin.services import twin_update_desired

    tenant, _ = seed.devices(args.devices)
    devices = seed.device_objects(tenant)
    broker = run.start(servers.Mosquitto())
    bridge = run.start(servers.Bridge(run.env(), broker.url))
    arrivals: dict[tuple[str, int], float] = {}
    subscriber = subscribe(broker.port, arrivals)

    commits: dict[tuple[str, int], float] = {}
    total, interval, behind = int(args.rate * args.seconds), 1 / args.rate, 0
    log(f"{total:,} desired writes aiming at {args.rate:g}/s over {args.devices:,} devices")
    groups = {
        "bench (writer)": lambda: [os.getpid()],
        "bridge": bridge.pids,
        "mosquitto": broker.pids,
        "postgres": cpu.postgres_pids(db.name),
    }
    with cpu.CpuMonitor(rescan_s=0, **groups) as usage:  # no /proc scans while arrivals are stamped
        started = next_at = time.perf_counter()
        for n in range(total):
            device = random.choice(devices)
            written = twin_update_desired(device=device, document={"setpoint": n})
            commits[(device.device_id, written.desired_version)] = time.perf_counter()  # after the commit
            device.desired_version = written.desired_version
            next_at += interval
            if (pause := next_at - time.perf_counter()) > 0:
                time.sleep(pause)
            else:
                behind += 1
        writing_s = time.perf_counter() - started
        deadline = time.perf_counter() + 5  # until every write arrived (or a newer one for its device)
        while time.perf_counter() < deadline and not all(newest(arrivals).get(d, 0) >= v for d, v in commits):
            time.sleep(0.05)
    subscriber.disconnect()
    subscriber.loop_stop()
    bridge.stop()

    latencies = [(arrivals[key] - at) * 1000 for key, at in commits.items() if key in arrivals]
    unseen, latest = [key for key in commits if key not in arrivals], newest(arrivals)
    coalesced = sum(1 for device_id, version in unseen if latest.get(device_id, 0) > version)
    missing = len(unseen) - coalesced
    p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
    worst = max(latencies, default=float("nan"))
    achieved = total / writing_s

    report = run.report(config={**{k: v for k, v in vars(args).items() if k != "output"}, **db.info})
    print(f"\nDesired delivery: {total:,} writes over {args.devices:,} devices in {writing_s:.1f} s\n")
    print(
        table(
            [
                "writes/s achieved",
                "aimed at",
                "delivered",
                "coalesced",
                "missing",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
            ],
            [
                [
                    f"{achieved:.1f}",
                    f"{args.rate:g}",
                    len(latencies),
                    coalesced,
                    missing,
                    f"{p50:.2f}",
                    f"{p95:.2f}",
                    f"{p99:.2f}",
                    f"{worst:.2f}",
                ]
            ],
        )
    )
    print(f"CPU (% of one core): {cpu.summary(usage.usage)}")
    report.rate(
        "desired writes",
        achieved=round(achieved, 1),
        target=args.rate,
        unit="writes/s",
        note=f"writer behind schedule at {behind:,} of {total:,} writes",
    )
    report.goal("delivery p99", achieved=round(p99, 2), target=GOAL_P99_MS, unit="ms", met=p99 <= GOAL_P99_MS)
    if missing:
        report.problem(f"{missing} desired writes never delivered")
    report.data.update(
        writes=total,
        writing_s=round(writing_s, 3),
        writer_behind_schedule=behind,
        delivered=len(latencies),
        coalesced=coalesced,
        missing=missing,
        cpu=usage.usage,
        latency_ms={"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(worst, 3)},
    )
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    sys.exit(cli.main("desired_latency", __doc__, options, bench, {"devices": 20, "rate": 50, "seconds": 1}))
