"""Job fan-out and the device pending-jobs read at 1,000,000 executions.

    .venv/bin/python bench/job_fanout/run.py [--devices 100000] [--jobs 10] [--connections 16] [--duration 15]

1. A fresh database (dropped and recreated), migrated; one tenant and N devices
   tagged {"fleet": "bench"} bulk-created (tokens kept in memory); VACUUM ANALYZE.
2. Fan-out: jobs.services.job_create for one job targeting every device by tag
   selector, then one job naming all N device ids; seconds until all executions
   are committed (each verified: N QUEUED executions). Goal: <= 3 s for 100k.
   Every statement job_create runs is timed (execute wrapper), and the commit,
   which runs the deferred foreign-key checks, separately (an outer atomic
   block: job_create's own atomic becomes a savepoint, the statements are the same).
3. More jobs by tag until job_executions holds jobs x N rows, each timed the
   same way; VACUUM ANALYZE. When the fan-out misses its goal (or --profile
   always) one more job is created inside a rolled-back transaction with
   EXPLAIN (ANALYZE, BUFFERS, WAL) around its writes and the foreign keys
   checked immediately, so their trigger time shows in the plans; then
   job_create runs under a few schema what-ifs (redundant indexes / the tenant
   foreign key dropped, ...), each inside a rolled-back transaction.
4. GET /device/v1/jobs/pending under gunicorn (the http_device_api benchmark's
   Server: DEBUG off, sync workers, no access log) with wrk, round-robin over the
   tokens of --sample random devices (each has min(jobs, 10) jobs pending), at
   --connections and at each of --more-connections, after a warm-up.
   Goal: p99 <= 20 ms at --connections. Plus EXPLAIN ANALYZE of the pending query
   for one device, an in-process per-request breakdown (SQL vs Python) and the
   selector timed as is and with the job's targets/description deferred.
5. A table, and bench/results/job_fanout.json.

The devices' last_seen is set to now before each measured run, so every request
is a device already heard from within DEVICE_LAST_SEEN_RESOLUTION (no
last_seen write); --stale-last-seen clears it instead (first poll in the window:
each request also writes). The in-process breakdown measures both.

Reuses bench/http_device_api/run.py (Server, wrk Lua, run_scenario, parse_wrk,
recreate_database, versions) and bench/mqtt_common.py (setup_django,
print_table, percentile).

Before each measured phase it waits until no other benchmark runs (pgrep, every
30 s, up to --wait-timeout) for 10 s in a row and the machine is under
--max-busy-pct CPU; a phase during which another benchmark showed up is redone
(the fan-out from a fresh database), at most --attempts times.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent

sys.path.insert(0, str(BENCH))

from mqtt_common import percentile, print_table, setup_django  # noqa: E402


def _load_http_bench():
    """bench/http_device_api/run.py under its own module name (this file is also called run.py)."""
    spec = importlib.util.spec_from_file_location("http_bench", BENCH / "http_device_api" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


http_bench = _load_http_bench()
BenchError = http_bench.BenchError
log = http_bench.log

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/iotcloud_bench_jobs"
DEFAULT_OUTPUT = BENCH / "results" / "job_fanout.json"
TENANT_ID = "bench"
FLEET_TAGS = {"fleet": "bench"}
FANOUT_GOAL_S = 3.0
PENDING_P99_GOAL_MS = 20.0
OTHER_BENCHMARKS = "bench/http_device_api/run.py|bench/mqtt_ingest|bench/desired_latency"
PENDING = http_bench.Scenario("jobs_pending", "GET jobs/pending", "GET", "/device/v1/jobs/pending")

# What each statement job_create runs is, by its SQL.
STATEMENT_KINDS = [
    ("insert_executions", re.compile(r"^\s*INSERT INTO job_executions\b", re.I)),
    ("insert_job", re.compile(r'^\s*INSERT INTO "jobs"')),
    ("update_job_totals", re.compile(r'^\s*UPDATE "jobs"')),
    ("bump_jobs_version", re.compile(r'^\s*UPDATE "device_state"')),
    ("notify_bridge", re.compile(r"pg_notify")),
    ("savepoint", re.compile(r"^\s*(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)")),
    ("targets_exists", re.compile(r'^\s*SELECT (1|%s) AS "a" FROM "device_state"')),
    ("targets_check_ids", re.compile(r'^\s*SELECT "device_state"\."device_id"( AS "device_id")? FROM "device_state"')),
]
BREAKDOWN = [
    "targets_check_ids",
    "targets_exists",
    "insert_job",
    "insert_executions",
    "update_job_totals",
    "bump_jobs_version",
    "notify_bridge",
    "commit",
]
EXPLAINED = ("insert_executions", "update_job_totals", "bump_jobs_version")


def classify(sql: str) -> str:
    for kind, pattern in STATEMENT_KINDS:
        if pattern.search(sql):
            return kind
    return "other: " + " ".join(sql.split())[:60]


# --- arguments ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark job fan-out (job_create) and GET /device/v1/jobs/pending at 1M executions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=100_000, help="devices, all targeted by every job")
    p.add_argument("--jobs", type=int, default=10, help="jobs in total (the first two are the timed fan-outs)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections of the goal row")
    p.add_argument("--more-connections", default="64", help="comma-separated extra wrk rows ('' for none)")
    p.add_argument("--duration", type=float, default=15, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of wrk warm-up before each measured run")
    p.add_argument("--sample", type=int, default=10_000, help="random devices whose tokens wrk uses")
    p.add_argument("--workers", type=int, default=http_bench.DEFAULT_WORKERS, help="gunicorn worker processes")
    p.add_argument("--worker-class", default=http_bench.DEFAULT_WORKER_CLASS, choices=["sync", "gthread"])
    p.add_argument("--threads", type=int, default=http_bench.DEFAULT_THREADS, help="threads per worker (gthread)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    p.add_argument("--wrk-timeout", default="2s", help="wrk request timeout; a timed-out request is an error")
    p.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the server")
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_JOBS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database (dropped and recreated; env BENCH_JOBS_DATABASE_URL)",
    )
    p.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="EXPLAIN ANALYZE job_create's writes: when the fan-out goal is missed, always or never",
    )
    p.add_argument(
        "--profile-requests",
        type=int,
        default=300,
        help="devices (not in the wrk sample) for the in-process pending breakdown (0: skip)",
    )
    p.add_argument(
        "--stale-last-seen",
        action="store_true",
        help="clear the sampled devices' last_seen before each run (every first poll writes)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the device sample")
    p.add_argument("--wait-timeout", type=float, default=2400, help="max seconds to wait for other benchmarks")
    p.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="redo a measured phase when another benchmark ran during it, at most this often",
    )
    p.add_argument(
        "--max-busy-pct",
        type=float,
        default=25,
        help="machine CPU use (%% of all cores) above which a phase waits (see --busy-wait)",
    )
    p.add_argument(
        "--busy-wait", type=float, default=600, help="seconds to wait for an idle machine before running a phase anyway"
    )
    p.add_argument(
        "--what-if-rounds",
        type=int,
        default=2,
        help="rounds of the schema what-ifs run when the fan-out is profiled (0: none)",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks to finish")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    p.add_argument("--label", default="", help="free text stored with the results")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (Lua, server log)")
    args = p.parse_args(argv)
    try:
        args.more_connections = [int(c) for c in args.more_connections.split(",") if c.strip()]
    except ValueError:
        p.error("--more-connections: comma-separated integers")
    if args.jobs < 2:
        p.error("--jobs must be >= 2 (one by tag selector, one by device ids)")
    if args.worker_class == "sync" and args.threads != 1:
        p.error("--threads needs --worker-class gthread")
    if min(args.devices, args.connections, args.sample, args.workers, args.wrk_threads, *args.more_connections) < 1:
        p.error("--devices, --connections, --sample, --workers, --wrk-threads must be >= 1")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    args.sample = min(args.sample, args.devices)
    return args


# --- waiting for a quiet machine ------------------------------------------------


def other_benchmarks() -> list[str]:
    out = subprocess.run(["pgrep", "-af", OTHER_BENCHMARKS], capture_output=True, text=True, check=False)
    own = {os.getpid(), os.getppid()}
    return [line for line in out.stdout.splitlines() if line.split()[0].isdigit() and int(line.split()[0]) not in own]


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def wait_for_quiet(args: argparse.Namespace, what: str, poll_s: float = 30, settle_s: float = 10) -> dict:
    """Wait until no other benchmark runs (up to --wait-timeout) and the machine is idle enough.

    No benchmark process may show up for settle_s in a row (a run must not start in the
    gap between two runs of someone else's loop), and the machine's CPU use over that
    window must stay under --max-busy-pct; the idle condition is given up after
    --busy-wait seconds (then the phase runs anyway and the busy share is recorded).
    """
    started = time.monotonic()
    if args.no_wait:
        return {"waited_s": 0.0, "busy_pct": None}
    quiet_since = ticks = None
    busy_since = None
    while True:
        busy = other_benchmarks()
        now = time.monotonic()
        if busy:
            quiet_since = None
            if now - started > args.wait_timeout:
                raise BenchError(
                    f"other benchmarks still running after {now - started:.0f} s (before {what}):\n  "
                    + "\n  ".join(busy)
                    + "\n  rerun later, or pass --no-wait"
                )
            log(f"waiting for other benchmarks before {what} ({now - started:.0f} s so far): {busy[0][:120]}")
            time.sleep(poll_s)
            continue
        if quiet_since is None:
            quiet_since, ticks = now, cpu_ticks()
        if now - quiet_since < settle_s:
            time.sleep(1)
            continue
        after = cpu_ticks()
        busy_pct = round(100 * (after[0] - ticks[0]) / max(after[1] - ticks[1], 1), 1)
        busy_since = busy_since or now
        if busy_pct <= args.max_busy_pct or now - busy_since > args.busy_wait:
            if busy_pct > args.max_busy_pct:
                log(f"machine still {busy_pct:.0f}% busy after {args.busy_wait:g} s; going ahead with {what}")
            return {"waited_s": round(now - started, 1), "busy_pct": busy_pct}
        log(f"no benchmark running but the machine is {busy_pct:.0f}% busy; waiting before {what}")
        quiet_since = None
        time.sleep(poll_s)


# --- database -------------------------------------------------------------------


def prepare_database(args: argparse.Namespace, env: dict[str, str]) -> str:
    created = http_bench.recreate_database(args.database_url)
    pg_version = created[0] if isinstance(created, tuple) else created  # (version, max_connections) or version
    log("manage.py migrate")
    http_bench.run_checked([sys.executable, str(REPO / "manage.py"), "migrate", "--noinput", "-v", "0"], env, "migrate")
    return pg_version


def vacuum_analyze(table: str | None = None) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}" if table else "VACUUM ANALYZE")
    return round(time.perf_counter() - started, 2)


def seed(n: int):
    """One tenant, n devices tagged FLEET_TAGS; returns (tenant, [(pk, device_id, token)], seconds)."""
    from devices.models import Device
    from devices.services import tenant_create
    from devices.tokens import hash_token, new_provision_token

    started = time.perf_counter()
    tenant = tenant_create(tenant_id=TENANT_ID, name="Bench")
    tokens = [new_provision_token() for _ in range(n)]
    ids = [f"dev-{i:06d}" for i in range(n)]
    Device.objects.bulk_create(
        [
            Device(tenant=tenant, device_id=d, provision_token_hash=hash_token(t), tags=FLEET_TAGS)
            for d, t in zip(ids, tokens, strict=True)
        ],
        batch_size=5000,
    )
    pks = dict(Device.objects.filter(tenant=tenant).values_list("device_id", "pk"))
    if len(pks) != n:
        raise BenchError(f"seed: expected {n} devices, found {len(pks)}")
    devices = [(pks[d], d, t) for d, t in zip(ids, tokens, strict=True)]
    return tenant, devices, round(time.perf_counter() - started, 2)


def pg_counters() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        lsn, checkpoints = cursor.fetchone()
    return {"lsn": lsn, "checkpoints": checkpoints}


def wal_bytes(before: str, after: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(%s, %s)", [after, before])
        return int(cursor.fetchone()[0])


# --- fan-out --------------------------------------------------------------------


class StatementTimer:
    """A Django execute wrapper: seconds and rowcount of each statement, by kind."""

    def __init__(self):
        self.statements: list[dict] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append(
                {
                    "kind": classify(sql),
                    "s": time.perf_counter() - started,
                    "rows": getattr(context["cursor"], "rowcount", None),
                }
            )

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for st in self.statements:
            out[st["kind"]] += st["s"]
        return dict(out)


def timed_job_create(tenant, *, job_id: str, device_ids: list[str] | None, tags: dict | None, expected: int) -> dict:
    """job_create, with every statement and the commit timed; checks the executions it made."""
    from django.db import connection, transaction

    from jobs.choices import ExecutionStatus
    from jobs.models import JobExecution
    from jobs.services import job_create

    timer = StatementTimer()
    counters = pg_counters()
    started = time.perf_counter()
    with connection.execute_wrapper(timer), transaction.atomic():
        job = job_create(
            tenant=tenant,
            document_type="firmware_update",
            job_id=job_id,
            document_params={"version": "2.4.1", "url": f"https://firmware.example/{job_id}.bin"},
            device_ids=device_ids,
            tags=tags,
        )
        body_done = time.perf_counter()
    total = time.perf_counter() - started
    after = pg_counters()
    queued = JobExecution.objects.filter(job=job, status=ExecutionStatus.QUEUED).count()
    if queued != expected or job.total != expected:
        raise BenchError(f"job {job_id}: expected {expected} QUEUED executions, found {queued} (total {job.total})")
    kinds = timer.by_kind()
    kinds["commit"] = total - (body_done - started)
    breakdown = {k: round(kinds.pop(k, 0.0), 4) for k in BREAKDOWN}
    breakdown.update({k: round(v, 4) for k, v in kinds.items()})  # savepoints, anything unexpected
    breakdown["python_and_other"] = round(total - sum(breakdown.values()), 4)
    rows = {st["kind"]: st["rows"] for st in timer.statements if st["kind"] in EXPLAINED}
    return {
        "job_id": job_id,
        "selector": "device_ids" if device_ids else "tags",
        "executions": queued,
        "seconds": round(total, 3),
        "executions_per_s": round(queued / total),
        "statements_s": breakdown,
        "rows": rows,
        "wal_bytes": wal_bytes(counters["lsn"], after["lsn"]),
        "checkpoints_during": after["checkpoints"] - counters["checkpoints"],
    }


def log_job(r: dict) -> None:
    s = r["statements_s"]
    log(
        f"{r['job_id']} ({r['selector']}): {r['executions']} executions in {r['seconds']:.2f} s "
        f"[insert {s['insert_executions']:.2f}, UPDATE device_state {s['bump_jobs_version']:.2f}, "
        f"commit {s['commit']:.2f}, "
        f"targets {s['targets_check_ids'] + s['targets_exists']:.2f}, totals {s['update_job_totals']:.3f}, "
        f"other {s['python_and_other']:.2f}]"
    )


class ExplainWrites:
    """Execute wrapper: runs job_create's three writes as EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON)."""

    def __init__(self):
        self.plans: dict[str, dict] = {}

    def __call__(self, execute, sql, params, many, context):
        kind = classify(sql)
        if kind not in EXPLAINED:
            return execute(sql, params, many, context)
        result = execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql, params, many, context)
        plan = context["cursor"].fetchone()[0]
        self.plans[kind] = (json.loads(plan) if isinstance(plan, str) else plan)[0]
        return result


