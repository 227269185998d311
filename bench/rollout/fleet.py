"""A simulated fleet for bench/rollout: one MQTT connection speaking for every device of a tenant.

It subscribes to every device's desired topic (the seed's, retained) and behaves as devices that
apply what they are sent: each desired version received is answered with the seed's report of
that state, naming that version, on the device's reported topic (QoS 1). A desired state holding
`refuse` (a key) is not applied: no report, as a device whose firmware does not know the setting.

Runs in its own process (`start`), so that stamping arrivals never waits for the benchmark's
queries; the benchmark talks to it over a pipe: a dict {device: version} says what "count"
counts (devices that received that version or a newer one without the refused key), "stop"
returns every arrival.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time

import paho.mqtt.client as mqtt


def start(port: int, tenant_id: str, refuse: str):
    """(process, pipe) of a running fleet, once it is subscribed."""
    ours, theirs = mp.Pipe()
    process = mp.Process(target=_run, args=(port, tenant_id, refuse, theirs), daemon=True)
    process.start()
    if not ours.poll(30) or ours.recv() != "ready":
        process.kill()
        raise RuntimeError("the simulated fleet did not subscribe within 30 s")
    return process, ours


def _run(port: int, tenant_id: str, refuse: str, pipe) -> None:
    arrivals: list[tuple[str, int, bool, float, float | None]] = []  # device, version, refused, received, reported
    latest: dict[str, tuple[int, bool]] = {}  # device -> (newest version received, held the refused key)
    expected: dict[str, int] = {}  # device -> the version from which it counts as reverted
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client, userdata, message):
        received = time.time()
        if not message.payload:
            return
        body = json.loads(message.payload)
        device_id, version, desired = message.topic.split("/")[3], body["version"], body["desired"]
        refused = refuse in desired
        reported_at = None
        if not refused and desired:
            client.publish(f"tenant/{tenant_id}/device/{device_id}/shadow/reported",
                           json.dumps({"reported": desired, "version": version}), qos=1)  # fmt: skip
            reported_at = time.time()
        with lock:
            arrivals.append((device_id, version, refused, received, reported_at))
            if version >= latest.get(device_id, (-1, False))[0]:
                latest[device_id] = (version, refused)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{tenant_id}",
                         protocol=mqtt.MQTTv311)  # fmt: skip
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(6, 1, 1)  # TCP_NODELAY
    client.connect("127.0.0.1", port, keepalive=120)
    client.loop_start()
    client.subscribe(f"tenant/{tenant_id}/device/+/shadow/desired", qos=1)
    subscribed.wait(20)
    pipe.send("ready")
    while True:
        command = pipe.recv()
        if isinstance(command, dict):  # device -> version: what "count" counts from now on
            with lock:
                expected = command
        elif command == "count":
            with lock:
                pipe.send(sum(1 for d, v in expected.items() if d in latest and latest[d][0] >= v and not latest[d][1]))
        elif command == "stop":
            client.disconnect()
            client.loop_stop()
            with lock:
                pipe.send(arrivals)
            return
