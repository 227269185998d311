"""Where job fan-out and the pending read spend their time: query plans, schema what-ifs, a per-request split.

    .venv/bin/python bench/job_fanout/whatif.py [--devices 100000] [--jobs 10] [--rounds 2] [--requests 300]

The same database as bench/job_fanout/run.py (N devices, --jobs jobs by tag), then:
1. job_create once more (tag selector, then device ids) in a rolled-back transaction, its
   writes run as EXPLAIN (ANALYZE, BUFFERS, WAL), foreign keys checked immediately (SET
   CONSTRAINTS ALL IMMEDIATE) so their trigger time shows in the plans;
2. job_create under schema what-ifs (a foreign key added back or dropped, an index dropped, the
   INSERT without its device row locks), each in a rolled-back transaction, --rounds times
   interleaved, best wall time and best PostgreSQL backend CPU time kept;
3. EXPLAIN ANALYZE of the statement one pending request runs, and --requests in-process
   GET /device/v1/jobs/pending (Django test client, one at a time): SQL vs Python per request.
Written to bench/results/job_fanout_whatif.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run import FLEET_TAGS, PENDING, fan_out, seed_fleet

from bench.common import BenchError, app, cli, log, seed
from bench.common.report import percentile, table

EXPLAINED = {
    "insert_executions": r"^\s*INSERT INTO job_executions\b",
    "update_jobs": r'^\s*UPDATE "jobs"',
    "update_device_state": r'^\s*UPDATE "device_state"',
}


def options(p):
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--jobs", type=int, default=10, help="jobs created first (the state the plans run in)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the schema what-ifs")
    p.add_argument("--requests", type=int, default=300, help="in-process pending requests")


def job_create(tenant, job_id, device_ids=None):
    from jobs.services import job_create

    return job_create(
        tenant=tenant,
        job_id=job_id,
        document_type="firmware_update",
        device_ids=device_ids,
        tags=None if device_ids else FLEET_TAGS,
        document_params={"version": "what-if"},
    )


def explain_job_create(tenant, job_id, device_ids=None) -> dict:
    from django.db import connection, transaction

    plans = {}

    def explain(execute, sql, params, many, context):
        kind = next((k for k, pattern in EXPLAINED.items() if re.search(pattern, sql)), None)
        if kind is None:
            return execute(sql, params, many, context)
        # Explained in a savepoint rolled back, then run for real: job_create reads the statement's rowcount.
        execute("SAVEPOINT whatif_explain", None, False, context)
        execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql, params, many, context)
        plan = context["cursor"].fetchone()[0]
        plans[kind] = (json.loads(plan) if isinstance(plan, str) else plan)[0]
        execute("ROLLBACK TO SAVEPOINT whatif_explain", None, False, context)
        return execute(sql, params, many, context)

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with connection.execute_wrapper(explain):
            job_create(tenant, job_id, device_ids)
        transaction.set_rollback(True)
    out = {}
    for kind, plan in plans.items():
        triggers = [
            {
                "trigger": t.get("Constraint Name") or t.get("Trigger Name"),
                "ms": round(t.get("Time", 0), 1),
                "calls": t.get("Calls"),
            }
            for t in plan.get("Triggers", [])
        ]
        out[kind] = {"execution_ms": round(plan.get("Execution Time", 0), 1), "triggers": triggers, "plan": plan}
        print(
            f"  {job_id} {kind}: {out[kind]['execution_ms']:.0f} ms, of which foreign-key triggers "
            f"{sum(t['ms'] for t in triggers):.0f} ms ({', '.join(t['trigger'] for t in triggers) or 'none'})"
        )
    return out


# The foreign keys Django would give job_executions (jobs migration 0012 drops them on PostgreSQL).
MODEL_FOREIGN_KEYS = (("tenant_id", "tenants"), ("job_id", "jobs"), ("device_id", "device_state"))
LOCK_TARGETS = " FOR KEY SHARE OF t"  # jobs.services._lock_targets: the INSERT ... SELECT locks its device rows


def what_if_variants() -> list[tuple[str, list[str], bool]]:
    """Schema changes to price, from the catalog as it is: each foreign key of job_executions added
    back (or, on a schema that still has it, dropped), all three, each index no constraint owns, and
    the INSERT without its device row locks. (name, DDL, whether the INSERT keeps its locks)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname, c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = 'job_executions'::regclass AND c.contype = 'f'"
        )
        present = dict(cursor.fetchall())
        cursor.execute(  # the indexes no constraint owns (not the primary key, not the unique (job, device))
            "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = 'job_executions'::regclass "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1"
        )
        indexes = [row[0] for row in cursor.fetchall()]

    def toggle(column: str, parent: str) -> tuple[str, str]:
        if column in present:
            return (
                f"without the {parent} foreign key",
                f'ALTER TABLE job_executions DROP CONSTRAINT "{present[column]}"',
            )
        return f"with the {parent} foreign key", (
            f"ALTER TABLE job_executions ADD CONSTRAINT whatif_{column}_fk FOREIGN KEY ({column}) "
            f"REFERENCES {parent}(id) DEFERRABLE INITIALLY DEFERRED"
        )

    toggles = [toggle(column, parent) for column, parent in MODEL_FOREIGN_KEYS]
    variants = [("as is", [], True)]
    variants += [(name, [ddl], True) for name, ddl in toggles]
    variants.append(
        ("all three foreign keys " + ("dropped" if present else "added back"), [d for _, d in toggles], True)
    )
    variants += [(f"without index {name}", [f'DROP INDEX "{name}"'], True) for name in indexes]
    variants.append(("without the device rows' KEY SHARE locks", [], False))
    return variants


