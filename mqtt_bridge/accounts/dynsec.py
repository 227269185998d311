"""Mosquitto's dynamic security plugin, driven over its control topic.

Each device gets a client `<tenant>/<device>` (password = its provision token, bound to the
client id `<tenant>/<device>`: no other client id logs in with it) and a role of its own
holding its ACLs: Mosquitto 2.0 roles cannot say "%u", so one role per device. A claim
certificate gets a client `_claim-cert/<claim id>` without a password and a role of its own. Commands
go in batches to `$CONTROL/dynamic-security/v1`; the plugin answers each batch on `.../response`
with one entry per command (an "error" member when it failed).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from django.conf import settings

from iotcloud.rules import claim_certificate_login
from mqtt_bridge import topics
from mqtt_bridge.accounts import acl
from mqtt_bridge.client import make_client
from mqtt_bridge.config import BrokerSettings

logger = logging.getLogger(__name__)

ROLE_PREFIX = "iotcloud-device:"
CLAIM_ROLE_PREFIX = "iotcloud-claim:"
ALREADY_EXISTS = "already exists"


@dataclass(frozen=True)
class Account:
    """One client of the plugin and the one role of its own that holds its ACLs."""

    username: str
    rolename: str
    acls: list[dict]
    clientid: str | None = None  # the only client id it may connect with (None: any)


def role_name(tenant_id: str, device_id: str) -> str:
    return ROLE_PREFIX + acl.device_username(tenant_id, device_id)


def device_account(tenant_id: str, device_id: str) -> Account:
    return Account(acl.device_username(tenant_id, device_id), role_name(tenant_id, device_id),
                   acl.dynsec_acls(tenant_id, device_id), acl.device_client_id(tenant_id, device_id))  # fmt: skip


def claim_account(tenant_id: str, claim_id: int) -> Account:
    """A claim certificate's account: username its CN, no password (it logs in with the certificate only,
    on the certificate listener), any client id (a whole batch shares it)."""
    username = claim_certificate_login(claim_id)
    return Account(username, CLAIM_ROLE_PREFIX + username,
                   acl.grants_as_dynsec(acl.claim_certificate_grants(tenant_id, claim_id)))  # fmt: skip


def _client_command(command: str, account: Account, password: str | None) -> dict:
    """createClient / modifyClient: the username, bound client id, its one role (and password)."""
    client = {"command": command, "username": account.username, "roles": [{"rolename": account.rolename}]}
    if account.clientid is not None:
        client["clientid"] = account.clientid
    if password is not None:
        client["password"] = password
    return client


def upsert_account_commands(account: Account, password: str | None) -> list[dict]:
    """Role (with ACLs) and client (bound to its client id); either may exist already, which
    the caller then brings in step with role_acl_commands / client_update_commands."""
    role = {"command": "createRole", "rolename": account.rolename, "acls": account.acls}
    return [role, _client_command("createClient", account, password)]


def upsert_commands(tenant_id: str, device_id: str, password: str | None) -> list[dict]:
    return upsert_account_commands(device_account(tenant_id, device_id), password)


def get_role_command(account: Account) -> dict:
    return {"command": "getRole", "rolename": account.rolename}


def role_acl_commands(account: Account, current: Sequence[dict]) -> list[dict]:
    """Bring an existing role's ACLs (`current`, as getRole lists them) to the account's.

    Entry by entry, never deleteRole + createRole: Mosquitto 2.0.11 crashes now and then when a
    role its clients hold is deleted and created again (seen in this project's tests).
    """
    role = account.rolename
    wanted = {(a["acltype"], a["topic"], a["allow"]) for a in account.acls}
    have = {(a.get("acltype"), a.get("topic"), a.get("allow")) for a in current}
    remove = [{"command": "removeRoleACL", "rolename": role, "acltype": kind, "topic": topic}
              for kind, topic, allow in sorted(have - wanted, key=str)]  # fmt: skip
    add = [{"command": "addRoleACL", "rolename": role, "acltype": kind, "topic": topic, "allow": allow}
           for kind, topic, allow in sorted(wanted - have, key=str)]  # fmt: skip
    return remove + add


def client_update_commands(account: Account, password: str | None) -> list[dict]:
    """For an existing client: bind its client id, set its roles to exactly its own (and the new
    password), and enable it.

    modifyClient, not addClientRole: Mosquitto 2.0 answers addClientRole for a role the client
    already has with "Internal error".
    """
    return [_client_command("modifyClient", account, password), {"command": "enableClient",
                                                                  "username": account.username}]  # fmt: skip


def delete_account_commands(account: Account) -> list[dict]:
    """Delete the client (its sessions are disconnected), then its role (held by nobody now)."""
    return [{"command": "deleteClient", "username": account.username},
            {"command": "deleteRole", "rolename": account.rolename}]  # fmt: skip


def delete_commands(tenant_id: str, device_id: str) -> list[dict]:
    return delete_account_commands(device_account(tenant_id, device_id))


class DynsecError(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    command: str
    error: str | None
    data: dict | None = None  # what a get/list command answered

    @property
    def ok(self) -> bool:
        return self.error is None


class DynsecClient:
    """A control connection: send a batch, wait for its response (one batch in flight at a time)."""

    def __init__(self, broker: BrokerSettings, *, client_id: str, timeout: float = 10.0):
        self.topic = settings.MQTT_DYNSEC_TOPIC
        self.client_id = client_id
        self.timeout = timeout
        self._sequence = 0
        self._responses: queue.Queue[dict] = queue.Queue()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = make_client(broker, client_id=client_id, protocol=mqtt.MQTTv311, persistent=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise DynsecError(f"no answer from the broker's dynamic security plugin at {broker}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            logger.error("dynsec control connection refused: %s", reason_code)
            return
        client.subscribe(topics.dynsec_response(self.topic), qos=1)

    def _on_message(self, client, userdata, message):
        try:
            self._responses.put(json.loads(message.payload))
        except ValueError:
            logger.warning("dynsec: unreadable response %r", message.payload[:200])

    def run(self, commands: Sequence[dict]) -> list[Outcome]:
        if not commands:
            return []
        responses = self._exchange([dict(c) for c in commands])
        return [Outcome(r.get("command", ""), r.get("error"), r.get("data")) for r in responses]

    def query(self, command: str, key: str) -> list[str]:
        """listClients -> usernames, listRoles -> role names."""
        (response,) = self._exchange([{"command": command, "verbose": False, "count": -1, "offset": 0}])
        if response.get("error"):
            raise DynsecError(f"{command}: {response['error']}")
        return list(response.get("data", {}).get(key, []))

    def _exchange(self, commands: list[dict]) -> list[dict]:
        """Send one batch and wait for its answer. Every control client sees every answer on the
        response topic (other bridges, a resync), so ours are recognised by their correlationData."""
        with self._lock:
            self._sequence += 1
            tag = f"{self.client_id}:{self._sequence}"
            for command in commands:
                command["correlationData"] = tag
            info = self.client.publish(self.topic, json.dumps({"commands": commands}), qos=1)
            info.wait_for_publish(self.timeout)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    answer = self._responses.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise DynsecError(
                        f"the dynamic security plugin did not answer within {self.timeout:.0f} s"
                    ) from None
                responses = answer.get("responses", [])
                if responses and responses[0].get("correlationData") == tag:
                    break
        if len(responses) != len(commands):
            raise DynsecError(f"expected {len(commands)} answers, got {len(responses)}: {answer!r:.300}")
        return responses

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
