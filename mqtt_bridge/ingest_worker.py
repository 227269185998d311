"""One ingest worker of `mqtt_bridge --processes N` (see mqtt_bridge.partitions), in its own process.

It reads the messages its bridge sends down a pipe, runs the ingest loop on them (its own database
connection, its own MQTT connection for the answers and shadow events), and writes each committed
batch's packet ids back up the other pipe. It stops when the bridge closes its input (after what it
was sent is done), and dies with the bridge (PR_SET_PDEATHSIG): then what it had not committed was
never acknowledged, and the broker redelivers it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from multiprocessing.connection import Connection

from django.conf import settings
from django.db import connection

from mqtt_bridge.client import connect_async, make_client
from mqtt_bridge.config import broker_settings
from mqtt_bridge.ingest_loop import IngestLoop
from mqtt_bridge.partitions import decode_message, die_with_parent, encode_done

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # at the end, how long the last answers may take to leave


def run_worker(*, read_fd: int, write_fd: int, client_id: str, protocol: int) -> None:
    die_with_parent()
    # The bridge stops us by closing our input (it got the SIGTERM, or the Ctrl-C that reached the
    # whole group); a signal of our own would only cut short what it sent us.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = threading.Event()
    broker = broker_settings()
    client = make_client(broker, client_id=client_id, protocol=protocol, persistent=False)
    connect_async(client, broker, protocol=protocol, persistent=False)
    client.loop_start()
    upstream = Connection(write_fd, readable=False)

    def done(messages, counts, may_write) -> None:
        upstream.send_bytes(encode_done(messages, counts, may_write))

    loop = IngestLoop(
        publisher=lambda: client, done=done, stopping=stopping,
        batch_max=settings.MQTT_BATCH_MAX, batch_wait=settings.MQTT_BATCH_WAIT_MS / 1000,
    )  # fmt: skip
    reader = threading.Thread(target=_read, args=(Connection(read_fd, writable=False), loop, stopping),
                              name="worker-read", daemon=True)  # fmt: skip
    reader.start()
    logger.info("ingest worker started client_id=%s", client_id)
    try:
        loop.run()
    finally:
        _flush(client)
        client.disconnect()
        client.loop_stop()
        connection.close()
        logger.info("ingest worker stopped client_id=%s", client_id)


def _read(downstream: Connection, loop: IngestLoop, stopping: threading.Event) -> None:
    try:
        while not stopping.is_set():
            loop.inbox.put(decode_message(downstream.recv_bytes()))
    except (EOFError, OSError):
        pass  # the bridge closed our input (stopping) or died
    finally:
        stopping.set()  # the loop finishes what it was given, then returns


def _flush(client) -> None:
    """Give queued answers and events a moment to reach the broker (events not acknowledged are
    published again by the delivery loop once their lease ends; answers would be lost)."""
    deadline = time.monotonic() + FLUSH_SECONDS
    while time.monotonic() < deadline and client.is_connected():
        with client._out_message_mutex:  # paho internals, pinned version (see requirements.txt)
            if not client._out_messages:
                return
        time.sleep(0.02)