def backend_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a PostgreSQL backend of this machine has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_what_ifs(tenant, rounds: int) -> list[dict]:
    """job_create (tags) under each variant, interleaved, in rolled-back transactions: wall time and the
    PostgreSQL backend's CPU time (steadier than wall time on a shared machine), best of the rounds."""
    from django.db import connection, transaction

    def without_locks(execute, sql, params, many, context):
        return execute(sql.replace(LOCK_TARGETS, ""), params, many, context)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    variants = what_if_variants()
    wall: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    cpu_s: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for round_ in range(1, rounds + 1):
        for name, ddl, lock in variants:  # interleaved: drift in the machine's speed hits every variant alike
            seed.vacuum_analyze("job_executions")
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                    for statement in ddl:
                        cursor.execute(statement)
                started, cpu_before = time.perf_counter(), backend_cpu_s(backend)
                with contextlib.nullcontext() if lock else connection.execute_wrapper(without_locks):
                    job_create(tenant, f"whatif-{round_}")
                wall[name].append(time.perf_counter() - started)
                cpu_s[name].append(backend_cpu_s(backend) - cpu_before)
                transaction.set_rollback(True)
            log(f"what-if [{name}] round {round_}: {wall[name][-1]:.2f} s, PostgreSQL CPU {cpu_s[name][-1]:.2f} s")
    return [
        {"variant": name, "ddl": ddl, "locks_devices": lock, "best_s": round(min(wall[name]), 3),
         "best_postgres_cpu_s": round(min(cpu_s[name]), 3), "runs_s": wall[name], "postgres_cpu_s": cpu_s[name]}
        for name, ddl, lock in variants
    ]  # fmt: skip


