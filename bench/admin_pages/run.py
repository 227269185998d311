"""Operator UI pages at fleet scale: 100,000 devices and a job with 100,000 executions.

    .venv/bin/python bench/admin_pages/run.py [--devices 100000] [--requests 20]

1. A fresh PostgreSQL database (dropped and recreated), migrated; one tenant
   with N devices (bulk-created) in mixed states: a third tagged site=paris,
   a third pending (desired ahead of reported), a third never seen (stale);
   a job targeting every device by tag selector (jobs.services.job_create),
   with a fifth of its executions succeeded and a tenth in progress; an
   operator (staff, role operator). VACUUM ANALYZE.
2. Each page fetched --requests times in-process through Django's test client
   (the full middleware and admin stack, session login; no network, no
   server), after one warm-up: median and p95 milliseconds and the number of
   SQL queries per request. Goals: every page's p95 <= 300 ms, and a query
   count that does not depend on the number of rows shown (checked by
   fetching the device list with 50 and with 200 rows per page).
3. A table, and bench/results/admin_pages.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mqtt_common import (
    REPO,
    django_env,
    log,
    percentile,
    print_table,
    recreate_database,
    seed_devices,
    write_json,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/iotcloud_bench_admin"
GOAL_P95_MS = 300


def setup(database_url: str) -> None:
    static_root = tempfile.mkdtemp(prefix="bench-static-")
    os.environ.update(
        django_env(database_url, ALLOWED_HOSTS="testserver", LIVE_UPDATES="false", STATIC_ROOT=static_root)
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("collectstatic", "--noinput", verbosity=0)  # DEBUG is off: hashed static names, as in production


def seed(count: int):
    from django.db import connection

    from devices.choices import Role
    from devices.models import Tenant
    from devices.services import operator_create
    from jobs.services import job_create

    seed_devices(count, tenant_id="bench")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE device_state SET
                tags = CASE WHEN id % 3 = 0 THEN '{"site": "paris"}'::jsonb ELSE '{"site": "lyon"}'::jsonb END,
                desired_state = '{"interval": 30}'::jsonb,
                desired_version = 2,
                reported_version = CASE WHEN id % 3 = 1 THEN 1 ELSE 2 END,
                reported_state = '{"interval": 30}'::jsonb,
                reported_updated_at = now() - (id % 1000) * interval '1 second',
                last_seen = CASE WHEN id % 3 = 2 THEN NULL ELSE now() END
            """
        )
    tenant = Tenant.objects.get(id="bench")
    user = operator_create(username="bench-operator", tenant=tenant, role=Role.OPERATOR, password="bench-pw-1234")
    job = job_create(tenant=tenant, job_id="fw-bench", document_type="firmware", tags={"site": "paris"})
    job_create(tenant=tenant, job_id="fw-all", document_type="firmware", device_ids=None, tags={"site": "lyon"})
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE job_executions SET status = CASE WHEN id %% 10 < 2 THEN 'SUCCEEDED' ELSE 'IN_PROGRESS' END
               WHERE job_id = %s AND id %% 10 < 3""",
            [job.pk],
        )
        cursor.execute("VACUUM ANALYZE")
    return user, job


def measure(client, url: str, requests: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up (and a check that the page works)
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: {response.status_code}")
    times, queries = [], []
    for _ in range(requests):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, url
        queries.append(len(captured.captured_queries))
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "queries": max(queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    log(f"recreating {args.database_url} and seeding {args.devices:,} devices")
    recreate_database(args.database_url)
    setup(args.database_url)
    from django.contrib import admin
    from django.test import Client
    from django.urls import reverse

    from devices.models import Device

    user, job = seed(args.devices)
    client = Client()
    client.force_login(user)
    device = Device.objects.get(device_id="dev-00001")
    devices = reverse("admin:devices_device_changelist")
    pages = {
        "device list": devices,
        "device list, sync=pending": devices + "?sync=pending",
        "device list, tag site:paris": devices + "?tag=site:paris",
        "device list, search dev-0999": devices + "?q=dev-0999",
        "device page (twin panel)": reverse("admin:devices_device_change", args=[device.pk]),
        "twin.json": reverse("admin:devices_device_twin", args=[device.pk]),
        "status.json (50 devices)": reverse("admin:devices_device_status")
        + "?ids="
        + ",".join(str(pk) for pk in Device.objects.values_list("pk", flat=True)[:50]),
        "dashboard": reverse("admin:dashboard"),
        "job list": reverse("admin:jobs_job_changelist"),
        "job page (progress)": reverse("admin:jobs_job_change", args=[job.pk]),
        "executions of a job": reverse("admin:jobs_jobexecution_changelist") + f"?job__id__exact={job.pk}",
    }
    results = {}
    for name, url in pages.items():
        results[name] = measure(client, url, args.requests)
        log(f"{name}: {results[name]}")
    device_admin = admin.site._registry[Device]
    device_admin.list_per_page = 200  # the same page with 4x the rows: the query count must not move
    results["device list, 200 rows"] = measure(client, devices, args.requests)

    rows = [
        [name, f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", r["queries"],
         "met" if r["p95_ms"] <= GOAL_P95_MS else "MISSED"]
        for name, r in results.items()
    ]  # fmt: skip
    print_table(["page", "median ms", "p95 ms", "queries", f"p95 <= {GOAL_P95_MS} ms"], rows)
    constant = results["device list"]["queries"] == results["device list, 200 rows"]["queries"]
    print(f"query count independent of rows shown: {'yes' if constant else 'NO'}")
    write_json(
        "admin_pages",
        {
            "devices": args.devices,
            "executions_per_job": job.total,
            "requests_per_page": args.requests,
            "goal_p95_ms": GOAL_P95_MS,
            "pages": results,
            "query_count_independent_of_rows": constant,
        },
    )


if __name__ == "__main__":
    main()
