"""Zero-setup MQTT broker: amqtt in a daemon thread, with device auth and per-device topic ACLs.

Used when MQTT_URL is empty (``manage.py mqtt_broker``, ``make run``, the MQTT tests).
Production uses Mosquitto or another real broker; this one exists so the platform
runs on a bare machine with nothing but Python.

Accounts:

- service accounts (the bridge): any username/password pair given in
  ``service_users``; may publish and subscribe anything;
- devices: username ``<tenant_id>/<device_id>``, password = the device's
  provision token, checked against the database, and the username as client id
  (``acl.device_client_id``); may publish only to their own ``shadow/reported``
  and subscribe only under their own ``tenant/{t}/device/{d}/``.

Every session is authenticated, never anonymous: amqtt throws away the
subscriptions and offline QoS 1 queues of anonymous sessions, so
``clean_session=False`` only works with authentication on.

On top of amqtt 0.12.1, ``_Broker`` and ``_BrokerHandler`` fix what would otherwise
break the ACL or the bridge (each override says why):

- authentication happens *before* any existing session of the client id is
  deleted or taken over, a client id stays bound to the account that created
  it, and a will message must pass the PUBLISH ACL;
- retained messages go, on (re)connect, only to the client's own subscriptions
  (amqtt sends them for everybody's, unchecked); a device's retain flag is ignored;
- QoS 1 to clients is at least once: an unacknowledged message is kept and sent
  again (DUP) when the persistent session reconnects (amqtt drops it after 5 s);
  messages queued while offline are delivered with RETAIN=0;
- shared subscriptions (``$share/<group>/<filter>``) deliver each message to one
  member (amqtt accepts them and never delivers anything);
- an MQTT 5 CONNECT gets CONNACK 0x01 at once (amqtt waits for bytes that never
  come), a silent connection is closed after 1.5 x its keep-alive (amqtt never
  closes it), and a connection that sends no CONNECT within 10 s is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.adapters import BufferReader
from amqtt.broker import Broker, BrokerContext, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import OUTGOING, Session
from amqtt.utils import format_client_message, gen_client_id
from django.conf import settings

from mqtt_bridge import acl

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1884
DEFAULT_USER = "iotcloud-bridge"
SHARED_PREFIX = "$share/"
CONNECT_TIMEOUT = 10  # seconds a new connection gets to send its CONNECT
MAX_CONNECT_BYTES = 256 * 1024

# Session.attributes keys (amqtt asks for namespaced keys).
PRINCIPAL = "iotcloud.principal"  # ("service", username) or ("device", tenant_id, device_id)
_PREAUTHENTICATED = "iotcloud.preauthenticated"


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


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _lookup_device(tenant_id: str, device_id: str, token: str) -> bool:
    """Whether token is the provision token of the active device tenant_id/device_id (runs in a worker thread)."""
    from django.db import close_old_connections, connection

    from devices.selectors import active_device_for_token

    close_old_connections()
    try:
        device = active_device_for_token(token)
        return device is not None and device.tenant_id == tenant_id and device.device_id == device_id
    finally:
        # Logins are rare and the executor's threads live on: do not leave
        # an idle connection behind in each of them.
        connection.close()


class IotcloudAuthPlugin(BaseAuthPlugin):
    """Service accounts (constant-time password check) and devices (provision token, looked up in the database)."""

    @dataclass
    class Config:
        service_users: dict[str, str] = field(default_factory=dict)
        """username -> sha256 hex digest of the password (the plain password never enters amqtt's config)."""
        device_auth: bool = True

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = False  # never: amqtt drops anonymous sessions' queues and subscriptions
        username, password = session.username, session.password
        principal = None
        if username and password is not None:
            try:
                principal = await self._principal(username, password, session.client_id)
            except Exception:
                logger.exception("MQTT authentication failed with an error (username=%r)", username)
        if principal is None:
            logger.info(
                "MQTT connection refused: bad credentials (client_id=%r username=%r from %s)",
                session.client_id, username, session.remote_address,
            )  # fmt: skip
            return False
        session.attributes[PRINCIPAL] = principal
        return True

    async def _principal(self, username: str, password: str, client_id: str | None) -> tuple[str, ...] | None:
        expected = self.config.service_users.get(username)
        if expected is not None:
            # a service account name is never tried as a device
            return ("service", username) if hmac.compare_digest(_digest(password), expected) else None
        if not self.config.device_auth:
            return None
        login = acl.parse_username(username)
        if login is None:
            return None
        if not acl.client_id_allowed(login, client_id):
            logger.info("MQTT connection refused: device %s must use its username as client id, not %r",
                        username, client_id)  # fmt: skip
            return None
        if await asyncio.to_thread(_lookup_device, login.tenant_id, login.device_id, password):
            return ("device", login.tenant_id, login.device_id)
        return None


class IotcloudTopicPlugin(BaseTopicPlugin):
    """Per-device topic ACL for PUBLISH, SUBSCRIBE (filters) and RECEIVE (each delivery)."""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        principal = session.attributes.get(PRINCIPAL) if session is not None else None
        if principal is None or not topic:
            return False
        if principal[0] == "service":
            return True
        allowed = acl.device_may(str(action), principal[1], principal[2], topic)
        if not allowed and action != Action.RECEIVE:
            logger.info("MQTT %s denied: device %s/%s topic %r", action, principal[1], principal[2], topic)
        return allowed


class RetainedStorePlugin(BasePlugin[BrokerContext]):
    """Keeps retained messages in a SQLite file so they survive a broker restart.

    Loaded before the listeners open; every set/clear is written in order by one
    worker thread (the event loop never waits on the disk).
    """

    @dataclass
    class Config:
        path: str = ""

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL)"
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqtt-retained")
        self._closed = False

    async def on_broker_pre_start(self) -> None:
        # amqtt clears retained messages in start() just before this event, and opens the listeners after it
        rows = self._db.execute("SELECT topic, payload, qos FROM retained").fetchall()
        for topic, payload, qos in rows:
            self.context.retained_messages[topic] = RetainedApplicationMessage(None, topic, bytes(payload), qos)
        if rows:
            logger.info("restored %d retained MQTT messages", len(rows))

    async def on_broker_retained_message(self, *, client_id: str | None, retained_message: Any) -> None:
        if client_id is not None or self._closed:
            return  # an offline session's queue, not a retained topic
        topic, payload, qos = retained_message.topic, bytes(retained_message.data or b""), retained_message.qos or 0
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, topic, payload, qos)

    def _write(self, topic: str, payload: bytes, qos: int) -> None:
        try:
            if payload:
                self._db.execute(
                    "INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?)"
                    " ON CONFLICT(topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos",
                    (topic, payload, qos),
                )
            else:
                self._db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
        except sqlite3.Error:
            logger.exception("could not store retained MQTT message for topic %r", topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown, True)
        self._db.close()


