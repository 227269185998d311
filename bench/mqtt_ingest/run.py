"""MQTT reported-state ingestion: reports committed per second by the bridge vs the raw broker rate.

    .venv/bin/python bench/mqtt_ingest/run.py [--devices 10000] [--rounds 5] [--publishers 2] [--protocol auto]
        [--bridge-processes N]

1. raw: publisher processes send QoS 1 reports for every device as fast as a private
   Mosquitto takes them, to a counting paho subscriber (QoS 1): the ceiling.
2. bridge: the same messages to `manage.py mqtt_bridge --processes N` (N ingest workers, by default
   one per core) writing PostgreSQL; measured until the last round of every device is committed
   (a device's rounds applied out of order would leave it short, and the run then says so).
Goal: committed rate >= 70 % of the raw rate, none lost (the bridge's accepted count is what
was sent, every device holds its last round). --protocol 3.1.1 writes mqtt_ingest_3.1.1.json.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt

from bench.common import app, cli, cpu, log, seed, servers
from bench.common.ingest import FILTER, bridge_rate, publish_all
from bench.common.report import table

GOAL_RATIO = 0.70


def options(p):
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5, help="reports per device")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--batch-max", type=int, default=2000, help="MQTT_BATCH_MAX of the bridge")
    p.add_argument(
        "--bridge-processes",
        type=int,
        default=0,
        help="mqtt_bridge --processes: ingest worker processes (default 0: one per core, as the bridge's default)",
    )
    p.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"], help="the bridge's MQTT protocol")


def raw_rate(broker, device_ids, args) -> dict:
    expected = len(device_ids) * args.rounds
    got = {"count": 0, "last": 0.0}
    all_in, subscribed = threading.Event(), threading.Event()

    def on_message(client, userdata, message):
        got["count"] += 1
        got["last"] = time.time()
        if got["count"] >= expected:
            all_in.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, client_id="bench-counter")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe(FILTER, qos=1)
    subscribed.wait(10)
    with cpu.CpuMonitor(mosquitto=broker.pids, subscriber=lambda: [os.getpid()]) as usage:
        started = publish_all(broker.port, device_ids, args, usage)
        all_in.wait(300)
    client.disconnect()
    client.loop_stop()
    seconds = got["last"] - started
    return {
        "messages": got["count"],
        "seconds": round(seconds, 3),
        "rate": round(got["count"] / seconds),
        "cpu": usage.usage,
    }


def bench(args, run) -> int:
    db = run.database()
    app.setup_django(run.database_url)
    device_ids = [d.device_id for d in seed.devices(args.devices)[1]]
    app.close_connections()  # the publishers fork: no shared database socket
    broker = run.start(servers.Mosquitto())
    log(f"raw broker rate: {args.devices * args.rounds:,} QoS 1 messages")
    raw = raw_rate(broker, device_ids, args)
    log("bridge rate: the same messages through mqtt_bridge into PostgreSQL")
    bridged = bridge_rate(run, db, broker, device_ids, args)

    name = "mqtt_ingest" if args.protocol == "auto" else f"mqtt_ingest_{args.protocol}"
    report = run.report(name, config={**{k: v for k, v in vars(args).items() if k != "output"}, **db.info})
    ratio = bridged["rate"] / raw["rate"]
    print(
        f"\nMQTT ingestion: {args.devices:,} devices x {args.rounds} reports, {args.publishers} publishers, "
        f"bridge protocol {args.protocol}\n"
    )
    print(
        table(
            ["path", "messages", "seconds", "msg/s", "vs raw", "lost", "CPU (% of one core)"],
            [
                [
                    "raw broker (paho -> paho)",
                    raw["messages"],
                    raw["seconds"],
                    raw["rate"],
                    "100%",
                    "-",
                    cpu.summary(raw["cpu"]),
                ],
                [
                    "bridge -> PostgreSQL (committed)",
                    bridged["messages"],
                    bridged["seconds"],
                    bridged["rate"],
                    f"{ratio:.0%}",
                    bridged["lost"],
                    cpu.summary(bridged["cpu"]),
                ],
            ],
        )
    )
    report.rate("raw broker", achieved=raw["rate"], unit="msg/s")
    workers = servers.bridge_processes(args.bridge_processes)
    processes = "ingest in the bridge's process" if workers == 1 else f"{workers} ingest workers"
    report.rate(f"bridge, committed ({processes})", achieved=bridged["rate"], unit="msg/s", note=f"{ratio:.0%} of raw")
    per_thousand = {
        group: round(1000 * seconds / bridged["messages"] * 1000, 1)
        for group, seconds in bridged["cpu"]["cpu_s"].items()
        if group in ("bridge", "postgres", "mosquitto")
    }
    for group, ms in per_thousand.items():
        report.rate(f"{group} CPU per 1,000 messages", achieved=ms, unit="ms")
    print("\nCPU per 1,000 messages committed: " + ", ".join(f"{g} {ms:g} ms" for g, ms in per_thousand.items()))
    report.goal(
        "committed / raw msg/s", achieved=round(ratio, 3), target=GOAL_RATIO, met=ratio >= GOAL_RATIO, relation=">="
    )
    if raw["messages"] != args.devices * args.rounds:
        report.problem(f"the raw subscriber got {raw['messages']} of {args.devices * args.rounds} messages")
    if bridged["lost"] or bridged["devices_complete"] != args.devices:
        report.problem(
            f"{bridged['lost']} reports lost, {bridged['devices_complete']} of {args.devices} devices "
            f"hold their last round"
        )
    report.data.update(raw=raw, bridge=bridged, ratio=round(ratio, 3))
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    sys.exit(cli.main("mqtt_ingest", __doc__, options, bench, {"devices": 100, "rounds": 2, "publishers": 1}))
