"""What a device may do on the broker: one rule, one implementation, for the embedded broker,
Mosquitto's dynamic security roles and the HTTP auth/ACL hooks of EMQX-style brokers.

A device logs in as `<tenant_id>/<device_id>` with its provision token as password, and with
that same string as its MQTT client id: an account is bound to its client id, so no device can
resume, take over or kick off anybody else's session (the bridge's, another device's).

Its rights are a short list of grants (`device_grants`): publish its reports and its device
protocol requests (shadow get/update/delete, jobs) on its own topics in both dialects, subscribe
to and receive topics under its own prefixes `tenant/<t>/device/<d>/` and `$aws/things/<t>:<d>/`.
`device_may` evaluates the grants with MQTT's own matching rules, and `dynsec_acls` hands the very
same grants to Mosquitto, so both give the same answer for every topic and filter
(mqtt_bridge/tests/test_acl_agreement.py checks them against a real Mosquitto).
"""

from __future__ import annotations

from dataclasses import dataclass

from iotcloud.rules import TENANT_ID, device_login, plain_id
from mqtt_bridge import topics

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
RECEIVE = "receive"

MAX_TOPIC_BYTES = 65535  # MQTT strings are length-prefixed with two bytes


@dataclass(frozen=True)
class DeviceLogin:
    tenant_id: str
    device_id: str


@dataclass(frozen=True)
class Grant:
    action: str  # PUBLISH, SUBSCRIBE or RECEIVE
    pattern: str  # an MQTT topic filter


def device_username(tenant_id: str, device_id: str) -> str:
    return device_login(tenant_id, device_id)  # also its certificate's CN (devices.certificates)


def device_client_id(tenant_id: str, device_id: str) -> str:
    """The only MQTT client id a device's account may connect with: its username."""
    return device_username(tenant_id, device_id)


def parse_username(username: str) -> DeviceLogin | None:
    """The device a broker username names, or None."""
    tenant_id, sep, device_id = username.partition("/")
    if not (sep and tenant_id and device_id) or "/" in device_id or any(c in username for c in "+#\x00"):
        return None
    return DeviceLogin(tenant_id, device_id)


def client_id_allowed(login: DeviceLogin, client_id: str | None) -> bool:
    return client_id == device_client_id(login.tenant_id, login.device_id)


def device_grants(tenant_id: str, device_id: str) -> list[Grant]:
    """Everything a device may do. Publishing is limited to the topics the platform reads, so a
    device cannot park (retained) messages anywhere else."""
    grants = [Grant(PUBLISH, topics.reported(tenant_id, device_id))]
    for dialect in topics.DIALECTS:  # both, always: the bridge answers only MQTT_DIALECTS
        grants += [Grant(PUBLISH, p) for p in topics.device_request_patterns(dialect, tenant_id, device_id)]
    for dialect in topics.DIALECTS:
        own = topics.device_own(dialect, tenant_id, device_id)
        grants += [Grant(SUBSCRIBE, own), Grant(RECEIVE, own)]
    return grants


def device_may(action: str, tenant_id: str, device_id: str, topic: str) -> bool:
    """Whether the device may publish to `topic`, or subscribe to / receive the filter or topic `topic`."""
    if action not in (PUBLISH, SUBSCRIBE, RECEIVE):
        return False
    grants = [g.pattern for g in device_grants(tenant_id, device_id) if g.action == action]
    if action == SUBSCRIBE:
        # No shared subscriptions ($share/...) for devices: Mosquitto checks its ACL on the whole filter.
        return not topics.is_shared(topic) and valid_filter(topic) and any(filter_within(topic, p) for p in grants)
    return valid_topic(topic) and any(topic_matches(p, topic) for p in grants)


# --- claim logins (fleet provisioning by claim) -------------------------------------------------------
# A device not registered yet logs in as `_claim/<tenant>` with a claim token as password and the client
# id `_claim/<tenant>/<session>` (session: its serial, or anything random). "_" starts no tenant id, so
# no claim login is a device's, and its client id, which holds a "/" as no service account's does and
# starts as no device's, can take over no session but another claim login's of the same tenant.
CLAIM_USER_PREFIX = "_claim/"
SESSION = plain_id(64)


@dataclass(frozen=True)
class ClaimLogin:
    tenant_id: str


def claim_username(tenant_id: str) -> str:
    return f"{CLAIM_USER_PREFIX}{tenant_id}"


