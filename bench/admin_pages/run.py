"""Operator UI pages at fleet scale: 100,000 devices and two jobs with 100,000 executions between them.

    .venv/bin/python bench/admin_pages/run.py [--devices 100000] [--requests 20]

1. A fresh database; one tenant with N devices in mixed states (a third tagged site=paris,
   a third pending: desired ahead of reported, a third never seen: stale); a job for
   site=paris and one for site=lyon (jobs.services.job_create), a fifth of the first's
   executions succeeded and a tenth in progress; an operator (staff, role operator).
2. Each page fetched --requests times in-process through Django's test client (the full
   middleware and admin stack, session login, DEBUG off, collected static files; no
   server), after one warm-up: median and p95 ms and SQL queries per request.
Goals: every page's p95 <= 300 ms; the query count does not depend on the rows shown
(the device list fetched with 50 and with 200 rows per page).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, app, cli, log, seed
from bench.common.report import percentile, table

GOAL_P95_MS = 300


def options(p):
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=20, help="fetches of each page (after one warm-up)")


def seed_fleet(count: int):
    from django.db import connection

    from devices.choices import Role
    from devices.services import operator_create
    from jobs.services import job_create

    tenant, _ = seed.devices(count)
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE device_state SET
                tags = CASE WHEN id % 3 = 0 THEN '{"site": "paris"}'::jsonb ELSE '{"site": "lyon"}'::jsonb END,
                desired_state = '{"interval": 30}'::jsonb, desired_version = 2,
                reported_version = CASE WHEN id % 3 = 1 THEN 1 ELSE 2 END, reported_state = '{"interval": 30}'::jsonb,
                reported_updated_at = now() - (id % 1000) * interval '1 second',
                last_seen = CASE WHEN id % 3 = 2 THEN NULL ELSE now() END"""
        )
    user = operator_create(username="bench-operator", tenant=tenant, role=Role.OPERATOR, password="bench-pw-1234")
    job = job_create(tenant=tenant, job_id="fw-bench", document_type="firmware", tags={"site": "paris"})
    job_create(tenant=tenant, job_id="fw-all", document_type="firmware", tags={"site": "lyon"})
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE job_executions SET status = CASE WHEN id %% 10 < 2 THEN 'SUCCEEDED' ELSE 'IN_PROGRESS' END
               WHERE job_id = %s AND id %% 10 < 3""",
            [job.pk],
        )
    seed.vacuum_analyze()
    return user, job


def measure(client, url: str, requests: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if (status := client.get(url).status_code) != 200:  # warm-up, and a check that the page works
        raise BenchError(f"GET {url}: {status}")
    times, queries = [], []
    for _ in range(requests):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchError(f"GET {url}: {response.status_code}")
        queries.append(len(captured.captured_queries))
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "queries": max(queries),
        "seconds": round(sum(times) / 1000, 3),
    }


def bench(args, run) -> int:
    run.database()
    static_root = run.workdir / "static"
    app.setup_django(run.database_url, ALLOWED_HOSTS="testserver", LIVE_UPDATES="false", STATIC_ROOT=str(static_root))
    from django.contrib import admin
    from django.core.management import call_command
    from django.test import Client
    from django.urls import reverse

    from devices.models import Device

    call_command("collectstatic", "--noinput", verbosity=0)  # DEBUG is off: hashed static names, as in production
    user, job = seed_fleet(args.devices)
    client = Client()
    client.force_login(user)
    device = Device.objects.get(device_id="dev-00001")
    devices = reverse("admin:devices_device_changelist")
    first_50 = ",".join(str(pk) for pk in Device.objects.values_list("pk", flat=True)[:50])
    pages = {
        "device list": devices,
        "device list, sync=pending": devices + "?sync=pending",
        "device list, tag site:paris": devices + "?tag=site:paris",
        "device list, search dev-0999": devices + "?q=dev-0999",
        "device page (twin panel)": reverse("admin:devices_device_change", args=[device.pk]),
        "twin.json": reverse("admin:devices_device_twin", args=[device.pk]),
        "status.json (50 devices)": reverse("admin:devices_device_status") + "?ids=" + first_50,
        "dashboard": reverse("admin:dashboard"),
        "job list": reverse("admin:jobs_job_changelist"),
        "job page (progress)": reverse("admin:jobs_job_change", args=[job.pk]),
        "executions of a job": reverse("admin:jobs_jobexecution_changelist") + f"?job__id__exact={job.pk}",
    }
    results = {}
    for name, url in pages.items():
        results[name] = measure(client, url, args.requests)
        r = results[name]
        log(f"{name}: median {r['median_ms']} ms, p95 {r['p95_ms']} ms, {r['queries']} queries")
    admin.site._registry[Device].list_per_page = 200  # the same page with 4x the rows: the query count must not move
    results["device list, 200 rows"] = measure(client, devices, args.requests)

    report = run.report(config={"devices": args.devices, "requests_per_page": args.requests, "smoke": args.smoke})
    print(f"\nOperator UI: {args.devices:,} devices, {job.total:,} executions in the measured job\n")
    rows = [[name, f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", r["queries"]] for name, r in results.items()]
    print(table(["page", "median ms", "p95 ms", "SQL queries"], rows))
    fetches, seconds = args.requests * len(results), sum(r["seconds"] for r in results.values())
    report.rate("page fetches, one at a time", achieved=round(fetches / seconds, 1), unit="pages/s")
    worst = max(results, key=lambda name: results[name]["p95_ms"])
    report.goal(
        f"slowest page p95 ({worst})",
        achieved=results[worst]["p95_ms"],
        target=GOAL_P95_MS,
        unit="ms",
        met=results[worst]["p95_ms"] <= GOAL_P95_MS,
    )
    constant = results["device list"]["queries"] == results["device list, 200 rows"]["queries"]
    report.goal(
        "SQL queries, 200 rows vs 50",
        achieved=results["device list, 200 rows"]["queries"],
        target=results["device list"]["queries"],
        met=constant,
        relation="==",
    )
    report.data.update(executions_in_job=job.total, pages=results, query_count_independent_of_rows=constant)
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    sys.exit(cli.main("admin_pages", __doc__, options, bench, {"devices": 300, "requests": 2}))
