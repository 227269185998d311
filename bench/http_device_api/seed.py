"""Seed the benchmark database: one tenant and N devices at desired_version 1.

Run by run.py in a subprocess with the benchmark's environment (DATABASE_URL,
SECRET_KEY, ...), after `manage.py migrate`. Writes the devices' provision
tokens, in device order, as a JSON list to the file given by --out.

The tenant goes through devices.services.tenant_create; the devices are
bulk-created (the same columns devices.services.device_provision and one
twin.services.twin_update_desired would leave) because 1,000 single
provisions take far longer than the benchmark needs to.
"""

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESIRED = {"interval": 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--tenant", default="bench")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
    import django

    django.setup()

    from django.db import connection

    from devices.models import Device
    from devices.services import tenant_create
    from devices.tokens import hash_token, new_provision_token

    tenant = tenant_create(tenant_id=args.tenant, name=args.tenant.title())
    tokens = [new_provision_token() for _ in range(args.devices)]
    Device.objects.bulk_create(
        [
            Device(
                tenant=tenant,
                device_id=f"dev-{n:05d}",
                provision_token_hash=hash_token(token),
                tags={},
                desired_state=DESIRED,
                desired_version=1,
            )
            for n, token in enumerate(tokens, start=1)
        ],
        batch_size=500,
    )
    count = Device.objects.filter(tenant=tenant, desired_version=1).count()
    if count != args.devices:
        raise SystemExit(f"seed: expected {args.devices} devices at desired_version 1, found {count}")
    # A freshly loaded table has no planner statistics until autovacuum runs.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE device_state")
    args.out.write_text(json.dumps(tokens))
    print(f"seeded tenant {tenant.id!r} with {count} devices (desired_version 1)")


if __name__ == "__main__":
    main()
