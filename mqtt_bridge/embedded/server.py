"""The embedded broker as a service: amqtt in a daemon thread with its own event loop, and the
bridge's account on it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from mqtt_bridge.embedded import plugins as iotcloud_plugins
from mqtt_bridge.embedded.broker import _Broker

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1884
DEFAULT_USER = "iotcloud-bridge"


def embedded_credentials() -> tuple[str, str, int]:
    """(username, password, port) of the bridge's service account on the embedded broker.

    EMBEDDED_MQTT_USER / EMBEDDED_MQTT_PASSWORD / EMBEDDED_MQTT_PORT when set; otherwise
    "iotcloud-bridge", a password derived from SECRET_KEY (so the broker and the
    bridge agree without configuration), and port 1884.
    """
    username = getattr(settings, "EMBEDDED_MQTT_USER", "") or DEFAULT_USER
    password = (
        getattr(settings, "EMBEDDED_MQTT_PASSWORD", "")
        or (hmac.new(settings.SECRET_KEY.encode(), b"embedded-mqtt", hashlib.sha256).hexdigest()[:32])
    )
    port = int(getattr(settings, "EMBEDDED_MQTT_PORT", DEFAULT_PORT) or DEFAULT_PORT)
    return username, password, port


class EmbeddedBroker:
    """amqtt broker in a daemon thread with its own asyncio loop."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        service_users: dict[str, str],
        device_auth: bool = True,
        persistence_path: str | Path | None = None,
        session_expiry: int | None = 7 * 24 * 3600,
        tls_port: int | None = None,
        tls_files: tuple[str | Path, str | Path] | None = None,
    ) -> None:
        """service_users: username -> password of trusted accounts (the bridge).

        persistence_path: SQLite file keeping retained messages across restarts (None: memory only).
        session_expiry: seconds a disconnected persistent session (and its queue) is kept.
        tls_port, tls_files (certificate, key): also MQTT over TLS on that port, same accounts and ACL.
        """
        if (tls_port is None) != (tls_files is None):
            raise ValueError("tls_port and tls_files go together")
        if not all(isinstance(u, str) and u and isinstance(p, str) and p for u, p in service_users.items()):
            raise ValueError("service_users needs non-empty usernames and passwords")
        self.host = host
        self.port = int(port)
        digest = iotcloud_plugins.password_digest
        self._service_users = {user: digest(password) for user, password in service_users.items()}
        self._device_auth = device_auth
        self._persistence_path = Path(persistence_path) if persistence_path else None
        self._session_expiry = session_expiry
        self.tls_port = int(tls_port) if tls_port else None
        self._tls_files = tuple(str(f) for f in tls_files) if tls_files else None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        _quiet_amqtt_logging()

    def __repr__(self) -> str:
        tls = f" mqtts://{self.host}:{self.tls_port}" if self.tls_port else ""
        return f"<EmbeddedBroker mqtt://{self.host}:{self.port}{tls} {'running' if self.is_running else 'stopped'}>"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set() and self._error is None

    def _config(self) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        plugins: dict[str, Any] = {
            f"{iotcloud_plugins.__name__}.IotcloudAuthPlugin": {
                "service_users": dict(self._service_users),
                "device_auth": self._device_auth,
            },
            f"{iotcloud_plugins.__name__}.IotcloudTopicPlugin": {},
        }
        if self._persistence_path is not None:
            plugins[f"{iotcloud_plugins.__name__}.RetainedStorePlugin"] = {"path": str(self._persistence_path)}
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{host}:{self.port}", "max_connections": 0}}
        if self.tls_port:
            certfile, keyfile = self._tls_files
            listeners["tls"] = {"type": "tcp", "bind": f"{host}:{self.tls_port}", "max_connections": 0, "ssl": True,
                                "certfile": certfile, "keyfile": keyfile}  # fmt: skip
        return {
            "listeners": listeners,
            "session_expiry_interval": self._session_expiry,
            "plugins": plugins,  # no $SYS, no packet/event logging, no anonymous access
        }

    def start(self, timeout: float = 10) -> None:
        """Start listening; returns once the port accepts connections, raises if it cannot."""
        with self._lock:
            if self.is_running:
                return
            if self._thread is not None:  # a previous run that died or was stopped
                self._thread.join(timeout)
            self._ready.clear()
            self._error = None
            self._stop_requested = False
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=f"mqtt-broker-{self.port}", daemon=True)
            self._thread.start()
            if not self._ready.wait(timeout):
                self._stop_locked(timeout)
                raise RuntimeError(f"embedded MQTT broker did not start on {self.url} within {timeout}s")
            if self._error is not None:
                error = self._error
                self._thread.join(timeout)
                self._thread = None
                raise RuntimeError(f"embedded MQTT broker could not start on {self.url}: {error}") from error

    def stop(self, timeout: float = 10) -> None:
        """Disconnect every client and close the port. Idempotent."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if thread.is_alive() and loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._request_stop)
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("embedded MQTT broker on %s did not stop within %ss", self.url, timeout)
                return
        self._thread = None
        self._loop = None

    def _request_stop(self) -> None:  # on the broker's loop
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- broker thread --------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            logger.error("embedded MQTT broker on %s failed: %s", self.url, exc)
        finally:
            self._ready.set()
            try:
                _cancel_remaining_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        broker = _Broker(self._config(), loop=asyncio.get_running_loop())
        try:
            await broker.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await broker.plugins_manager.close()
            raise
        self._ready.set()
        try:
            if not self._stop_requested:  # (a start() that timed out may have asked already)
                await self._stop_event.wait()
        finally:
            started = time.monotonic()
            await broker.shutdown()
            logger.debug("embedded MQTT broker stopped in %.3fs", time.monotonic() - started)


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class _RefusalLogFilter(logging.Filter):
    """Drops amqtt's warning for each refused or invalid connection: _Broker logs those itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to initialize client session")


def _quiet_amqtt_logging() -> None:
    # amqtt logs every connection and state change at INFO (and packets, passwords included, at DEBUG).
    # Keep its warnings unless LOGGING configures these loggers explicitly.
    for name in ("amqtt", "transitions"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)
    broker_log = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, _RefusalLogFilter) for f in broker_log.filters):
        broker_log.addFilter(_RefusalLogFilter())
