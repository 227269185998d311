"""Per-device broker accounts (MQTT_DEVICE_AUTH=dynsec): keep Mosquitto in step with the database.

The same reconciliation as desired delivery: provisioning, rotation and decommission advance a
device's broker_account_version (devices.services); the bridge claims devices whose account is
behind (FOR UPDATE SKIP LOCKED, so several bridges split the work), applies them in one control
batch, and records what the broker confirmed. A broker outage delays accounts, never loses them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.db.utils import DatabaseError, InterfaceError

from devices.choices import DeviceStatus
from devices.models import Device
from mqtt_bridge import acl, dynsec
from mqtt_bridge.secrets import unseal

logger = logging.getLogger(__name__)

Runner = Callable[[Sequence[dict]], list[dynsec.Outcome]]


def _harmless(outcome: dynsec.Outcome, *, deleting: bool) -> bool:
    """Errors that mean the broker already is as we want it."""
    if outcome.ok:
        return True
    error = outcome.error.lower()
    if deleting:
        return "not found" in error
    return outcome.command in ("createRole", "addClientRole") and dynsec.ALREADY_EXISTS in error


def broker_accounts_sync_pending(*, run: Runner, limit: int = 200) -> int:
    """Apply one batch of pending device accounts; returns how many the broker confirmed."""
    with transaction.atomic():
        rows = list(
            Device.objects.filter(broker_account_version__gt=F("broker_synced_version"))
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "tenant_id", "device_id", "status", "broker_account_version", "broker_secret")[:limit]
        )
        if not rows:
            return 0
        done = _apply(rows, run)
        for pk, version in done:
            Device.objects.filter(pk=pk, broker_account_version=version).update(
                broker_synced_version=version, broker_secret=""
            )
    logger.info("broker accounts applied: %d of %d", len(done), len(rows))
    return len(done)


def _apply(rows, run: Runner) -> list[tuple[int, int]]:
    plans = []  # (row, commands, deleting, password)
    for pk, tenant_id, device_id, status, version, secret in rows:
        if status != DeviceStatus.ACTIVE:
            commands = dynsec.delete_commands(tenant_id, device_id)
            plans.append(((pk, tenant_id, device_id, version), commands, True, None))
            continue
        password = unseal(secret) if secret else None
        if secret and password is None:
            logger.error("broker account %s/%s: token unreadable (BROKER_CREDENTIALS_KEY changed?); rotate it",
                         tenant_id, device_id)  # fmt: skip
        commands = dynsec.upsert_commands(tenant_id, device_id, password)
        plans.append(((pk, tenant_id, device_id, version), commands, False, password))
    outcomes = run([command for _, commands, _, _ in plans for command in commands])

    done, existing = [], []
    position = 0
    for row, commands, deleting, password in plans:
        mine = outcomes[position : position + len(commands)]
        position += len(commands)
        client_exists = not deleting and any(
            o.command == "createClient" and not o.ok and dynsec.ALREADY_EXISTS in o.error.lower() for o in mine
        )
        if client_exists:
            existing.append((row, password))
        elif all(_harmless(o, deleting=deleting) for o in mine):
            done.append((row[0], row[3]))
        else:
            _log_failure(row, mine)
    if existing:
        updates = [dynsec.update_commands(row[1], row[2], password) for row, password in existing]
        outcomes = run([command for commands in updates for command in commands])
        position = 0
        for (row, _), commands in zip(existing, updates, strict=True):
            mine = outcomes[position : position + len(commands)]
            position += len(commands)
            if all(_harmless(o, deleting=False) for o in mine):
                done.append((row[0], row[3]))
            else:
                _log_failure(row, mine)
    return done


def _log_failure(row, outcomes) -> None:
    errors = "; ".join(f"{o.command}: {o.error}" for o in outcomes if not o.ok)
    logger.warning("broker account %s/%s not applied (will retry): %s", row[1], row[2], errors)


@dataclass
class ResyncReport:
    rebuilt: int = 0
    removed: list[str] = field(default_factory=list)
    without_password: list[str] = field(default_factory=list)  # "<tenant>/<device>": need a token rotation


def broker_accounts_resync(control: dynsec.DynsecClient) -> ResyncReport:
    """Rebuild every device's broker account from the database (after a broker was replaced or wiped).

    Pending changes (new tokens) are applied first. Then each active device's role is recreated
    with the current ACLs and its client created if missing; a client created here has no
    password (the database keeps only token digests), so it cannot log in until the device's
    token is rotated: those are listed. Device accounts the database does not know as active
    (decommissioned, deleted) are removed. Other accounts (the bridge's, admins') are left alone.
    """
    while broker_accounts_sync_pending(run=control.run):
        pass
    report = ResyncReport()
    existing = set(control.query("listClients", "clients"))
    active = list(
        Device.objects.filter(status=DeviceStatus.ACTIVE).order_by("id").values_list("tenant_id", "device_id")
    )
    wanted = {acl.device_username(t, d) for t, d in active}
    for start in range(0, len(active), 200):
        chunk = active[start : start + 200]
        commands, created = [], []
        for tenant_id, device_id in chunk:
            username = acl.device_username(tenant_id, device_id)
            if username in existing:
                commands += dynsec.rebuild_commands(tenant_id, device_id)[:2]  # role only
                commands += dynsec.update_commands(tenant_id, device_id, None)
            else:
                commands += dynsec.rebuild_commands(tenant_id, device_id)
                created.append(username)
        outcomes = control.run(commands)
        failed = [o for o in outcomes if not o.ok and "not found" not in o.error.lower()]
        if failed:
            raise dynsec.DynsecError("; ".join(f"{o.command}: {o.error}" for o in failed[:5]))
        report.rebuilt += len(chunk)
        report.without_password += created
    stale = sorted(u for u in existing if acl.parse_username(u) and u not in wanted)
    for username in stale:
        login = acl.parse_username(username)
        control.run(dynsec.delete_commands(login.tenant_id, login.device_id))
    report.removed = stale
    logger.info("broker resync: %d accounts rebuilt, %d removed, %d without password",
                report.rebuilt, len(report.removed), len(report.without_password))  # fmt: skip
    return report


class AccountsLoop:
    """The bridge's thread for device accounts: applies pending ones when woken or every poll_seconds."""

    def __init__(self, broker, *, client_id: str, stopping: threading.Event, poll_seconds: float):
        self.broker, self.client_id = broker, client_id
        self.stopping, self.poll_seconds = stopping, poll_seconds
        self.wake = threading.Event()
        self.control: dynsec.DynsecClient | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.poll_seconds)
            self.wake.clear()
            if self.stopping.is_set():
                break
            close_old_connections()
            try:
                if self.control is None:
                    self.control = dynsec.DynsecClient(self.broker, client_id=self.client_id)
                while not self.stopping.is_set() and broker_accounts_sync_pending(run=self.control.run):
                    pass
            except (dynsec.DynsecError, OSError, RuntimeError, ValueError) as exc:  # broker away: try again
                logger.warning("broker accounts: %s; retrying", exc)
                self._drop_control()
                self.stopping.wait(1)
            except (DatabaseError, InterfaceError):
                logger.exception("broker accounts: database error; retrying")
                connection.close()
                self.stopping.wait(1)
        self._drop_control()

    def _drop_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
