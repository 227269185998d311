"""paho-mqtt clients configured the way the platform needs them."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_bridge import paho_speedups
from mqtt_bridge.config import BrokerSettings

logger = logging.getLogger(__name__)

V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311

if not paho_speedups.install():
    logger.warning("paho-mqtt %s is not the pinned version: its MQTT 5 properties run unpatched (slower)",
                   paho_speedups.paho.mqtt.__version__)  # fmt: skip


def make_client(
    broker: BrokerSettings, *, client_id: str, protocol: int, persistent: bool, manual_ack: bool = False
) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == V5 else not persistent,
        manual_ack=manual_ack,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:  # the broker's certificate is verified (chain and host name), never skipped
        client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
    client.on_socket_open = _no_delay
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_inflight_messages_set(100)
    return client


def connect_async(
    client: mqtt.Client, broker: BrokerSettings, *, protocol: int, persistent: bool, receive_maximum: int = 0
) -> None:
    """`receive_maximum` (MQTT 5): how many QoS 1 messages the broker may send before we acknowledge
    one. Without it Mosquitto allows its max_inflight_messages, 20 by default: too few for a client that
    acknowledges a batch only once it is committed (the bridge)."""
    kwargs = {}
    if protocol == V5:
        properties = Properties(PacketTypes.CONNECT)
        if persistent:
            properties.SessionExpiryInterval = settings.MQTT_SESSION_EXPIRY_SECONDS
        if receive_maximum:
            properties.ReceiveMaximum = min(receive_maximum, 65535)
        kwargs = {"clean_start": not persistent, "properties": properties}
    client.connect_async(broker.host, broker.port, keepalive=settings.MQTT_KEEPALIVE_SECONDS, **kwargs)


def _no_delay(client, userdata, sock):
    # Without TCP_NODELAY, Nagle's algorithm holds small PUBACKs back and a
    # QoS 1 round trip stalls for tens of milliseconds.
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (e.g. websockets)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def detect_protocol(broker: BrokerSettings, timeout: float = 5.0) -> int:
    """MQTT 5 if the broker speaks it, else 3.1.1 (or what MQTT_URL forces)."""
    if broker.protocol == "5":
        return V5
    if broker.protocol == "3.1.1":
        return V311
    if _connects(broker, V5, timeout):
        return V5
    logger.info("broker %s does not accept MQTT 5; using 3.1.1", broker)
    return V311


def _connects(broker: BrokerSettings, protocol: int, timeout: float) -> bool:
    done = threading.Event()
    outcome = {"ok": False}
    client = make_client(broker, client_id="", protocol=protocol, persistent=False)

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome["ok"] = not reason_code.is_failure
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: done.set()
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome["ok"]
