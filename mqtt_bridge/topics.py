"""Every MQTT topic the platform uses: built and parsed here, nowhere else.

Two topic trees carry the device protocol (shadows and jobs), with the same payloads:
- native: `tenant/{tenant}/device/{device}/shadow[/name/{shadow}]/{get,update,delete}` and
  `tenant/{tenant}/device/{device}/jobs/{get,start-next}`, `.../jobs/{jobId}/{get,update}`;
- aws (the AWS IoT dialect): the same under `$aws/things/{thingName}/shadow[/name/{shadow}]/...`
  and `$aws/things/{thingName}/jobs/...`, where thingName is `{tenant}:{device}`. Tenant ids
  cannot hold ":" (iotcloud.rules.TENANT_ID), so the first ":" splits a thing name unambiguously.
Answers go to the request topic plus `/accepted` or `/rejected`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iotcloud.rules import DEVICE_ID, TENANT_ID

SHARED_PREFIX = "$share"

NATIVE, AWS = "native", "aws"
DIALECTS = (NATIVE, AWS)
SHADOW, JOBS = "shadow", "jobs"
# Operations of a Request (jobs: the AWS API names, in snake case).
GET, UPDATE, DELETE = "get", "update", "delete"
GET_PENDING, START_NEXT, DESCRIBE = "get_pending", "start_next", "describe"
ACCEPTED, REJECTED = "accepted", "rejected"
NEXT_JOB = "$next"  # DescribeJobExecution's "the next pending execution"
THING_SEPARATOR = ":"
AWS_PREFIX = "$aws/"  # the AWS IoT dialect's topics (a "$" topic: wildcards at the root never match it)
AWS_THINGS = f"{AWS_PREFIX}things/"

# Topic levels are validated ids (no / + #), so a plain split is exact.
_ID = r"[^/+#\x00]+"
_REPORTED_RE = re.compile(rf"tenant/({_ID})/device/({_ID})/shadow/reported")

REPORTED_FILTER = "tenant/+/device/+/shadow/reported"


def _base(tenant_id: str, device_id: str) -> str:
    return f"tenant/{tenant_id}/device/{device_id}"


def desired(tenant_id: str, device_id: str) -> str:
    """Platform → device, retained: the current desired state."""
    return f"{_base(tenant_id, device_id)}/shadow/desired"


def reported(tenant_id: str, device_id: str) -> str:
    """Device → platform: a report."""
    return f"{_base(tenant_id, device_id)}/shadow/reported"


def reported_rejected(tenant_id: str, device_id: str) -> str:
    """Platform → device: why a report was refused."""
    return f"{_base(tenant_id, device_id)}/shadow/reported/rejected"


def jobs_notify(tenant_id: str, device_id: str) -> str:
    """Platform → device, retained: the pending jobs list."""
    return f"{_base(tenant_id, device_id)}/jobs/notify"


def named_desired(tenant_id: str, device_id: str, shadow_name: str) -> str:
    """Platform → device, retained (native dialect): a named shadow's desired state."""
    return f"{_base(tenant_id, device_id)}/shadow/name/{shadow_name}/desired"


# --- the platform's own topics (mqtt_bridge.recovery) ----------------------------------------------
# Under tenant/, where the bridge's broker account may publish in every deployment (compose's
# iotcloud-bridge role: tenant/#), at a level no tenant id can be (iotcloud.rules.TENANT_ID starts
# with a letter or digit): no device grant (tenant/<t>/device/<d>/...) ever covers them.
PLATFORM_ROOT = "tenant/_iotcloud"
CANARY_FILTER = f"{PLATFORM_ROOT}/bridge/+/canary"
_CANARY_RE = re.compile(rf"{PLATFORM_ROOT}/bridge/({_ID})/canary")


def bridge_canary(key: str) -> str:
    """Bridge → broker, retained: one bridge's canary (key: mqtt_bridge.recovery.canary_key)."""
    return f"{PLATFORM_ROOT}/bridge/{key}/canary"


def bridge_probe(key: str) -> str:
    """Bridge → itself, not retained: marks the end of the retained canaries a check reads."""
    return f"{PLATFORM_ROOT}/bridge/{key}/probe"


def parse_canary(topic: str) -> str | None:
    """The bridge key of a canary topic, or None for anything else."""
    match = _CANARY_RE.fullmatch(topic)
    return match.group(1) if match else None


# --- fleet provisioning by claim (mqtt_bridge.provisioning_api) ----------------------------------
# A device without an identity yet logs in with a claim token (mqtt_bridge.accounts.acl.claim_username)
# and a client id of its choosing, `_claim/<tenant>/<session>`; it may only publish its registration
# request and hear the answer, on topics of its session. Under PLATFORM_ROOT (not "$iotcloud/..."): the
# bridge's account may use it in every deployment, and no device grant covers it.
PROVISIONING_ROOT = f"{PLATFORM_ROOT}/provisioning"
REGISTRATION_FILTER = f"{PROVISIONING_ROOT}/+/+/register"
_REGISTRATION_RE = re.compile(rf"{PROVISIONING_ROOT}/({_ID})/({_ID})/register")