async def _read_packet(reader: Any) -> BufferReader:
    """The next whole packet, buffered.

    amqtt parses a CONNECT straight off the socket: an MQTT 5 CONNECT (its properties shift the
    payload) makes it wait for bytes that never come, and the client sees no CONNACK at all.
    Parsed from a buffer, the same CONNECT gets CONNACK 0x01 (unacceptable protocol version) at once.
    """
    fixed = await MQTTFixedHeader.from_stream(reader)
    if fixed is None:
        raise NoDataError("connection closed before CONNECT")
    if fixed.remaining_length > MAX_CONNECT_BYTES:
        raise MQTTError(f"first packet too large ({fixed.remaining_length} bytes)")
    body = await reader.read(fixed.remaining_length) if fixed.remaining_length else b""
    return BufferReader(fixed.to_bytes() + body)


class _BrokerHandler(BrokerProtocolHandler):
    """amqtt's per-connection handler, with at-least-once QoS 1 delivery to clients.

    amqtt waits 5 s for a PUBACK, then drops the message for good (and logs an error); a
    message in flight when the connection drops is dropped too, so a subscriber that
    acknowledges only after processing (paho manual_ack) could lose messages. Here an
    unacknowledged message stays in the session's in-flight set, however long it takes, and
    is sent again (DUP) when the persistent session reconnects, as MQTT 3.1.1 4.4 requires.
    """

    _retry_tasks: set[asyncio.Task[Any]]

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction != OUTGOING or self.session is None or app_message.packet_id is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        session, packet_id = self.session, app_message.packet_id
        session.inflight_out[packet_id] = app_message
        packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = waiter  # before sending: the PUBACK can beat us back
        try:
            if self._closed():
                return  # kept in flight: sent when the session reconnects
            await self._send_packet(packet)
            app_message.publish_packet = packet
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=30)
                if not waiter.done() and self._closed():
                    return
            if waiter.cancelled():
                return  # connection lost (amqtt cancels the waiters); kept in flight
            app_message.puback_packet = waiter.result()
            session.inflight_out.pop(packet_id, None)
        finally:
            if self._puback_waiters.get(packet_id) is waiter:
                del self._puback_waiters[packet_id]
            if not waiter.done():
                waiter.cancel()

    def handle_read_timeout(self) -> None:
        # amqtt ignores an expired keep-alive, so a vanished client (power cut, NAT timeout) stays
        # "connected" forever. Abort the connection: the reader loop ends and the usual cleanup
        # (will message, session marked disconnected, in-flight messages kept) runs.
        if self.session is not None:
            logger.info("MQTT client %r: keep-alive expired, closing the connection", self.session.client_id)
        transport = getattr(getattr(self.writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()

    def _closed(self) -> bool:
        return (
            self.writer is None
            or getattr(self.writer, "is_closed", False)
            or self._reader_task is None
            or self._reader_task.done()
        )

    async def _retry_deliveries(self) -> None:
        # amqtt awaits these (10 s each) before the client's packets are handled; send them in the background.
        if self.session is None:
            return
        self._retry_tasks = getattr(self, "_retry_tasks", set())
        for message in [*self.session.inflight_in.values(), *self.session.inflight_out.values()]:
            task = asyncio.ensure_future(self._handle_message_flow(message))
            self._retry_tasks.add(task)
            task.add_done_callback(self._retry_done)

    def _retry_done(self, task: asyncio.Task[Any]) -> None:
        self._retry_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("MQTT redelivery failed: %r", task.exception())


def _principal_of(session: Session | None) -> tuple[str, ...] | None:
    return session.attributes.get(PRINCIPAL) if session is not None else None


class _Broker(Broker):
    """amqtt's Broker with the fixes listed in the module docstring (amqtt 0.12.1 internals)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared_cursor: dict[str, int] = {}

    # -- authentication before any session state is touched --------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # Same as amqtt's, plus: the CONNECT is read whole first (with a deadline), and the client is
        # authenticated before an existing session of its client id is deleted or taken over.
        peer = format_client_message(address=remote_address, port=remote_port)
        try:
            connect = await asyncio.wait_for(_read_packet(reader), CONNECT_TIMEOUT)
            handler, incoming = await _BrokerHandler.init_from_connect(connect, writer, self.plugins_manager)
        except (TimeoutError, AMQTTError, MQTTError, NoDataError, OSError) as exc:
            with contextlib.suppress(Exception):
                await writer.close()
            # (a port probe that sends nothing is not worth an INFO line)
            level = logging.DEBUG if isinstance(exc, NoDataError) else logging.INFO
            logger.log(
                level,
                "MQTT connection from %s dropped: no valid MQTT 3.1.1 CONNECT (%s: %s)",
                peer,
                type(exc).__name__,
                exc,
            )
            raise AMQTTError(f"{peer}: no valid CONNECT") from exc

        refusal = None
        if not await super()._authenticate(incoming, None):  # type: ignore[arg-type]
            refusal = NOT_AUTHORIZED
        elif incoming.will_flag and not await self._topic_filtering(
            incoming, topic=incoming.will_topic or "", action=Action.PUBLISH
        ):
            # amqtt publishes a will without any ACL check: a device could speak for another one
            logger.info(
                "MQTT connection refused: will topic %r not allowed (username=%r)",
                incoming.will_topic, incoming.username,
            )  # fmt: skip
            refusal = NOT_AUTHORIZED
        else:
            existing = self._sessions.get(incoming.client_id, (None, None))[0] if incoming.client_id else None
            if existing is not None and not self._may_take_over(_principal_of(existing), _principal_of(incoming)):
                logger.info(
                    "MQTT connection refused: client id %r belongs to another account (username=%r)",
                    incoming.client_id, incoming.username,
                )  # fmt: skip
                refusal = IDENTIFIER_REJECTED
        incoming.password = None  # checked; don't keep it in memory
        if refusal is not None:
            await ConnackPacket.build(0, refusal).to_stream(writer)
            await writer.close()
            raise MQTTError(f"{peer} refused")
        incoming.attributes[_PREAUTHENTICATED] = True

        client_session = incoming
        if client_session.clean_session:
            if client_session.client_id:
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing_session, _ = self._sessions[client_session.client_id]
            for attr in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password"):  # fmt: skip
                setattr(existing_session, attr, getattr(client_session, attr))
            existing_session.attributes.update(client_session.attributes)
            client_session = existing_session
            client_session.parent = 1
        else:
            client_session.parent = 0

        # The read deadline (amqtt uses keep_alive as is, and never acts on it: see handle_read_timeout).
        client_session.keep_alive += client_session.keep_alive // 2  # MQTT-3.1.2-24: 1.5 x keep-alive
        return handler, client_session

    @staticmethod
    def _may_take_over(owner: tuple[str, ...] | None, newcomer: tuple[str, ...] | None) -> bool:
        # A device may only resume (or reset) its own sessions; service accounts are trusted.
        return owner is None or owner == newcomer or (newcomer is not None and newcomer[0] == "service")

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        # Already done in _initialize_client_session.
        if session.attributes.pop(_PREAUTHENTICATED, False):
            return True
        return await super()._authenticate(session, listener)

    # -- retained messages ----------------------------------------------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        principal = _principal_of(source_session)
        if principal is not None and principal[0] == "device":
            return  # devices only report: a retained report would be replayed to the bridge forever
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # The QoS 1/2 messages queued while a persistent session was offline. amqtt sends them with
        # RETAIN=1 (they are not retained messages: MQTT-3.3.1-9 says 0) and waits for every
        # PUBACK before reading the client's packets; send them in the background instead.
        handler = self._get_handler(session)
        if handler is None:
            return
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            self._tasks_queue.append(
                asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
            )

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this on every connect for *every* filter anyone subscribed to, and never
        # checks the RECEIVE ACL: a device would get other devices' retained desired state.
        topic_filter, _ = subscription
        if topic_filter.startswith(SHARED_PREFIX):
            return  # MQTT 5: no retained messages for shared subscriptions
        own = [qos for sub_session, qos in self._subscriptions.get(topic_filter, []) if sub_session == session]
        handler = self._get_handler(session)
        if not own or handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            qos = min(own[0], retained.qos if retained.qos is not None else own[0])
            self._tasks_queue.append(
                asyncio.ensure_future(handler.mqtt_publish(topic, retained.data, qos, retain=True))
            )

    # -- shared subscriptions -------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter = subscription[0]
        if topic_filter.startswith(SHARED_PREFIX):
            group, _, inner = topic_filter[len(SHARED_PREFIX) :].partition("/")
            if not group or not inner or "+" in group or "#" in group:
                return 0x80
        return await super().add_subscription(subscription, session)

    def _matches(self, topic: str, a_filter: str) -> bool:
        if a_filter.startswith(SHARED_PREFIX):
            a_filter = a_filter[len(SHARED_PREFIX) :].partition("/")[2]
        return super()._matches(topic, a_filter)

    def _shared_targets(self, key: str, subscriptions: Sequence[tuple[Session, int]]) -> list[tuple[Session, int]]:
        """One member of the group: the next connected one (round robin), else a persistent offline one."""
        if not subscriptions:
            return []
        start = self._shared_cursor.get(key, 0)
        ordered = [subscriptions[(start + i) % len(subscriptions)] for i in range(len(subscriptions))]
        for index, (member, qos) in enumerate(ordered):
            if member.transitions.state == "connected":
                self._shared_cursor[key] = (start + index + 1) % len(subscriptions)
                return [(member, qos)]
        for member, qos in ordered:
            if not member.clean_session:
                return [(member, qos)]
        return []

    async def _run_broadcast(self, running_tasks: Any) -> None:
        # amqtt's loop, plus shared-subscription groups (and iteration over a snapshot).
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for k_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(topic, k_filter):
                continue
            targets = (
                self._shared_targets(k_filter, subscriptions) if k_filter.startswith(SHARED_PREFIX) else subscriptions
            )
            for target_session, sub_qos in list(targets):
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    continue
                connected = target_session.transitions.state == "connected"
                if not connected and not target_session.clean_session and qos in (QOS_1, QOS_2):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
                    )


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
    ) -> None:
        """service_users: username -> password of trusted accounts (the bridge).

        persistence_path: SQLite file keeping retained messages across restarts (None: memory only).
        session_expiry: seconds a disconnected persistent session (and its queue) is kept.
        """
        if not all(isinstance(u, str) and u and isinstance(p, str) and p for u, p in service_users.items()):
            raise ValueError("service_users needs non-empty usernames and passwords")
        self.host = host
        self.port = int(port)
        self._service_users = {user: _digest(password) for user, password in service_users.items()}
        self._device_auth = device_auth
        self._persistence_path = Path(persistence_path) if persistence_path else None
        self._session_expiry = session_expiry
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        _quiet_amqtt_logging()

    def __repr__(self) -> str:
        return f"<EmbeddedBroker mqtt://{self.host}:{self.port} {'running' if self.is_running else 'stopped'}>"

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
            f"{__name__}.IotcloudAuthPlugin": {
                "service_users": dict(self._service_users),
                "device_auth": self._device_auth,
            },
            f"{__name__}.IotcloudTopicPlugin": {},
        }
        if self._persistence_path is not None:
            plugins[f"{__name__}.RetainedStorePlugin"] = {"path": str(self._persistence_path)}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}", "max_connections": 0}},
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