def flatten_plan(node: dict, depth: int = 0) -> list[dict]:
    target = node.get("Index Name") or node.get("Relation Name") or node.get("CTE Name") or ""
    row = {
        "depth": depth,
        "node": node["Node Type"],
        "on": target,
        "actual_total_ms": node.get("Actual Total Time"),
        "rows": node.get("Actual Rows"),
        "loops": node.get("Actual Loops"),
        "wal_bytes": node.get("WAL Bytes"),
    }
    rows = [row]
    for child in node.get("Plans", []):
        rows.extend(flatten_plan(child, depth + 1))
    return rows


def summarize_plan(plan: dict) -> dict:
    return {
        "execution_ms": round(plan.get("Execution Time", 0.0), 1),
        "planning_ms": round(plan.get("Planning Time", 0.0), 1),
        "triggers": [
            {
                "constraint": t.get("Constraint Name") or t.get("Trigger Name"),
                "relation": t.get("Relation"),
                "ms": round(t.get("Time", 0.0), 1),
                "calls": t.get("Calls"),
            }
            for t in plan.get("Triggers", [])
        ],
        "nodes": flatten_plan(plan["Plan"]),
    }


def explain_job_create(tenant, *, device_ids: list[str] | None, tags: dict | None, job_id: str) -> dict:
    """job_create once more inside a transaction that is rolled back, its writes EXPLAIN ANALYZEd.

    SET CONSTRAINTS ALL IMMEDIATE makes the deferred foreign-key checks run at the end of each
    statement, so EXPLAIN ANALYZE shows their cost (in a normal run they run at COMMIT).
    """
    from django.db import connection, transaction

    from jobs.services import job_create

    explainer = ExplainWrites()
    started = time.perf_counter()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with connection.execute_wrapper(explainer):
            job_create(
                tenant=tenant,
                document_type="firmware_update",
                job_id=job_id,
                document_params={"version": "profile"},
                device_ids=device_ids,
                tags=tags,
            )
        transaction.set_rollback(True)
    return {
        "job_id": job_id,
        "selector": "device_ids" if device_ids else "tags",
        "seconds_with_explain": round(time.perf_counter() - started, 2),
        "statements": {kind: summarize_plan(plan) for kind, plan in explainer.plans.items()},
    }


