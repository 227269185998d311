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
from django.utils import timezone

from devices.choices import CredentialKind, DeviceStatus
from devices.models import Device, ProvisioningClaim
from iotcloud.rules import CLAIM_CERTIFICATE_PREFIX, claim_certificate_login
from iotcloud.sealing import unseal
from mqtt_bridge.accounts import acl, dynsec

logger = logging.getLogger(__name__)

Runner = Callable[[Sequence[dict]], list[dynsec.Outcome]]


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
    """(pk, version) of the rows whose account the broker now has as the database says."""
    deleted, active = [], []
    for pk, tenant_id, device_id, status, version, secret in rows:
        if status != DeviceStatus.ACTIVE:
            deleted.append((pk, tenant_id, device_id, version))
            continue
        password = unseal(secret) if secret else None
        if secret and password is None:
            logger.error("broker account %s/%s: token unreadable (BROKER_CREDENTIALS_KEY changed?); rotate it",
                         tenant_id, device_id)  # fmt: skip
        active.append(((pk, tenant_id, device_id, version), password))
    done = []
    if deleted:
        plans = [dynsec.delete_commands(t, d) for _, t, d, _ in deleted]
        for row, mine in zip(deleted, _per_plan(run, plans), strict=True):
            if all(o.ok or "not found" in o.error.lower() for o in mine):
                done.append((row[0], row[3]))
            else:
                _log_failure(acl.device_username(row[1], row[2]), mine)
    if active:
        results = ensure_device_accounts(run, [(row[1], row[2], password) for row, password in active])
        done += [(row[0], row[3]) for (row, _), (ok, _) in zip(active, results, strict=True) if ok]
    return done


def claim_accounts_sync_pending(*, run: Runner, limit: int = 200) -> int:
    """Apply one batch of pending claim-certificate accounts (a new claim: its account; a revoked or
    expired one: none); returns how many the broker confirmed."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            ProvisioningClaim.objects.filter(broker_account_version__gt=F("broker_synced_version"))
            .order_by("id")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("id", "template__tenant_id", "revoked_at", "expires_at", "broker_account_version")[:limit]
        )
        if not rows:
            return 0
        done = []
        gone = [row for row in rows if row[2] is not None or (row[3] is not None and row[3] <= now)]
        live = [row for row in rows if row not in gone]
        if gone:
            plans = [dynsec.delete_account_commands(dynsec.claim_account(t, pk)) for pk, t, *_ in gone]
            for row, mine in zip(gone, _per_plan(run, plans), strict=True):
                if all(o.ok or "not found" in o.error.lower() for o in mine):
                    done.append((row[0], row[4]))
                else:
                    _log_failure(dynsec.claim_account(row[1], row[0]).username, mine)
        if live:
            results = ensure_accounts(run, [(dynsec.claim_account(t, pk), None) for pk, t, *_ in live])
            done += [(row[0], row[4]) for row, (ok, _) in zip(live, results, strict=True) if ok]
        for pk, version in done:
            ProvisioningClaim.objects.filter(pk=pk, broker_account_version=version).update(
                broker_synced_version=version
            )
    logger.info("claim certificate accounts applied: %d of %d", len(done), len(rows))
    return len(done)


def _per_plan(run: Runner, plans: list[list[dict]]) -> list[list[dynsec.Outcome]]:
    """Run several devices' commands in one control batch; the outcomes, split back per device."""
    outcomes = run([command for plan in plans for command in plan])
    split, position = [], 0
    for plan in plans:
        split.append(outcomes[position : position + len(plan)])
        position += len(plan)
    return split


def _exists(outcome: dynsec.Outcome) -> bool:
    return not outcome.ok and dynsec.ALREADY_EXISTS in outcome.error.lower()


def ensure_device_accounts(run: Runner, devices: Sequence[tuple[str, str, str | None]]) -> list[tuple[bool, bool]]:
    """Give each (tenant_id, device_id, password or None: keep it) a client bound to its client id
    and a role with exactly the current ACLs (ensure_accounts)."""
    return ensure_accounts(run, [(dynsec.device_account(t, d), password) for t, d, password in devices])


