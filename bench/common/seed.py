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