def index_sizes() -> dict[str, list]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT c.relname, i.relname, pg_relation_size(i.oid)
               FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
               WHERE c.relname IN ('job_executions', 'device_state') ORDER BY 1, 2"""
        )
        out: dict[str, list] = defaultdict(list)
        for table, index, size in cursor.fetchall():
            out[table].append({"index": index, "mb": round(size / 2**20, 1)})
    return dict(out)


def print_explain(profile: dict) -> None:
    print(
        f"\nEXPLAIN (ANALYZE, BUFFERS, WAL) of job_create's writes, {profile['selector']} selector "
        "(rolled back; foreign keys checked immediately):"
    )
    for kind, s in profile["statements"].items():
        triggers = sum(t["ms"] for t in s["triggers"])
        print(
            f"  {kind}: execution {s['execution_ms']:.0f} ms (of which FK triggers {triggers:.0f} ms), "
            f"planning {s['planning_ms']:.1f} ms"
        )
        for n in s["nodes"]:
            wal = f", WAL {n['wal_bytes'] / 2**20:.0f} MB" if n.get("wal_bytes") else ""
            print(
                f"    {'  ' * n['depth']}{n['node']}{' on ' + n['on'] if n['on'] else ''}: "
                f"{n['actual_total_ms'] or 0:.0f} ms, rows {n['rows']} x{n['loops']}{wal}"
            )
        for t in s["triggers"]:
            print(f"    trigger {t['constraint']} on {t['relation']}: {t['ms']:.0f} ms, {t['calls']} calls")


# --- pending: query plan and in-process breakdown ------------------------------------


def explain_pending(device_pk: int) -> dict:
    from django.db import connection

    from jobs.selectors import pending_executions

    qs = pending_executions(device_pk)
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        shown = cursor.mogrify(sql, params)
    shown = shown.decode() if isinstance(shown, bytes) else shown
    runs = [qs.explain(analyze=True, buffers=True) for _ in range(3)]  # the last one is warm
    plan = runs[-1]
    times = [float(m.group(1)) for r in runs if (m := re.search(r"Execution Time: ([\d.]+) ms", r))]
    planning = re.search(r"Planning Time: ([\d.]+) ms", plan)
    return {
        "device_pk": device_pk,
        "sql": shown,
        "execution_ms": times[-1] if times else None,
        "execution_ms_runs": times,
        "planning_ms": float(planning.group(1)) if planning else None,
        "uses_idx_job_exec_pending": "idx_job_exec_pending" in plan,
        "plan": plan,
    }


REQUEST_KINDS = [  # quoted (ORM) or unquoted (hand-written SQL) identifiers alike
    ("auth_select", re.compile(r'^\s*SELECT .* FROM "?device_state"? WHERE .*provision_token_hash', re.S)),
    ("touch_update", re.compile(r'^\s*UPDATE "?device_state"? SET "?last_seen')),
    ("pending_select", re.compile(r'^\s*SELECT .* FROM "?job_executions"?', re.S)),
]


def pending_breakdown(devices: list[tuple[int, str, str]], expected_jobs: int) -> dict:
    """In-process (no HTTP server, no concurrency): where one pending request spends its time.

    Each device is asked twice: the first request also records last_seen (UPDATE + commit),
    the second is the steady state within DEVICE_LAST_SEEN_RESOLUTION.
    """
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    with warnings.catch_warnings():  # the static-files middleware warns once about var/static
        warnings.simplefilter("ignore")
        for _ in range(2):  # warm-up (URL resolver, first queries), not counted
            client.get(PENDING.path, HTTP_X_PROVISION_TOKEN=devices[0][2])
    devices = devices[1:]
    samples: dict[str, list[dict]] = {"first_poll": [], "repeat_poll": []}
    for _pk, _device_id, token in devices:
        for name in ("first_poll", "repeat_poll"):
            timer = SQLCapture()
            started = time.perf_counter()
            with connection.execute_wrapper(timer):
                response = client.get(PENDING.path, HTTP_X_PROVISION_TOKEN=token)
            total = time.perf_counter() - started
            if response.status_code != 200 or len(response.json()["jobs"]) != expected_jobs:
                raise BenchError(f"in-process pending: {response.status_code} {response.content[:200]!r}")
            parts = defaultdict(float)
            for st in timer.statements:
                kind = next((k for k, p in REQUEST_KINDS if p.search(st["sql"])), "other_sql")
                parts[kind] += st["s"]
            parts["statements"] = len(timer.statements)
            parts["total"] = total
            samples[name].append(parts)
    out = {}
    for name, rows in samples.items():
        keys = ["total", "auth_select", "touch_update", "pending_select", "other_sql"]
        stats = {}
        for k in keys:
            values = [1000 * r.get(k, 0.0) for r in rows]
            stats[k] = {
                "p50_ms": round(percentile(values, 50), 3),
                "p99_ms": round(percentile(values, 99), 3),
                "mean_ms": round(statistics.fmean(values), 3),
            }
        sql = [sum(r.get(k, 0.0) for k in keys[1:]) for r in rows]
        python = [1000 * (r["total"] - s) for r, s in zip(rows, sql, strict=True)]
        stats["python_ms"] = {
            "p50_ms": round(percentile(python, 50), 3),
            "p99_ms": round(percentile(python, 99), 3),
            "mean_ms": round(statistics.fmean(python), 3),
        }
        stats["statements_per_request"] = statistics.fmean(r["statements"] for r in rows)
        out[name] = stats
    out["requests"] = len(devices)
    return out


class SQLCapture(StatementTimer):
    """StatementTimer that keeps the SQL too (for the per-request breakdown)."""

    def __call__(self, execute, sql, params, many, context):
        result = super().__call__(execute, sql, params, many, context)
        self.statements[-1]["sql"] = sql
        return result


def set_last_seen(device_pks: list[int], *, stale: bool) -> None:
    from django.db.models import Value
    from django.utils import timezone

    from devices.models import Device

    Device.objects.filter(pk__in=device_pks).update(last_seen=Value(None) if stale else timezone.now())


def preflight(server, sample: list[tuple[int, str, str]], expected_jobs: int, first_job: str) -> None:
    for _pk, device_id, token in random.Random(7).sample(sample, min(20, len(sample))):
        status, body = http_bench.http_json("GET", server.base_url + PENDING.path, headers={"X-Provision-Token": token})
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if status != 200 or jobs is None or len(jobs) != expected_jobs or jobs[0]["job_id"] != first_job:
            raise BenchError(
                f"preflight {PENDING.path} for {device_id}: expected 200 with {expected_jobs} jobs "
                f"(oldest {first_job}), got {status} {str(body)[:300]}\n{server.log_tail()}"
            )


def check_sample_queues(sample_pks: list[int], expected_per_device: int) -> None:
    from django.db.models import Count

    from jobs.choices import ExecutionStatus
    from jobs.models import JobExecution

    counts = (
        JobExecution.objects.filter(device_id__in=sample_pks, status=ExecutionStatus.QUEUED)
        .values("device_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    wrong = [c for c in counts if c["n"] != expected_per_device]
    if wrong or len(counts) != len(sample_pks):
        raise BenchError(
            f"sampled devices should each have {expected_per_device} QUEUED executions: "
            f"{len(counts)} devices counted, {len(wrong)} differ"
        )


# --- profiling helpers: what the pending query fetches, schema what-ifs for the fan-out -----


def job_targets_sizes() -> list[dict]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT job_id, pg_column_size(targets), octet_length(targets::text) FROM jobs ORDER BY id")
        return [{"job_id": j, "stored_bytes": stored, "json_bytes": raw} for j, stored, raw in cursor.fetchall()]


# Hand-written equivalent of jobs.selectors.pending_executions + pending_summary, to price the ORM's share.
PENDING_SQL = """
    SELECT j.job_id, e.execution_number, j.document_type, j.document_params, e.queued_at, j.expires_at
    FROM job_executions e JOIN jobs j ON j.id = e.job_id
    WHERE e.device_id = %s AND e.status = 'QUEUED' AND (j.expires_at IS NULL OR j.expires_at > %s)
    ORDER BY e.queued_at, e.id LIMIT %s
