"""Tenants and devices in bulk, in this process (after app.setup_django): the only module that knows the models.

The tenant goes through devices.services.tenant_create; devices are bulk-created with
the columns devices.services.device_provision (and, with `desired`, one
twin.services.twin_update_desired) would leave, because 100,000 single provisions take
far longer than a benchmark should. If the app's models move, this is the file to adapt.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from bench.common import BenchError, log


class Seeded(NamedTuple):
    pk: int
    device_id: str
    token: str  # the provision token (X-Provision-Token)


def devices(
    count: int,
    *,
    tenant_id: str = "bench",
    width: int = 5,
    tags: dict | None = None,
    desired: dict | None = None,
    batch_size: int = 5000,
):
    """One tenant and `count` devices dev-<n> (n from 0, zero-padded to `width`); returns (tenant, [Seeded]).

    With `desired`, every device holds it at desired_version 1 (else version 0, empty).
    Ends with VACUUM ANALYZE device_state (a fresh table has no planner statistics).
    """
    from django.db import connection

    from devices.models import Device
    from devices.services import tenant_create
    from devices.tokens import hash_token, new_provision_token

    started = time.monotonic()
    tenant = tenant_create(tenant_id=tenant_id, name=tenant_id.title())
    ids = [f"dev-{n:0{width}d}" for n in range(count)]
    tokens = [new_provision_token() for _ in ids]
    Device.objects.bulk_create(
        [
            Device(
                tenant=tenant,
                device_id=device_id,
                provision_token_hash=hash_token(token),
                tags=tags or {},
                desired_state=desired or {},
                desired_version=1 if desired else 0,
            )
            for device_id, token in zip(ids, tokens, strict=True)
        ],
        batch_size=batch_size,
    )
    pks = dict(Device.objects.filter(tenant=tenant).values_list("device_id", "pk"))
    if len(pks) != count:
        raise BenchError(f"seed: expected {count} devices, found {len(pks)}")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE device_state")
    log(f"seeded tenant {tenant_id!r} with {count:,} devices in {time.monotonic() - started:.1f} s")
    return tenant, [Seeded(pks[d], d, t) for d, t in zip(ids, tokens, strict=True)]


def vacuum_analyze(table: str | None = None) -> float:
    """VACUUM ANALYZE (one table or the whole database); returns the seconds it took."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}" if table else "VACUUM ANALYZE")
    return round(time.monotonic() - started, 2)


def device_objects(tenant) -> list:
    """The tenant's devices as model instances (what the twin services take), in device_id order."""
    from devices.models import Device

    return list(Device.objects.filter(tenant=tenant).order_by("device_id"))


# --- a whole fleet in set-based SQL (bench/fleet_size: 1,000,000 devices in about a minute) ------------


class Fleet(NamedTuple):
    tenant: object
    count: int
    token_key: str  # device n's provision token is token(n): "iotd_<key>-<n>" (its digest is what is stored)
    pending_every: int  # devices n with n % pending_every == 0: desired_version 2, reported 1 (sync PENDING)
    stale_pct: int  # others with 1 <= n % 100 <= stale_pct: last seen two days ago (sync STALE); the rest SYNCED
    executions: int
    seconds: dict

    def token(self, n: int) -> str:
        return f"iotd_{self.token_key}-{n}"

    def sync_status(self, n: int) -> str:
        """What twin.shadow.sync_status says of device n right after the seed."""
        if n % self.pending_every == 0:
            return "PENDING"
        return "STALE" if 1 <= n % 100 <= self.stale_pct else "SYNCED"


