"""PostgreSQL LISTEN on its own connection: wakes the bridge the moment a desired write commits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from django.db import connection

logger = logging.getLogger(__name__)


class NotificationListener:
    def __init__(self, channel: str, *, on_notify: Callable[[], None], stopping: threading.Event):
        self.channel = channel
        self.on_notify = on_notify
        self.stopping = stopping

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**_conninfo(), autocommit=True) as conn:
                    conn.execute(f'LISTEN "{self.channel}"')
                    backoff = 1.0
                    # Anything committed while we were not listening is caught
                    # by the wake-up below and by the poll.
                    self.on_notify()
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.on_notify()
            except psycopg.Error as exc:
                logger.warning("LISTEN connection lost (%s); retrying in %.0fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30)


def _conninfo() -> dict:
    params = connection.get_connection_params()
    # Keep only what psycopg.connect understands; Django adds its own keys.
    return {
        k: v
        for k, v in params.items()
        if k
        in {
            "dbname",
            "user",
            "password",
            "host",
            "port",
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "options",
            "service",
        }
    }