# A device holding a claim *certificate* logs in on Mosquitto's certificate listener (its CN,
# `_claim-cert/<claim id>`, is its username and its dynamic-security account's) and registers on its
# claim's own topics: the broker's ACL is what says which claim sent it (no token in the payload).
CLAIM_REGISTRATION_FILTER = f"{PROVISIONING_ROOT}/+/claims/+/+/register"
_CLAIM_REGISTRATION_RE = re.compile(rf"{PROVISIONING_ROOT}/({_ID})/claims/([1-9][0-9]{{0,17}})/({_ID})/register")


@dataclass(frozen=True)
class Registration:
    """A registration request, parsed from its topic (the payload carries the serial, and the claim
    token unless the topic names the claim whose certificate sent it: `claim_id`)."""

    topic: str
    tenant_id: str
    session: str
    claim_id: int | None = None

    def reply_topic(self, outcome: str) -> str:
        return f"{self.topic}/{outcome}"


def registration(tenant_id: str, session: str) -> str:
    """Device (with a claim) -> platform: register; answered on + /accepted or /rejected."""
    return f"{PROVISIONING_ROOT}/{tenant_id}/{session}/register"


def registration_replies(tenant_id: str, session: str) -> str:
    """Filter: the answers to a session's registration (what its claim login may subscribe to)."""
    return f"{registration(tenant_id, session)}/+"


def claim_registration(tenant_id: str, claim_id: int, session: str) -> str:
    """Device (logged in with claim `claim_id`'s certificate) -> platform: register; answered on +
    /accepted or /rejected."""
    return f"{PROVISIONING_ROOT}/{tenant_id}/claims/{claim_id}/{session}/register"


def claim_registration_patterns(tenant_id: str, claim_id: int) -> tuple[str, str]:
    """(requests, answers) filters of a claim certificate's registrations: what its account may use."""
    requests = claim_registration(tenant_id, claim_id, "+")
    return requests, f"{requests}/+"


def parse_registration(topic: str) -> Registration | None:
    match = _REGISTRATION_RE.fullmatch(topic)
    if match is not None:
        return Registration(topic, match[1], match[2]) if TENANT_ID.matches(match[1]) else None
    match = _CLAIM_REGISTRATION_RE.fullmatch(topic)
    if match is None or not TENANT_ID.matches(match[1]):
        return None
    return Registration(topic, match[1], match[3], claim_id=int(match[2]))


# --- the device protocol: shadows and jobs, both dialects ------------------------------------------


def thing_name(tenant_id: str, device_id: str) -> str:
    """The AWS IoT thing name of a device."""
    return f"{tenant_id}{THING_SEPARATOR}{device_id}"


def parse_thing_name(name: str) -> tuple[str, str] | None:
    """(tenant_id, device_id) a thing name stands for, or None when it cannot name a device."""
    tenant_id, sep, device_id = name.partition(THING_SEPARATOR)
    if not sep or not TENANT_ID.matches(tenant_id) or not DEVICE_ID.matches(device_id):
        return None
    return tenant_id, device_id


def _device_root(dialect: str, tenant_id: str, device_id: str) -> str:
    if dialect == AWS:
        return f"{AWS_PREFIX}things/{thing_name(tenant_id, device_id)}"
    return _base(tenant_id, device_id)


def shadow_topic(dialect: str, tenant_id: str, device_id: str, shadow_name: str, suffix: str) -> str:
    """A shadow topic, e.g. suffix "update/delta"; shadow_name "" is the classic (unnamed) shadow."""
    named = f"/name/{shadow_name}" if shadow_name else ""
    return f"{_device_root(dialect, tenant_id, device_id)}/shadow{named}/{suffix}"


def jobs_topic(dialect: str, tenant_id: str, device_id: str, suffix: str) -> str:
    """A jobs topic, e.g. suffix "notify-next" or "{jobId}/update/accepted"."""
    return f"{_device_root(dialect, tenant_id, device_id)}/jobs/{suffix}"


def device_own(dialect: str, tenant_id: str, device_id: str) -> str:
    """Filter: every topic of one device in a dialect (what it may subscribe to)."""
    return f"{_device_root(dialect, tenant_id, device_id)}/#"


_SHADOW_OPS = "get|update|delete"
_LEVEL = r"[^/+#\x00]+"
_NATIVE_RE = re.compile(
    rf"tenant/(?P<tenant>{_ID})/device/(?P<device>{_ID})/(?:"
    rf"shadow(?:/name/(?P<shadow>{_LEVEL}))?/(?P<shadow_op>{_SHADOW_OPS})"
    rf"|jobs/(?P<jobs_op>get|start-next)"
    rf"|jobs/(?P<job>{_LEVEL})/(?P<job_op>get|update))"
)
_AWS_RE = re.compile(
    rf"\$aws/things/(?P<thing>{_LEVEL})/(?:"
    rf"shadow(?:/name/(?P<shadow>{_LEVEL}))?/(?P<shadow_op>{_SHADOW_OPS})"
    rf"|jobs/(?P<jobs_op>get|start-next)"
    rf"|jobs/(?P<job>{_LEVEL})/(?P<job_op>get|update))"
)


