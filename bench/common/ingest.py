"""The MQTT ingest experiment's load and bridge phase, shared by bench/mqtt_ingest and bench/tls.

    started = publish_all(broker.port, device_ids, args, usage)        # args.rounds, args.publishers
    bridged = bridge_rate(run, db, broker, device_ids, args)           # + args.batch_max, args.protocol
    bridged = bridge_rate(run, db, broker, device_ids, args, tls=True)  # over the broker's TLS listener

Publisher processes (paho, MQTT 3.1.1, many QoS 1 messages in flight) send a report for every
device, round after round, as fast as the broker takes them; `manage.py mqtt_bridge` commits them
to PostgreSQL, and the phase is measured until the last round of every device is committed. With
tls=True (a servers.Mosquitto(tls=...)) both ends use the broker's TLS listener and verify its
certificate: the publishers with tls_set(ca_certs=...), the bridge with its MQTT_URL
mqtts://127.0.0.1:<tls_port>?ca_file=...
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import paho.mqtt.client as mqtt

from bench.common import cpu, servers

FILTER = "tenant/bench/device/+/shadow/reported"


def publisher(port: int, device_ids: list[str], rounds: int, ready, start, done, ca_file: str | None = None) -> None:
    """Publish every round for our share of devices, QoS 1, many messages in flight; report our CPU seconds."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if ca_file:
        client.tls_set(ca_certs=ca_file)  # the broker's certificate is verified (chain and host name)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.put(1)
    start.wait()
    infos = []
    for round_ in range(rounds):
        for device_id in device_ids:
            payload = json.dumps({"reported": {"round": round_, "temperature_c": 21.5, "fw": "1.4.2"}, "version": 0})
            infos.append(client.publish(f"tenant/bench/device/{device_id}/shadow/reported", payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()
    done.put(time.process_time())


def publish_all(port: int, device_ids: list[str], args, usage: cpu.CpuMonitor, ca_file: str | None = None) -> float:
    """Run the publishers once all are connected; returns the wall-clock start."""
    ready, start, done = mp.Queue(), mp.Event(), mp.Queue()
    workers = [
        mp.Process(
            target=publisher, args=(port, device_ids[n :: args.publishers], args.rounds, ready, start, done, ca_file)
        )
        for n in range(args.publishers)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=30)
    started = time.time()
    start.set()
    for _ in workers:
        usage.add("publishers", done.get(timeout=300))
    for w in workers:
        w.join()
    return started


def bridge_rate(run, db, broker, device_ids, args, tls: bool = False) -> dict:
    """The bridge phase: the messages through `manage.py mqtt_bridge` until every device's last round is
    committed. The database must hold the devices with no round reported yet."""
    from django.db import connection

    expected = len(device_ids) * args.rounds
    if tls:
        url, port, ca_file = f"{broker.tls_url}&protocol={args.protocol}", broker.tls_port, str(broker.tls.ca_file)
    else:
        url, port, ca_file = f"{broker.url}?protocol={args.protocol}", broker.port, None
    processes = getattr(args, "bridge_processes", 1)
    bridge = run.start(servers.Bridge(run.env(MQTT_BATCH_MAX=str(args.batch_max)), url, processes=processes))

    def complete() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM device_state WHERE (reported_state->>'round')::int = %s", [args.rounds - 1]
            )
            return cursor.fetchone()[0]

    groups = {"bridge": bridge.pids, "mosquitto": broker.pids, "postgres": cpu.postgres_pids(db.name)}
    with cpu.CpuMonitor(**groups) as usage:
        started = publish_all(port, device_ids, args, usage, ca_file)
        deadline = time.time() + 300
        while (done := complete()) < len(device_ids) and time.time() < deadline:
            time.sleep(0.02)
        committed_at = time.time()
    stats = bridge.stop()
    seconds = committed_at - started
    return {
        "messages": expected,
        "seconds": round(seconds, 3),
        "rate": round(expected / seconds),
        "devices_complete": done,
        "bridge_stats": stats,
        "lost": expected - stats.get("accepted", 0),
        "cpu": usage.usage,
    }