def pending_split(devices, expected_jobs: int) -> dict:
    """In-process pending requests, one at a time: total, SQL and Python milliseconds per request."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="localhost")
    with warnings.catch_warnings(), CaptureQueriesContext(connection) as captured:
        warnings.simplefilter("ignore")
        client.get(PENDING.path, HTTP_X_PROVISION_TOKEN=devices[0].token)
    statement = next(q["sql"] for q in captured.captured_queries if "provision_token_hash" in q["sql"])
    with connection.cursor() as cursor:  # the statement the request ran (the token lookup and the pending list)
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    sql_ms = []

    def timer(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            sql_ms[-1] += 1000 * (time.perf_counter() - started)

    totals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the static-files middleware warns once about a missing directory
        for n, d in enumerate(devices):
            sql_ms.append(0.0)
            started = time.perf_counter()
            with connection.execute_wrapper(timer):
                response = client.get(PENDING.path, HTTP_X_PROVISION_TOKEN=d.token)
            totals.append(1000 * (time.perf_counter() - started))
            if response.status_code != 200 or len(response.json()["jobs"]) != expected_jobs:
                raise BenchError(f"in-process pending: {response.status_code} {response.content[:200]!r}")
            if n < 2:  # warm-up (URL resolver, first queries): not counted
                totals.pop(), sql_ms.pop()
    python_ms = [t - s for t, s in zip(totals, sql_ms, strict=True)]
    stats = {
        name: {
            "p50_ms": round(percentile(v, 50), 3),
            "p99_ms": round(percentile(v, 99), 3),
            "mean_ms": round(statistics.fmean(v), 3),
        }
        for name, v in (("total", totals), ("sql", sql_ms), ("python", python_ms))
    }
    m = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return {"requests": len(totals), **stats, "pending_query_ms": float(m.group(1)) if m else None, "plan": plan}


def bench(args, run) -> int:
    import random

    run.database()
    app.setup_django(run.database_url)
    tenant, devices = seed_fleet(args.devices)
    fan_out(tenant, devices, args.jobs)
    seed.vacuum_analyze()
    report = run.report("job_fanout_whatif", config=vars(args))
    print("\nEXPLAIN (ANALYZE, BUFFERS, WAL) of job_create's writes, rolled back, foreign keys checked at once:")
    report.data["explain_job_create"] = {
        "tags": explain_job_create(tenant, "profile-tags"),
        "device_ids": explain_job_create(tenant, "profile-ids", [d.device_id for d in devices]),
    }
    what_ifs = run_what_ifs(tenant, args.rounds) if args.rounds > 0 else []
    if what_ifs:
        base = what_ifs[0]["best_s"]
        base_cpu = what_ifs[0]["best_postgres_cpu_s"] or 1.0
        title = f"Schema what-ifs: job_create (tags) in a rolled-back transaction, best of {args.rounds}"
        headers = ["variant", "job_create s", "vs as is", "PostgreSQL CPU s", "vs as is"]
        rows = [[w["variant"], f"{w['best_s']:.2f}", f"{w['best_s'] / base:.2f}", f"{w['best_postgres_cpu_s']:.2f}",
                 f"{w['best_postgres_cpu_s'] / base_cpu:.2f}"] for w in what_ifs]  # fmt: skip
        print(f"\n{title}\n")
        print(table(headers, rows))
        report.data["tables"] = [{"title": title, "headers": headers, "rows": rows}]  # the README's block
    others = random.Random(2).sample(devices, min(args.requests + 2, len(devices)))
    split = pending_split(others, min(args.jobs, 10))
    print(
        f"\nIn-process GET {PENDING.path} ({split['requests']} requests, one at a time; its statement "
        f"{split['pending_query_ms']} ms in PostgreSQL, token lookup included):\n"
    )
    print(
        table(
            ["ms per request", "p50", "p99", "mean"],
            [[k, split[k]["p50_ms"], split[k]["p99_ms"], split[k]["mean_ms"]] for k in ("total", "sql", "python")],
        )
    )
    report.data.update(what_ifs=what_ifs, pending_split=split)
    return report.finish()


if __name__ == "__main__":
    smoke = {"devices": 300, "jobs": 3, "rounds": 1, "requests": 20}
    sys.exit(cli.main("job_fanout_whatif", __doc__, options, bench, smoke))