@dataclass(frozen=True)
class Request:
    """A device's request, parsed from its topic (the payload is the handler's)."""

    topic: str
    dialect: str  # NATIVE or AWS
    service: str  # SHADOW or JOBS
    operation: str  # GET/UPDATE/DELETE (shadow); GET_PENDING/START_NEXT/DESCRIBE/UPDATE (jobs)
    tenant_id: str | None  # None: an AWS thing name that names no device (answered 404)
    device_id: str | None
    thing_name: str = ""  # as written in the topic (AWS dialect), else built from the ids
    shadow_name: str = ""  # "" = the classic shadow; unchecked: the handler validates it
    job_id: str = ""  # DESCRIBE/UPDATE: as written (unchecked), or NEXT_JOB

    def reply_topic(self, outcome: str) -> str:
        """Where the answer goes: the request topic + /accepted or /rejected."""
        return f"{self.topic}/{outcome}"


def parse_request(topic: str) -> Request | None:
    """The Request a topic carries, or None when it is not a request topic of either dialect."""
    match = _NATIVE_RE.fullmatch(topic)
    if match is not None:
        dialect, tenant_id, device_id = NATIVE, match["tenant"], match["device"]
        thing = thing_name(tenant_id, device_id)
    else:
        match = _AWS_RE.fullmatch(topic)
        if match is None:
            return None
        dialect, thing = AWS, match["thing"]
        tenant_id, device_id = parse_thing_name(thing) or (None, None)
    if match["shadow_op"]:
        service, operation = SHADOW, match["shadow_op"]
    elif match["jobs_op"]:
        service, operation = JOBS, GET_PENDING if match["jobs_op"] == "get" else START_NEXT
    else:
        service, operation = JOBS, DESCRIBE if match["job_op"] == "get" else UPDATE
    return Request(
        topic=topic, dialect=dialect, service=service, operation=operation, tenant_id=tenant_id,
        device_id=device_id, thing_name=thing, shadow_name=match["shadow"] or "", job_id=match["job"] or "",
    )  # fmt: skip


def request_filters(dialects) -> list[str]:
    """What the bridge subscribes to for the device protocol of the given dialects."""
    roots = {NATIVE: "tenant/+/device/+", AWS: "$aws/things/+"}
    filters = []
    for dialect in DIALECTS:
        if dialect in dialects:
            root = roots[dialect]
            filters += [f"{root}/shadow/{op}" for op in ("get", "update", "delete")]
            filters += [f"{root}/shadow/name/+/{op}" for op in ("get", "update", "delete")]
            filters += [f"{root}/jobs/get", f"{root}/jobs/start-next", f"{root}/jobs/+/get", f"{root}/jobs/+/update"]
    return filters


def device_request_patterns(dialect: str, tenant_id: str, device_id: str) -> list[str]:
    """Topic filters a device may publish its requests on (its own thing only), in one dialect."""
    root = _device_root(dialect, tenant_id, device_id)
    return [
        *(f"{root}/shadow/{op}" for op in ("get", "update", "delete")),
        *(f"{root}/shadow/name/+/{op}" for op in ("get", "update", "delete")),
        f"{root}/jobs/get", f"{root}/jobs/start-next", f"{root}/jobs/+/get", f"{root}/jobs/+/update",
    ]  # fmt: skip


def partition_key(topic: str) -> str:
    """The device a message is about, as its thing name `{tenant}:{device}` in both dialects (so one
    ingest worker takes all of a device's messages, in order: mqtt_bridge.partitions); any other topic
    is its own key. A plain split, no regular expression: it runs on the network thread per message."""
    if topic.startswith("tenant/"):
        levels = topic.split("/", 4)
        if len(levels) > 3 and levels[2] == "device":
            return f"{levels[1]}{THING_SEPARATOR}{levels[3]}"
    elif topic.startswith(AWS_THINGS):
        levels = topic.split("/", 3)
        if len(levels) > 2:
            return levels[2]
    return topic


def parse_reported(topic: str) -> tuple[str, str] | None:
    """(tenant_id, device_id) of a reported topic, or None for anything else."""
    match = _REPORTED_RE.fullmatch(topic)
    return (match.group(1), match.group(2)) if match else None


def split_shared(topic_filter: str) -> tuple[str, str] | None:
    """(group, inner filter) of `$share/<group>/<filter>`, None for anything else (or a malformed one)."""
    if not topic_filter.startswith(SHARED_PREFIX + "/"):
        return None
    group, _, inner = topic_filter[len(SHARED_PREFIX) + 1 :].partition("/")
    if not group or not inner or "+" in group or "#" in group:
        return None
    return group, inner


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith(SHARED_PREFIX + "/")


def dynsec_response(control_topic: str) -> str:
    """Where Mosquitto's dynamic security plugin answers the commands sent to `control_topic`."""
    return f"{control_topic}/response"


def subscription(topic_filter: str, shared_group: str = "") -> str:
    """The filter to subscribe to: shared (load split between bridges) when a group is set."""
    return f"{SHARED_PREFIX}/{shared_group}/{topic_filter}" if shared_group else topic_filter
