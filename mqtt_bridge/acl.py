"""What a device may do on the broker: one rule for the embedded broker, Mosquitto's dynamic
security roles and the HTTP auth/ACL endpoints of EMQX-style brokers.

A device logs in as `<tenant_id>/<device_id>` with its provision token as password. It may
publish its reports and its own jobs topics (not jobs/notify, which only the platform publishes),
and subscribe to (and receive) topics under its own prefix `tenant/<t>/device/<d>/`. Topic levels
are validated ids (no / + #), so a filter starting with the prefix cannot reach outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqtt_bridge import topics

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
RECEIVE = "receive"


@dataclass(frozen=True)
class DeviceLogin:
    tenant_id: str
    device_id: str


def device_username(tenant_id: str, device_id: str) -> str:
    return f"{tenant_id}/{device_id}"


def parse_username(username: str) -> DeviceLogin | None:
    """The device a broker username names, or None."""
    tenant_id, sep, device_id = username.partition("/")
    if not (sep and tenant_id and device_id) or "/" in device_id or any(c in username for c in "+#\x00"):
        return None
    return DeviceLogin(tenant_id, device_id)


def device_prefix(tenant_id: str, device_id: str) -> str:
    return topics.desired(tenant_id, device_id).removesuffix("shadow/desired")


def device_may(action: str, tenant_id: str, device_id: str, topic: str) -> bool:
    """Whether the device may publish to `topic`, or subscribe to / receive the filter or topic `topic`."""
    base = device_prefix(tenant_id, device_id)
    if action == PUBLISH:
        if topic == topics.reported(tenant_id, device_id):
            return True
        rest = topic.removeprefix(base + "jobs/") if topic.startswith(base + "jobs/") else None
        return bool(rest) and rest != "notify" and not any(c in rest for c in "+#")
    if action in (SUBSCRIBE, RECEIVE):
        return topic.startswith(base) and len(topic) > len(base)
    return False


def dynsec_acls(tenant_id: str, device_id: str) -> list[dict]:
    """device_may as Mosquitto dynamic-security ACL entries (higher priority is checked first)."""
    base = device_prefix(tenant_id, device_id)
    return [
        {"acltype": "publishClientSend", "topic": base + "jobs/notify", "allow": False, "priority": 10},
        {"acltype": "publishClientSend", "topic": topics.reported(tenant_id, device_id), "allow": True},
        {"acltype": "publishClientSend", "topic": base + "jobs/+", "allow": True},
        {"acltype": "subscribePattern", "topic": base + "#", "allow": True},
        {"acltype": "unsubscribePattern", "topic": base + "#", "allow": True},
        {"acltype": "publishClientReceive", "topic": base + "#", "allow": True},
    ]