"""


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def pending_query_variants(device_pks: list[int], expected_jobs: int) -> dict:
    """What the view's read costs in-process, per device, three ways:

    as_is: jobs.selectors.pending_executions + pending_summary (ORM: build, compile, instantiate);
    defer_job_targets: the same with the job's operator-only columns deferred (jobs.targets holds
    every targeted id for a job created with device_ids);
    precompiled_sql: one fixed SQL string (PENDING_SQL), rows turned into the same dicts (Django's
    psycopg setup returns jsonb as text, so the params are parsed here as JSONField would).
    """
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from jobs.selectors import pending_executions, pending_summary

    def orm(transform):
        return lambda pk: [pending_summary(e) for e in transform(pending_executions(pk))]

    def precompiled(pk):
        with connection.cursor() as cursor:
            cursor.execute(PENDING_SQL, [pk, timezone.now(), settings.JOBS_PENDING_LIMIT])
            rows = cursor.fetchall()
        return [
            {
                "job_id": job_id,
                "execution_number": number,
                "document": {"type": kind, "params": json.loads(params) if isinstance(params, str) else params},
                "queued_at": _iso(queued_at),
                "expires_at": _iso(expires_at),
            }
            for job_id, number, kind, params, queued_at, expires_at in rows
        ]

    variants = {
        "as_is": orm(lambda qs: qs),
        "defer_job_targets": orm(lambda qs: qs.defer("job__targets", "job__description")),
        "precompiled_sql": precompiled,
    }
    reference = variants["as_is"](device_pks[0])
    if variants["precompiled_sql"](device_pks[0]) != reference:
        raise BenchError("PENDING_SQL no longer returns what pending_jobs returns; update the benchmark")
    for fetch in variants.values():  # warm-up
        for pk in device_pks[:5]:
            fetch(pk)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for pk in device_pks:  # interleaved, so drift in the machine's load hits every variant alike
        for name, fetch in variants.items():
            started = time.perf_counter()
            jobs = fetch(pk)
            times[name].append(1000 * (time.perf_counter() - started))
            if len(jobs) != expected_jobs:
                raise BenchError(f"pending variant {name}: {len(jobs)} jobs for device {pk}")
    return {
        name: {
            "p50_ms": round(percentile(values, 50), 3),
            "p99_ms": round(percentile(values, 99), 3),
            "mean_ms": round(statistics.fmean(values), 3),
        }
        for name, values in times.items()
    }


def _index_names(table: str, definition_suffix: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return [name for name, definition in cursor.fetchall() if definition.endswith(definition_suffix)]


def what_if_variants() -> list[tuple[str, list[str]]]:
    """Schema changes to try in a rolled-back transaction (index names looked up, not assumed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'job_executions'::regclass "
            "AND confrelid = 'tenants'::regclass AND contype = 'f'"
        )
        tenant_fk = [row[0] for row in cursor.fetchall()]
    redundant_exec = [
        *_index_names("job_executions", "USING btree (tenant_id)"),
        *_index_names("job_executions", "USING btree (tenant_id varchar_pattern_ops)"),
        *_index_names("job_executions", "USING btree (job_id)"),
    ]
    slim_exec = [f'DROP INDEX "{name}"' for name in redundant_exec] + [
        f'ALTER TABLE job_executions DROP CONSTRAINT "{name}"' for name in tenant_fk
    ]
    device_first = [
        *(f'DROP INDEX "{name}"' for name in _index_names("job_executions", "USING btree (device_id)")),
        "ALTER TABLE job_executions DROP CONSTRAINT uniq_job_executions_job_device",
        "ALTER TABLE job_executions ADD CONSTRAINT bench_uniq_device_job UNIQUE (device_id, job_id)",
    ]
    notify_index = [f'DROP INDEX "{name}"' for name in _index_names("job_executions", "WHERE notify_pending")]
    variants = [
        ("as is", []),
        ("no tenant FK, no tenant_id/job_id single-column indexes", slim_exec),
        (
            "... and UNIQUE (device_id, job_id) replacing (job_id, device_id) + device_id index",
            slim_exec + device_first,
        ),
        (
            "no foreign keys on job_executions at all (upper bound)",
            [f"ALTER TABLE job_executions DROP CONSTRAINT {name}" for name in _fk_names("job_executions")],
        ),
    ]
    if notify_index:
        variants.append(("without the notify_pending partial index (its cost)", notify_index))
    return variants