def claim_client_id(tenant_id: str, session: str) -> str:
    return f"{CLAIM_USER_PREFIX}{tenant_id}/{session}"


def parse_claim_username(username: str) -> ClaimLogin | None:
    if not isinstance(username, str) or not username.startswith(CLAIM_USER_PREFIX):
        return None
    tenant_id = username[len(CLAIM_USER_PREFIX) :]
    return ClaimLogin(tenant_id) if TENANT_ID.matches(tenant_id) else None


def claim_session(login: ClaimLogin, client_id: str | None) -> str | None:
    """The session a claim login's client id names (`_claim/<tenant>/<session>`), or None if it names none."""
    prefix = claim_client_id(login.tenant_id, "")
    if not isinstance(client_id, str) or not client_id.startswith(prefix):
        return None
    session = client_id[len(prefix) :]
    return session if SESSION.matches(session) else None


def claim_grants(tenant_id: str, session: str) -> list[Grant]:
    """A claim login may publish its registration and hear the answer: nothing else."""
    replies = topics.registration_replies(tenant_id, session)
    return [Grant(PUBLISH, topics.registration(tenant_id, session)), Grant(SUBSCRIBE, replies), Grant(RECEIVE, replies)]


def claim_may(action: str, tenant_id: str, session: str, topic: str) -> bool:
    return _may(claim_grants(tenant_id, session), action, topic)


def claim_certificate_grants(tenant_id: str, claim_id: int) -> list[Grant]:
    """A claim certificate's account (every device of the batch holds it) may publish registrations on
    its claim's topics and hear their answers: nothing else. It hears its batch's other answers too
    (Mosquitto's roles cannot tie a topic to the client id), so those never carry a secret: the
    bridge answers them only with a certificate for the device's own CSR (provisioning_api)."""
    requests, answers = topics.claim_registration_patterns(tenant_id, claim_id)
    return [Grant(PUBLISH, requests), Grant(SUBSCRIBE, answers), Grant(RECEIVE, answers)]


def _may(grants: list[Grant], action: str, topic: str) -> bool:
    if action not in (PUBLISH, SUBSCRIBE, RECEIVE):
        return False
    patterns = [g.pattern for g in grants if g.action == action]
    if action == SUBSCRIBE:
        return not topics.is_shared(topic) and valid_filter(topic) and any(filter_within(topic, p) for p in patterns)
    return valid_topic(topic) and any(topic_matches(p, topic) for p in patterns)


def dynsec_acls(tenant_id: str, device_id: str) -> list[dict]:
    """device_grants as Mosquitto dynamic-security ACL entries."""
    return grants_as_dynsec(device_grants(tenant_id, device_id))


def grants_as_dynsec(grants: list[Grant]) -> list[dict]:
    kinds = {
        PUBLISH: ["publishClientSend"],
        SUBSCRIBE: ["subscribePattern", "unsubscribePattern"],
        RECEIVE: ["publishClientReceive"],
    }
    return [
        {"acltype": kind, "topic": grant.pattern, "allow": True} for grant in grants for kind in kinds[grant.action]
    ]


# --- MQTT topic rules (MQTT 3.1.1 / 5, section 4.7) ------------------------------------------------


def _well_formed(text: str) -> bool:
    if not text or "\x00" in text:
        return False
    try:
        return len(text.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, the broker refuses the packet
        return False


def valid_topic(topic: str) -> bool:
    """A topic name one may publish to: no wildcards."""
    return _well_formed(topic) and "+" not in topic and "#" not in topic


def valid_filter(topic_filter: str) -> bool:
    """A subscription filter: `+` only as a whole level, `#` only as the whole last level."""
    if not _well_formed(topic_filter):
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and (level != "#" or index != len(levels) - 1)):
            return False
    return True


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether a topic name matches a filter (`a/#` also matches `a`)."""
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for index, p in enumerate(p_levels):
        if p == "#":
            return True
        if index >= len(t_levels) or (p != "+" and p != t_levels[index]):
            return False
    return len(p_levels) == len(t_levels)


def filter_within(topic_filter: str, pattern: str) -> bool:
    """Whether every topic the filter can match is matched by the pattern too."""
    f_levels, p_levels = topic_filter.split("/"), pattern.split("/")
    for index, p in enumerate(p_levels):
        if p == "#":
            return True
        if index >= len(f_levels):
            return False
        f = f_levels[index]
        if f == "#" or (p != "+" and f != p):
            return False
    return len(f_levels) == len(p_levels)
