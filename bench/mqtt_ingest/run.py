"""MQTT reported-state ingestion: committed reports per second vs the raw broker rate.

    .venv/bin/python bench/mqtt_ingest/run.py [--devices 10000] [--rounds 5] [--publishers 2]

1. raw: publisher processes send QoS 1 reports for every device as fast as the
   broker takes them to a counting paho subscriber (QoS 1): the ceiling.
2. bridge: the same publishers, the same messages, to `manage.py mqtt_bridge`
   writing PostgreSQL; measured until the last report is committed.
Goal: committed rate >= 70% of the raw rate, zero reports lost (the bridge's
accepted count equals what was sent and every device holds its last round).
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing as mp
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from mqtt_common import (
    DEFAULT_DATABASE_URL,
    BridgeProcess,
    Mosquitto,
    log,
    print_table,
    recreate_database,
    seed_devices,
    setup_django,
    write_json,
)

TENANT = "bench"
GOAL_RATIO = 0.70


def topic(device_id: str) -> str:
    return f"tenant/{TENANT}/device/{device_id}/shadow/reported"


def publisher(port: int, device_ids: list[str], rounds: int, start: mp.Event, done: mp.Queue) -> None:
    """Publish every round for our share of devices, QoS 1, many messages in flight."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start.wait()
    infos = []
    for round_ in range(rounds):
        for device_id in device_ids:
            payload = json.dumps({"reported": {"round": round_, "temperature_c": 21.5, "fw": "1.4.2"}, "version": 0})
            infos.append(client.publish(topic(device_id), payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    done.put(time.time())
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, device_ids: list[str], rounds: int, processes: int) -> float:
    """Run the publishers; returns the wall-clock start time."""
    start, done = mp.Event(), mp.Queue()
    shares = [device_ids[n::processes] for n in range(processes)]
    workers = [mp.Process(target=publisher, args=(port, share, rounds, start, done)) for share in shares]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # all connected
    started = time.time()
    start.set()
    for worker in workers:
        worker.join()
    return started


def raw_rate(port: int, device_ids: list[str], rounds: int, processes: int) -> dict:
    expected = len(device_ids) * rounds
    received = {"count": 0, "last": 0.0}
    all_in = threading.Event()

    def on_message(client, userdata, message):
        received["count"] += 1
        received["last"] = time.time()
        if received["count"] >= expected:
            all_in.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, client_id="bench-counter")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(f"tenant/{TENANT}/device/+/shadow/reported", qos=1)
    subscribed.wait(10)
    started = publish_all(port, device_ids, rounds, processes)
    all_in.wait(300)
    client.disconnect()
    client.loop_stop()
    seconds = received["last"] - started
    return {"messages": received["count"], "seconds": round(seconds, 3), "rate": round(received["count"] / seconds)}


def bridge_rate(database_url: str, mqtt_url: str, port: int, device_ids, rounds, processes, batch_max) -> dict:
    from django.db import connection

    expected = len(device_ids) * rounds
    last_round = rounds - 1
    bridge = BridgeProcess(database_url, mqtt_url, MQTT_BATCH_MAX=str(batch_max))
    started = publish_all(port, device_ids, rounds, processes)

    def finished() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM device_state WHERE (reported_state->>'round')::int = %s", [last_round])
            return cursor.fetchone()[0]

    deadline = time.time() + 300
    while finished() < len(device_ids) and time.time() < deadline:
        time.sleep(0.02)
    committed_at = time.time()
    output = bridge.stop()
    stats = re.search(r"stats=(\{.*\})", output)
    stats = ast.literal_eval(stats.group(1)) if stats else {}
    done = finished()
    seconds = committed_at - started
    return {
        "messages": expected,
        "seconds": round(seconds, 3),
        "rate": round(expected / seconds),
        "devices_complete": done,
        "bridge_stats": stats,
        "lost": expected - stats.get("accepted", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="reports per device")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--batch-max", type=int, default=2000)
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=["auto", "5", "3.1.1"],
        help="the bridge's MQTT protocol (auto: MQTT 5 on Mosquitto)",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()

    log(f"fresh database, {args.devices} devices")
    recreate_database(args.database_url)
    setup_django(args.database_url)
    device_ids = seed_devices(args.devices, TENANT)
    broker = Mosquitto()
    try:
        log(f"raw broker rate: {args.devices * args.rounds} QoS 1 messages")
        raw = raw_rate(broker.port, device_ids, args.rounds, args.publishers)
        log("bridge rate: same messages through mqtt_bridge into PostgreSQL")
        bridged = bridge_rate(
            args.database_url,
            f"{broker.url}?protocol={args.protocol}",
            broker.port,
            device_ids,
            args.rounds,
            args.publishers,
            args.batch_max,
        )
    finally:
        broker.stop()

    ratio = bridged["rate"] / raw["rate"]
    met = ratio >= GOAL_RATIO and bridged["lost"] == 0 and bridged["devices_complete"] == args.devices
    print_table(
        ["path", "messages", "seconds", "msg/s", "vs raw", "lost"],
        [
            ["raw broker (paho → paho)", raw["messages"], raw["seconds"], raw["rate"], "100%", "-"],
            ["bridge → PostgreSQL (committed)", bridged["messages"], bridged["seconds"], bridged["rate"],
             f"{ratio:.0%}", bridged["lost"]],
        ],
    )  # fmt: skip
    print(f"goal: committed >= {GOAL_RATIO:.0%} of raw, zero lost -> {'met' if met else 'MISSED'}")
    path = write_json(
        "mqtt_ingest" if args.protocol == "auto" else f"mqtt_ingest_{args.protocol}",
        {
            "config": vars(args),
            "raw": raw,
            "bridge": bridged,
            "ratio": round(ratio, 3),
            "goal": {"ratio_min": GOAL_RATIO, "lost": 0, "met": met},
        },
    )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
