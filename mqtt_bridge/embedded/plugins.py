"""amqtt plugins of the embedded broker: who may connect (service accounts, devices with their token
and their own client id), what a device may touch (mqtt_bridge.accounts.acl), and retained
messages kept in a SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import BrokerContext, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session

from mqtt_bridge.accounts import acl

logger = logging.getLogger(__name__)

# Session.attributes keys (amqtt asks for namespaced keys).
PRINCIPAL = (
    "iotcloud.principal"  # ("service", username), ("device", tenant_id, device_id), ("claim", tenant_id, session)
)


def password_digest(secret: str) -> str:
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


def _lookup_claim(tenant_id: str, token: str) -> bool:
    """Whether token is a usable claim token of tenant_id (fleet provisioning by claim; in a worker thread)."""
    from django.db import close_old_connections, connection

    from devices.claims import claim_login_check

    close_old_connections()
    try:
        claim = claim_login_check(token)
        return claim is not None and claim.template.tenant_id == tenant_id
    finally:
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
            return ("service", username) if hmac.compare_digest(password_digest(password), expected) else None
        if not self.config.device_auth:
            return None
        claim = acl.parse_claim_username(username)
        if claim is not None:
            session = acl.claim_session(claim, client_id)
            if session is None:
                logger.info("MQTT connection refused: a claim login must use client id %r<session>, not %r",
                            acl.claim_client_id(claim.tenant_id, ""), client_id)  # fmt: skip
                return None
            if await asyncio.to_thread(_lookup_claim, claim.tenant_id, password):
                return ("claim", claim.tenant_id, session)
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
        if principal[0] == "claim":
            allowed = acl.claim_may(str(action), principal[1], principal[2], topic)
            if not allowed and action != Action.RECEIVE:
                logger.info("MQTT %s denied: claim login %s/%s topic %r", action, principal[1], principal[2], topic)
            return allowed
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
