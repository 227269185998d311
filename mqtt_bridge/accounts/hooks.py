"""Broker login and topic decisions for brokers that ask over HTTP (EMQX's HTTP authn/authz,
VerneMQ webhooks): the same answers as the embedded broker and the dynamic-security roles.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from devices.choices import DeviceStatus
from devices.claims import claim_login_check
from devices.models import Device
from devices.selectors import active_device_for_token
from mqtt_bridge.accounts import acl
from mqtt_bridge.config import broker_settings


@dataclass(frozen=True)
class Decision:
    allow: bool
    superuser: bool = False
    reason: str = ""


def _bridge_username() -> str | None:
    return broker_settings().username


def login_decision(username: str, password: str, client_id: str) -> Decision:
    """May this client connect? The bridge's account, or a device with its current provision token
    and its own client id (acl.device_client_id: nobody takes over another client's session)."""
    broker = broker_settings()
    if broker.username and username == broker.username:
        ok = hmac.compare_digest((password or "").encode(), (broker.password or "").encode())
        return Decision(ok, superuser=ok, reason="bridge" if ok else "bad bridge password")
    claim = acl.parse_claim_username(username)
    if claim is not None:  # fleet provisioning by claim: a device registering
        if acl.claim_session(claim, client_id) is None:
            return Decision(False, reason="a claim login must connect with client id _claim/<tenant>/<session>")
        found = claim_login_check(password or "")
        if found is None or found.template.tenant_id != claim.tenant_id:
            return Decision(False, reason="unknown, revoked or expired claim, or another tenant's")
        return Decision(True, reason="claim")
    login = acl.parse_username(username)
    if login is None:
        return Decision(False, reason="username is not <tenant>/<device>")
    if not acl.client_id_allowed(login, client_id):
        return Decision(False, reason="a device must connect with its username as client id")
    device = active_device_for_token(password or "")
    if device is None or (device.tenant_id, device.device_id) != (login.tenant_id, login.device_id):
        return Decision(False, reason="unknown device, wrong token or decommissioned")
    return Decision(True, reason="device")


def topic_decision(username: str, action: str, topic: str, client_id: str | None = None) -> Decision:
    """May this (already connected) client publish / subscribe to this topic? (client_id, when the
    broker sends it, must be the device's own, as at login.)"""
    if _bridge_username() and username == _bridge_username():
        return Decision(True, superuser=True, reason="bridge")
    claim = acl.parse_claim_username(username)
    if claim is not None:  # its rights follow from its client id: the broker must send it
        session = acl.claim_session(claim, client_id)
        if session is None:
            return Decision(False, reason="a claim login's client id (_claim/<tenant>/<session>) is needed")
        allowed = acl.claim_may(action, claim.tenant_id, session, topic)
        return Decision(allowed, reason="own registration topic" if allowed else "not the session's topic")
    login = acl.parse_username(username)
    if login is None:
        return Decision(False, reason="username is not <tenant>/<device>")
    if client_id is not None and not acl.client_id_allowed(login, client_id):
        return Decision(False, reason="not the device's client id")
    if action not in (acl.PUBLISH, acl.SUBSCRIBE, acl.RECEIVE):
        return Decision(False, reason=f"unknown action {action[:20]!r}")
    active = Device.objects.filter(
        tenant_id=login.tenant_id, device_id=login.device_id, status=DeviceStatus.ACTIVE
    ).exists()
    if not active:
        return Decision(False, reason="unknown or decommissioned device")
    allowed = acl.device_may(action, login.tenant_id, login.device_id, topic)
    return Decision(allowed, reason="own topic" if allowed else "not the device's topic")
