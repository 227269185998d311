"""amqtt's Broker and per-connection handler, with the fixes the embedded broker needs (amqtt
0.12.1 internals; see the package docstring for the list)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from amqtt.adapters import BufferReader
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING, Session
from amqtt.utils import format_client_message, gen_client_id

from mqtt_bridge import topics
from mqtt_bridge.embedded.plugins import PRINCIPAL

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds a new connection gets to send its CONNECT
MAX_CONNECT_BYTES = 256 * 1024
_PREAUTHENTICATED = "iotcloud.preauthenticated"


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

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        # amqtt closes the connection of any client that publishes to a "$" topic; MQTT only asks
        # that "$" topics never match filters starting with a wildcard (amqtt's matching honours
        # that). The AWS IoT dialect lives under $aws/: its messages take amqtt's usual path here
        # (ACL check, broadcast, retain), everything else is amqtt's own handling.
        app_message = wait_deliver.result()
        topic = getattr(app_message, "topic", None) or ""
        if not topic.startswith(topics.AWS_PREFIX):
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if "#" in topic or "+" in topic:
            return False
        if not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            logger.info("%s not allowed to publish to %r", client_session.client_id, topic)
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_session.client_id, message=app_message
        )
        await self._broadcast_message(client_session, topic, app_message.data)
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        return True

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        principal = _principal_of(source_session)
        if principal is not None and principal[0] in ("device", "claim"):
            return  # devices only report (and register): a retained one would be replayed to the bridge forever
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
        if topics.is_shared(topic_filter):
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
        if topics.is_shared(topic_filter) and topics.split_shared(topic_filter) is None:
            return 0x80
        return await super().add_subscription(subscription, session)

    def _matches(self, topic: str, a_filter: str) -> bool:
        shared = topics.split_shared(a_filter)
        if shared is not None:
            a_filter = shared[1]
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
            targets = self._shared_targets(k_filter, subscriptions) if topics.is_shared(k_filter) else subscriptions
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