def fleet(
    count: int, *, tenant_id: str = "bench", width: int = 7, pending: int = 1000, stale_pct: int = 3,
    second_job_every: int = 10,
) -> Fleet:  # fmt: skip
    """One tenant and `count` devices dev-<n> in set-based SQL (INSERT ... SELECT generate_series), as a
    fleet in steady state looks: every device at desired {"interval": 30} (version 1, published, reported
    back, with its per-field metadata), last seen a few seconds ago; about `pending` of them, spread
    over the fleet, with a second desired version (published) the device has not reported yet (a wave
    of a rollout under way: the same number at any fleet size), and `stale_pct` % last seen two days
    ago (see Fleet).
    Jobs: "fleet-1" with a QUEUED, released execution for every device, "fleet-2" one for every
    `second_job_every`-th (the device's pending list has one or two; nothing left to notify).

    The columns are those devices.services.device_provision, twin.services and jobs.services.job_create
    leave (the same as devices() above, which goes through the ORM and is too slow for a million).
    Ends with VACUUM ANALYZE of the tables written. Returns the Fleet (device n's token: fleet.token(n)).
    """
    import secrets

    from django.db import connection, transaction

    from devices.services import tenant_create
    from jobs.choices import ExecutionStatus, JobStatus

    seconds = {}
    started = time.monotonic()
    key = secrets.token_hex(6)
    pending_every = max(1, count // max(pending, 1))
    tenant = tenant_create(tenant_id=tenant_id, name=tenant_id.title())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(
            """
            INSERT INTO device_state (
                tenant_id, device_id, provision_token_hash, status, tags, last_seen, created_at,
                desired_state, reported_state, desired_version, reported_version, shadow_updated_at,
                reported_updated_at, desired_metadata, reported_metadata, shadow_version,
                desired_published_version, broker_account_version, broker_synced_version, broker_secret)
            SELECT %(tenant)s, 'dev-' || lpad(n::text, %(width)s, '0'),
                   encode(sha256(convert_to('iotd_' || %(key)s || '-' || n, 'UTF8')), 'hex'),
                   'active', jsonb_build_object('fleet', 'bench', 'ring', (n %% 10)::text),
                   CASE WHEN NOT pend AND n %% 100 BETWEEN 1 AND %(stale)s
                        THEN now() - interval '2 days' ELSE now() - interval '5 seconds' END,
                   now() - interval '30 days',
                   CASE WHEN pend THEN '{"interval": 60}' ELSE '{"interval": 30}' END::jsonb,
                   '{"interval": 30}'::jsonb,
                   CASE WHEN pend THEN 2 ELSE 1 END, 1, now() - interval '1 hour', now() - interval '1 hour',
                   jsonb_build_object('interval', jsonb_build_object('timestamp', ts)),
                   jsonb_build_object('interval', jsonb_build_object('timestamp', ts)),
                   CASE WHEN pend THEN 3 ELSE 2 END, CASE WHEN pend THEN 2 ELSE 1 END, 0, 0, ''
            FROM generate_series(0, %(count)s - 1) AS n,
                 LATERAL (SELECT n %% %(every)s = 0 AS pend,
                                 extract(epoch FROM now() - interval '1 hour')::bigint AS ts) AS x
            ORDER BY n
            """,
            {"tenant": tenant_id, "width": width, "key": key, "every": pending_every, "stale": stale_pct,
             "count": count},
        )  # fmt: skip
        seconds["devices"] = round(time.monotonic() - started, 2)
        executions = 0
        for job_id, every in (("fleet-1", 1), ("fleet-2", second_job_every)):
            t0 = time.monotonic()
            cursor.execute(
                """
                INSERT INTO jobs (tenant_id, job_id, document_type, document_params, description, status, targets,
                                  remaining, total, created_at, updated_at, cancel_reason, abort_config, released,
                                  rollout, rollout_allowance, scheduling, retry_config, template, continuous,
                                  revert_summary, reverting)
                VALUES (%(tenant)s, %(job)s, 'firmware_update', '{"version": "2.4.1"}', '', %(status)s,
                        '{"tags": {"fleet": "bench"}}', 0, 0, now() - interval '1 day', now() - interval '1 day',
                        '', '{}', 0, '{}', 0, '{}', '{}', '', false, '{}', false)
                RETURNING id
                """,
                {"tenant": tenant_id, "job": job_id, "status": JobStatus.IN_PROGRESS},
            )  # fmt: skip
            (job_pk,) = cursor.fetchone()
            cursor.execute(
                """
                INSERT INTO job_executions (tenant_id, job_id, device_id, status, status_details, execution_number,
                                            attempt, applied, failed_retries, timed_out_retries, queued_at,
                                            released_at, last_updated_at, notify_pending, notified_next)
                SELECT %(tenant)s, %(job)s, d.id, %(status)s, '{}', 1, 1, '{}', 0, 0, j.created_at, j.created_at,
                       j.created_at, false, false
                FROM device_state AS d, jobs AS j
                WHERE d.tenant_id = %(tenant)s AND j.id = %(job)s AND d.id %% %(every)s = 0
                ORDER BY d.id
                """,
                {"tenant": tenant_id, "job": job_pk, "status": ExecutionStatus.QUEUED, "every": every},
            )  # fmt: skip
            made = cursor.rowcount
            executions += made
            cursor.execute("UPDATE jobs SET total = %s, remaining = %s, released = %s WHERE id = %s",
                           [made, made, made, job_pk])  # fmt: skip
            seconds[job_id] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
    seconds["commit"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    with connection.cursor() as cursor:
        for table in ("device_state", "jobs", "job_executions"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    seconds["vacuum_analyze"] = round(time.monotonic() - t0, 2)
    seconds["total"] = round(time.monotonic() - started, 2)
    log(f"seeded tenant {tenant_id!r} with {count:,} devices and {executions:,} job executions in "
        f"{seconds['total']:.1f} s ({seconds})")  # fmt: skip
    return Fleet(tenant, count, key, pending_every, stale_pct, executions, seconds)