def ensure_accounts(run: Runner, accounts: Sequence[tuple[dynsec.Account, str | None]]) -> list[tuple[bool, bool]]:
    """Give each (account, password or None: keep it) its client and its role with exactly the
    account's ACLs, in three control batches for all of them.

    Returns per account (ok, created): created means the client did not exist before (so, with
    no password given, it has none now). Failures are logged; the caller retries them.
    """
    first = _per_plan(run, [dynsec.upsert_account_commands(account, password) for account, password in accounts])
    results, role_exists, client_exists = [], [], []
    for (account, _), (role, client) in zip(accounts, first, strict=True):
        ok = (role.ok or _exists(role)) and (client.ok or _exists(client))
        if not ok:
            _log_failure(account.username, [role, client])
        results.append([ok, client.ok])
        role_exists.append(ok and _exists(role))
        client_exists.append(ok and _exists(client))

    # Existing roles: read their ACLs, to change only what differs.
    to_read = [i for i, flag in enumerate(role_exists) if flag]
    current: dict[int, list[dict]] = {}
    if to_read:
        read = _per_plan(run, [[dynsec.get_role_command(accounts[i][0])] for i in to_read])
        for i, (outcome,) in zip(to_read, read, strict=True):
            if outcome.ok:
                current[i] = list((outcome.data or {}).get("role", {}).get("acls", []))
            else:
                _log_failure(accounts[i][0].username, [outcome])
                results[i][0] = False

    fixes = {}
    for i, (account, password) in enumerate(accounts):
        if not results[i][0]:
            continue
        plan = dynsec.role_acl_commands(account, current[i]) if i in current else []
        if client_exists[i]:
            plan += dynsec.client_update_commands(account, password)
        if plan:
            fixes[i] = plan
    if fixes:
        for i, mine in zip(fixes, _per_plan(run, list(fixes.values())), strict=True):
            if not all(o.ok or (o.command == "removeRoleACL" and "not found" in o.error.lower()) for o in mine):
                _log_failure(accounts[i][0].username, mine)
                results[i][0] = False
    return [(ok, created) for ok, created in results]


def _log_failure(username: str, outcomes) -> None:
    errors = "; ".join(f"{o.command}: {o.error}" for o in outcomes if not o.ok)
    logger.warning("broker account %s not applied (will retry): %s", username, errors)


@dataclass
class ResyncReport:
    rebuilt: int = 0
    removed: list[str] = field(default_factory=list)
    without_password: list[str] = field(default_factory=list)  # "<tenant>/<device>": need a token rotation


def broker_accounts_resync(control: dynsec.DynsecClient) -> ResyncReport:
    """Rebuild every device's broker account from the database (after a broker was replaced or wiped).

    Pending changes (new tokens) are applied first. Then each active device's role is brought to
    the current ACLs, its client bound to its client id, and created if missing; a client created here has no
    password (the database keeps only token digests), so it cannot log in until the device's
    token is rotated: those are listed. Device accounts the database does not know as active
    (decommissioned, deleted) are removed. Live claim certificates' accounts are rebuilt too (they
    have no password to lose). Other accounts (the bridge's, admins') are left alone.
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
        results = ensure_device_accounts(control.run, [(t, d, None) for t, d in chunk])
        failed = [acl.device_username(t, d) for (t, d), (ok, _) in zip(chunk, results, strict=True) if not ok]
        if failed:
            raise dynsec.DynsecError(f"accounts not rebuilt (see the log): {', '.join(failed[:5])}")
        report.rebuilt += len(chunk)
        report.without_password += [
            acl.device_username(t, d) for (t, d), (_, created) in zip(chunk, results, strict=True) if created
        ]
    while claim_accounts_sync_pending(run=control.run):
        pass
    now = timezone.now()
    claims = list(
        ProvisioningClaim.objects.filter(credential=CredentialKind.CERTIFICATE, revoked_at__isnull=True)
        .exclude(expires_at__lte=now)
        .values_list("id", "template__tenant_id")
    )
    results = ensure_accounts(control.run, [(dynsec.claim_account(t, pk), None) for pk, t in claims])
    if not all(ok for ok, _ in results):
        raise dynsec.DynsecError("claim certificate accounts not rebuilt (see the log)")
    live_claims = {claim_certificate_login(pk) for pk, _ in claims}
    stale_claims = sorted(u for u in existing if u.startswith(CLAIM_CERTIFICATE_PREFIX) and u not in live_claims)
    for username in stale_claims:  # revoked, expired, or their template deleted
        claim_id = username[len(CLAIM_CERTIFICATE_PREFIX) :]
        control.run(dynsec.delete_account_commands(dynsec.claim_account("", claim_id)))
    stale = sorted(
        u for u in existing
        if acl.parse_username(u) and not u.startswith(CLAIM_CERTIFICATE_PREFIX) and u not in wanted
    )  # fmt: skip
    for username in stale:
        login = acl.parse_username(username)
        control.run(dynsec.delete_commands(login.tenant_id, login.device_id))
    report.removed = stale + stale_claims
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
                while not self.stopping.is_set() and claim_accounts_sync_pending(run=self.control.run):
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