def _fk_names(table: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'", [table])
        return [f'"{row[0]}"' for row in cursor.fetchall()]


def run_what_ifs(tenant, rounds: int) -> list[dict]:
    """job_create (the real code) under schema variants, each in a transaction that is rolled back.

    Foreign keys are checked immediately (SET CONSTRAINTS ALL IMMEDIATE), so their cost is part
    of the INSERT ... SELECT here rather than of the COMMIT. Tables are vacuumed between runs
    so each variant starts from the same state.
    """
    from django.db import connection, transaction

    from jobs.services import job_create

    variants = what_if_variants()
    results = {name: {"variant": name, "ddl": ddl, "runs": []} for name, ddl in variants}
    for round_ in range(1, rounds + 1):
        for name, ddl in variants:
            vacuum_analyze("job_executions")
            vacuum_analyze("device_state")
            timer = StatementTimer()
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                    for statement in ddl:
                        cursor.execute(statement)
                started = time.perf_counter()
                with connection.execute_wrapper(timer):
                    job_create(
                        tenant=tenant,
                        document_type="firmware_update",
                        job_id=f"whatif-{round_}",
                        document_params={"version": "what-if"},
                        tags=FLEET_TAGS,
                    )
                total = time.perf_counter() - started
                transaction.set_rollback(True)
            kinds = timer.by_kind()
            run_ = {
                "round": round_,
                "total_s": round(total, 3),
                "insert_with_fk_s": round(kinds.get("insert_executions", 0.0), 3),
                "bump_device_state_s": round(kinds.get("bump_jobs_version", 0.0), 3),
            }
            results[name]["runs"].append(run_)
            log(
                f"what-if [{name}] round {round_}: total {run_['total_s']:.2f} s, INSERT+FK "
                f"{run_['insert_with_fk_s']:.2f} s, bump {run_['bump_device_state_s']:.2f} s"
            )
    out = []
    for r in results.values():
        for key in ("total_s", "insert_with_fk_s", "bump_device_state_s"):
            r[f"best_{key}"] = min(run_[key] for run_ in r["runs"])
        out.append(r)
    return out


# --- report ---------------------------------------------------------------------------


def print_report(config: dict, fanout: list[dict], pending: list[dict], goals: list[dict], extra: dict) -> None:
    print(
        f"\nJob fan-out -- {config['devices']} devices, {config['jobs']} jobs, PostgreSQL {config['postgres']}, "
        f"{config['cpu_count']} CPUs\n"
    )
    rows = []
    for r in fanout:
        s = r["statements_s"]
        rows.append(
            [
                r["job_id"],
                r["selector"],
                r["executions"],
                f"{r['seconds']:.2f}",
                r["executions_per_s"],
                f"{s['targets_check_ids'] + s['targets_exists']:.2f}",
                f"{s['insert_executions']:.2f}",
                f"{s['update_job_totals']:.3f}",
                f"{s['bump_jobs_version']:.2f}",
                f"{s['commit']:.2f}",
                f"{s['python_and_other']:.2f}",
                f"{r['wal_bytes'] / 2**20:.0f}",
                r["checkpoints_during"],
            ]
        )
    print_table(
        [
            "job",
            "selector",
            "executions",
            "total s",
            "exec/s",
            "targets s",
            "INSERT..SELECT s",
            "UPDATE jobs s",
            "UPDATE device_state s",
            "COMMIT (FK) s",
            "python s",
            "WAL MB",
            "ckpt",
        ],
        rows,
    )
    print(f"\n  (job_executions: {extra['executions_total']} rows; VACUUM ANALYZE {extra['vacuum_s']} s)")
    if config["other_benchmarks_during_fanout"]:
        print(f"  ! another benchmark ran during the fan-out: {config['other_benchmarks_during_fanout'][0][:100]}")

    print(
        f"\nGET {PENDING.path} -- gunicorn {config['worker_class']} {config['workers']}x{config['threads']}, "
        f"{config['sample']} device tokens, {config['expected_jobs_per_response']} jobs per response, "
        f"last_seen {'stale' if config['stale_last_seen'] else 'fresh'}\n"
    )
    rows = []
    for r in pending:
        lat = r["latency_ms"]
        cpu = r["cpu"]
        rows.append(
            [
                r["connections"],
                f"{r['rps']:.0f}",
                f"{lat['p50']:.1f}",
                f"{lat['p99']:.1f}",
                f"{lat['max']:.1f}",
                r["errors"]["total"],
                r["requests"],
                f"{cpu['gunicorn_pct']:.0f}/{cpu['postgres_pct']:.0f}/{cpu['wrk_pct']:.0f}/"
                f"{cpu.get('other_pct', 0):.0f}",
                devices_written(r),
                " ".join(
                    flag
                    for flag, on in (
                        ("ERRORS", r["errors"]["total"]),
                        ("noisy", r.get("noisy")),
                        ("other-benchmark", r.get("other_benchmarks_during")),
                    )
                    if on
                ),
            ]
        )
    print_table(
        [
            "connections",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "requests",
            "CPU% gunicorn/pg/wrk/other",
            "device rows written",
            "flags",
        ],
        rows,
    )
    for r in pending:
        print(
            f"  c={r['connections']}: closed loop, so mean latency ~= connections / req/s = "
            f"{r['littles_law_mean_ms']} ms (measured mean {r['latency_ms']['mean']:.1f} ms)"
        )
    e = extra["explain_pending"]
    print(
        f"\nEXPLAIN ANALYZE pending query (device pk {e['device_pk']}): execution {e['execution_ms']} ms, "
        f"planning {e['planning_ms']} ms, idx_job_exec_pending used: {e['uses_idx_job_exec_pending']}"
    )
    print("  " + e["plan"].replace("\n", "\n  "))
    b = extra.get("pending_breakdown")
    if b:
        print(
            f"\nIn-process pending request breakdown ({b['requests']} devices, no HTTP, one at a time), p50 / p99 ms:"
        )
        for name in ("first_poll", "repeat_poll"):
            s = b[name]
            parts = ", ".join(
                f"{k} {s[k]['p50_ms']:.2f}/{s[k]['p99_ms']:.2f}"
                for k in ("auth_select", "touch_update", "pending_select", "python_ms")
            )
            print(f"  {name:<12} total {s['total']['p50_ms']:.2f}/{s['total']['p99_ms']:.2f}: {parts}")
        v = b.get("selector_variants")
        if v:
            print(
                "  pending_executions() + pending_summary() alone, p50 / p99 ms: "
                + ", ".join(f"{k} {x['p50_ms']:.2f}/{x['p99_ms']:.2f}" for k, x in v.items())
            )
    big = [t for t in extra.get("job_targets_sizes", []) if t["json_bytes"] > 10_000]
    loads_targets = '"jobs"."targets"' in (extra["explain_pending"].get("sql") or "")
    for t in big:
        print(
            f"  jobs.targets of {t['job_id']}: {t['json_bytes'] / 1e6:.2f} MB JSON ({t['stored_bytes'] / 1e3:.0f} kB "
            f"stored); the pending query {'LOADS it on every request' if loads_targets else 'does not load it'}"
        )
    if extra.get("fanout_explain"):
        for profile in extra["fanout_explain"]:
            print_explain(profile)
    if extra.get("what_ifs"):
        print(
            "\nSchema what-ifs (real job_create in a rolled-back transaction, FKs checked immediately; best of "
            f"{len(extra['what_ifs'][0]['runs'])} rounds, seconds):"
        )
        rows = [
            [
                w["variant"],
                f"{w['best_total_s']:.2f}",
                f"{w['best_insert_with_fk_s']:.2f}",
                f"{w['best_bump_device_state_s']:.2f}",
            ]
            for w in extra["what_ifs"]
        ]
        print_table(["variant", "job_create", "INSERT+FK", "UPDATE device_state"], rows)
    print("\nGoals:")
    for g in goals:
        print(f"  {g['goal']:<52}{g['shown']:>12}   {'met' if g['met'] else 'MISSED'}")


def devices_written(result: dict):
    """Devices whose row the run wrote (the http benchmark's counter; its name changed over time)."""
    db = result.get("db", {})
    return db.get("devices_written", db.get("device_rows_updated"))


def evaluate(fanout: list[dict], pending: list[dict], args: argparse.Namespace) -> list[dict]:
    goals = []
    scale = args.devices / 100_000
    for r in fanout[:2]:
        target = FANOUT_GOAL_S * scale
        goals.append(
            {
                "goal": f"fan-out {r['executions']} executions ({r['selector']}) <= {target:g} s",
                "value": r["seconds"],
                "target": target,
                "shown": f"{r['seconds']:.2f} s",
                "met": r["seconds"] <= target,
            }
        )
    for r in pending:
        if r["connections"] != args.connections:
            continue
        ok = r["errors"]["total"] == 0
        goals.append(
            {
                "goal": f"pending p99 <= {PENDING_P99_GOAL_MS:g} ms at {r['connections']} connections",
                "value": r["latency_ms"]["p99"],
                "target": PENDING_P99_GOAL_MS,
                "shown": f"{r['latency_ms']['p99']:.1f} ms",
                "met": ok and r["latency_ms"]["p99"] <= PENDING_P99_GOAL_MS,
                "errors_in_run": not ok,
            }
        )
    return goals


# --- main -----------------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def workdir_for(args):
    path = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    try:
        yield path
    finally:
        if args.keep_workdir:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


class Watch:
    """Notes any other benchmark that runs while a measured phase is under way (pgrep every 2 s)."""

    def __init__(self, interval_s: float = 2.0):
        self.interval_s = interval_s
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.seen.update(other_benchmarks())
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(other_benchmarks())


def setup_and_fanout(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Steps 1-3: fresh database, devices, the timed jobs (checked), VACUUM ANALYZE."""
    from django.db import connection

    from jobs.models import JobExecution
    from jobs.services import MAX_TARGET_IDS

    connection.close()  # the database is about to be dropped
    pg_version = prepare_database(args, env)
    log(f"seeding {args.devices} devices tagged {FLEET_TAGS}")
    tenant, devices, seed_s = seed(args.devices)
    vacuum_s = {"after_seed": vacuum_analyze()}
    log(f"seeded in {seed_s} s; VACUUM ANALYZE {vacuum_s['after_seed']} s")

    fanout = []
    log("fan-out 1: tag selector")
    fanout.append(
        timed_job_create(tenant, job_id="fanout-tags", device_ids=None, tags=FLEET_TAGS, expected=args.devices)
    )
    log_job(fanout[-1])
    if args.devices <= MAX_TARGET_IDS:
        log("fan-out 2: explicit device_ids")
        all_ids = [d for _, d, _ in devices]
        fanout.append(
            timed_job_create(tenant, job_id="fanout-ids", device_ids=all_ids, tags=None, expected=args.devices)
        )
        log_job(fanout[-1])
    for n in range(len(fanout) + 1, args.jobs + 1):
        fanout.append(
            timed_job_create(tenant, job_id=f"fill-{n:02d}", device_ids=None, tags=FLEET_TAGS, expected=args.devices)
        )
        log_job(fanout[-1])
    executions_total = JobExecution.objects.count()
    if executions_total != len(fanout) * args.devices:
        raise BenchError(f"job_executions holds {executions_total} rows, expected {len(fanout) * args.devices}")
    return {
        "postgres": pg_version,
        "tenant": tenant,
        "devices": devices,
        "seed_s": seed_s,
        "vacuum_s": vacuum_s,
        "fanout": fanout,
        "executions_total": executions_total,
    }


def measure_wrk(wrk: str, args: argparse.Namespace, server, conns: int, tokens: list[str], sample_pks, workdir):
    """One wrk row (warm-up + measured run); rerun when another benchmark shows up meanwhile."""
    run_args = copy.copy(args)
    run_args.connections = conns
    run_args.wrk_threads = min(args.wrk_threads, conns)
    scenario = http_bench.Scenario(
        f"{PENDING.name}_c{conns}", f"{PENDING.label} c={conns}", PENDING.method, PENDING.path
    )
    for attempt in range(1, args.attempts + 1):
        quiet = wait_for_quiet(args, f"the wrk run at {conns} connections")
        set_last_seen(sample_pks, stale=args.stale_last_seen)
        with Watch() as watch:
            result = http_bench.run_scenario(wrk, run_args, server, scenario, tokens, workdir)
        result.update(
            {
                "connections": conns,
                "attempt": attempt,
                "waited_s": quiet["waited_s"],
                "machine_busy_pct_before": quiet["busy_pct"],
                "other_benchmarks_during": sorted(watch.seen),
            }
        )
        # Little's law: in a closed loop, mean latency ~= connections / throughput.
        result["littles_law_mean_ms"] = round(1000 * conns / result["rps"], 1) if result["rps"] else None
        if not watch.seen:
            break
        log(
            f"another benchmark ran during the {conns}-connection run ({next(iter(watch.seen))[:100]}); "
            f"{'rerunning' if attempt < args.attempts else 'keeping it, flagged'}"
        )
    return result


def run(args: argparse.Namespace, workdir: Path) -> dict:
    wrk, wrk_version = http_bench.find_wrk()
    env = http_bench.server_env(args)
    setup_django(args.database_url)
    from django.db import connection

    from jobs.services import MAX_TARGET_IDS

    waited = {}
    loads = {}
    # 1-3, redone from scratch when another benchmark ran meanwhile (the fan-out timings would be skewed).
    for attempt in range(1, args.attempts + 1):
        waited[f"before_setup_{attempt}"] = wait_for_quiet(args, "setup and fan-out")
        loads[f"setup_{attempt}"] = loadavg()
        with Watch() as watch:
            state = setup_and_fanout(args, env)
        state["attempt"] = attempt
        state["other_benchmarks_during"] = sorted(watch.seen)
        if not watch.seen:
            break
        log(
            f"another benchmark ran during the fan-out ({next(iter(watch.seen))[:100]}); "
            f"{'starting over' if attempt < args.attempts else 'keeping it, flagged'}"
        )
    tenant, devices, fanout = state["tenant"], state["devices"], state["fanout"]
    vacuum_s = state["vacuum_s"]
    missed_fanout = any(r["seconds"] > FANOUT_GOAL_S * args.devices / 100_000 for r in fanout[:2])
    fanout_explain = []
    if args.profile == "always" or (args.profile == "auto" and missed_fanout):
        log("profiling job_create: EXPLAIN ANALYZE of its writes (rolled back)")
        fanout_explain.append(explain_job_create(tenant, device_ids=None, tags=FLEET_TAGS, job_id="profile-tags"))
        if args.devices <= MAX_TARGET_IDS:
            fanout_explain.append(
                explain_job_create(tenant, device_ids=[d for _, d, _ in devices], tags=None, job_id="profile-ids")
            )
    what_ifs = []
    if fanout_explain and args.what_if_rounds > 0:
        log(f"schema what-ifs for job_create ({args.what_if_rounds} rounds, rolled back)")
        what_ifs = run_what_ifs(tenant, args.what_if_rounds)
    vacuum_s["after_fanout"] = vacuum_analyze()
    log(f"job_executions: {state['executions_total']} rows; VACUUM ANALYZE {vacuum_s['after_fanout']} s")
    sizes = index_sizes()

    # 4. pending.
    rng = random.Random(args.seed)
    order = rng.sample(range(len(devices)), len(devices))
    sample = [devices[i] for i in order[: args.sample]]
    others = [devices[i] for i in order[args.sample : args.sample + args.profile_requests + 1]]  # +1: warm-up
    expected_jobs = min(len(fanout), 10)
    check_sample_queues([pk for pk, _, _ in sample], len(fanout))
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        jit = cursor.fetchone()[0]
    waited["before_pending"] = wait_for_quiet(args, "the pending measurements")
    loads["before_pending"] = loadavg()
    log(f"load average before the pending measurements: {loads['before_pending']}")
    explain = explain_pending(sample[0][0])
    log(
        f"pending query: {explain['execution_ms']} ms, idx_job_exec_pending used: "
        f"{explain['uses_idx_job_exec_pending']}"
    )
    breakdown = None
    if args.profile_requests > 0 and len(others) > 1:
        log(f"in-process pending breakdown over {len(others) - 1} devices")
        breakdown = pending_breakdown(others, expected_jobs)
        breakdown["selector_variants"] = pending_query_variants([pk for pk, _, _ in others], expected_jobs)
    targets_sizes = job_targets_sizes()
    connection.close()  # the server's workers get their own connections

    tokens = [t for _, _, t in sample]
    sample_pks = [pk for pk, _, _ in sample]
    server = http_bench.Server(args, env, workdir)
    pending = []
    try:
        server.start()
        set_last_seen(sample_pks, stale=args.stale_last_seen)
        preflight(server, sample, expected_jobs, fanout[0]["job_id"])
        for conns in [args.connections, *args.more_connections]:
            pending.append(measure_wrk(wrk, args, server, conns, tokens, sample_pks, workdir))
        server_log = server.log_tail()
    finally:
        server.stop()
    return {
        "wrk_version": wrk_version,
        "postgres": state["postgres"],
        "jit": jit,
        "waited_for_other_benchmarks": waited,
        "fanout_attempt": state["attempt"],
        "other_benchmarks_during_fanout": state["other_benchmarks_during"],
        "seed_s": state["seed_s"],
        "vacuum_s": vacuum_s,
        "fanout": fanout,
        "fanout_explain": fanout_explain,
        "what_ifs": what_ifs,
        "job_targets_sizes": targets_sizes,
        "executions_total": state["executions_total"],
        "index_sizes": sizes,
        "expected_jobs": expected_jobs,
        "explain_pending": explain,
        "pending_breakdown": breakdown,
        "pending": pending,
        "server_log_tail": server_log,
        "loadavg": loads,
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # One run per database (the http benchmark's advisory lock, when it has one).
    lock = http_bench.RunLock(args.database_url) if hasattr(http_bench, "RunLock") else None
    try:
        if lock is not None:
            lock.acquire()
        with workdir_for(args) as workdir:
            out = run(args, workdir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()

    config = {
        "devices": args.devices,
        "jobs": len(out["fanout"]),
        "tags": FLEET_TAGS,
        "connections": args.connections,
        "more_connections": args.more_connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sample": args.sample,
        "expected_jobs_per_response": out["expected_jobs"],
        "stale_last_seen": args.stale_last_seen,
        "seed": args.seed,
        "server": "gunicorn",
        "workers": args.workers,
        "worker_class": args.worker_class,
        "threads": args.threads,
        "db_conn_max_age": args.conn_max_age,
        "debug": False,
        "access_log": False,
        "wrk_threads": args.wrk_threads,
        "wrk_timeout": args.wrk_timeout,
        "wrk": out["wrk_version"],
        "database": http_bench.redact(args.database_url),
        "postgres": out["postgres"],
        "postgres_jit": out["jit"],
        "cpu_count": os.cpu_count(),
        "started": started,
        "label": args.label,
        "fanout_timing": "job_create inside an outer transaction.atomic so COMMIT (deferred FK checks) is timed "
        "apart; statements timed with connection.execute_wrapper",
        "waited_for_other_benchmarks": out["waited_for_other_benchmarks"],
        "fanout_attempt": out["fanout_attempt"],
        "other_benchmarks_during_fanout": out["other_benchmarks_during_fanout"],
    }
    goals = evaluate(out["fanout"], out["pending"], args)
    extra = {
        "executions_total": out["executions_total"],
        "vacuum_s": out["vacuum_s"]["after_fanout"],
        "explain_pending": out["explain_pending"],
        "pending_breakdown": out["pending_breakdown"],
        "fanout_explain": out["fanout_explain"],
        "what_ifs": out["what_ifs"],
        "job_targets_sizes": out["job_targets_sizes"],
    }
    print_report(config, out["fanout"], out["pending"], goals, extra)
    payload = {
        "benchmark": "job_fanout",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": out["loadavg"]},
        "config": config,
        "versions": {**http_bench.versions(), "postgres": out["postgres"], "wrk": out["wrk_version"]},
        "seed_s": out["seed_s"],
        "vacuum_s": out["vacuum_s"],
        "fanout": out["fanout"],
        "fanout_explain": out["fanout_explain"],
        "what_ifs": out["what_ifs"],
        "job_targets_sizes": out["job_targets_sizes"],
        "index_sizes": out["index_sizes"],
        "executions_total": out["executions_total"],
        "pending": out["pending"],
        "explain_pending": out["explain_pending"],
        "pending_breakdown": out["pending_breakdown"],
        "goals": goals,
        "server_log_tail": out["server_log_tail"],
    }
    http_bench.write_json(args.output, payload)
    try:
        shown = args.output.resolve().relative_to(REPO)
    except ValueError:
        shown = args.output
    print(f"\nresults: {shown}")
    if any(r["errors"]["total"] for r in out["pending"]):
        print("error: some pending runs had failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
