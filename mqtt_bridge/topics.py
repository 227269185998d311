"""Every MQTT topic the platform uses: built and parsed here, nowhere else."""

from __future__ import annotations

import re

SHARED_PREFIX = "$share"

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


def device_all(tenant_id: str, device_id: str) -> str:
    """Filter: every topic of one device (what its account may subscribe to)."""
    return f"{_base(tenant_id, device_id)}/#"


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
