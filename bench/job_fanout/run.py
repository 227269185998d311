"""Job fan-out to 100,000 devices, and the device pending-jobs read at 1,000,000 executions.

    .venv/bin/python bench/job_fanout/run.py [--devices 100000] [--jobs 10] [--connections 16] [--duration 15]

1. A fresh database, one tenant and N devices tagged {"fleet": "bench"}; VACUUM ANALYZE.
2. Fan-out: jobs.services.job_create for a job targeting every device by tag selector,
   then one naming all N device ids; seconds until all executions are committed (checked:
   N QUEUED executions each), with the INSERT ... SELECT and the COMMIT (deferred foreign-key
   checks) timed apart. Goal (the performance issue's): <= 1 s per 100,000 executions, both kinds.
3. More jobs by tag until there are --jobs of them (jobs x N executions); VACUUM ANALYZE.
4. GET /device/v1/jobs/pending under gunicorn (as bench/http_device_api serves it) with wrk,
   round-robin over --sample random devices (each has min(jobs, 10) jobs pending), at
   --connections and each of --more-connections. Goals (the performance issue's): p99 <= 15 ms at 16
   connections, <= 50 ms at 64.
   last_seen is set to now first, so no request writes (--stale-last-seen: every first poll does).

Query plans, the per-request SQL/Python breakdown and schema what-ifs: bench/job_fanout/whatif.py.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, app, cli, cpu, log, seed, servers, wrk
from bench.common.report import table

FLEET_TAGS = {"fleet": "bench"}
FANOUT_GOAL_S = 1.0  # per 100,000 executions
PENDING_P99_GOAL_MS = {16: 15.0, 64: 50.0}  # by wrk connections
PENDING = wrk.Scenario("jobs_pending", "GET jobs/pending", path="/device/v1/jobs/pending")


def options(p):
    p.add_argument("--devices", type=int, default=100_000, help="devices, all targeted by every job")
    p.add_argument("--jobs", type=int, default=10, help="jobs in total (the first two are the timed fan-outs)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections of the goal row")
    p.add_argument("--more-connections", default="64", help="comma-separated extra wrk rows ('' for none)")
    p.add_argument("--duration", type=float, default=15, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--sample", type=int, default=10_000, help="random devices whose tokens wrk uses")
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--conn-max-age", type=int, default=60)
    p.add_argument("--stale-last-seen", action="store_true", help="clear last_seen first (every first poll writes)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the device sample")


def check(p, args):
    args.more_connections = [int(c) for c in args.more_connections.split(",") if c.strip()]
    if args.jobs < 2:
        p.error("--jobs must be >= 2 (one by tag selector, one by device ids)")
    args.sample = min(args.sample, args.devices)


def seed_fleet(devices: int):
    """The tenant and its devices, all tagged FLEET_TAGS."""
    return seed.devices(devices, width=6, tags=FLEET_TAGS)


def create_job(tenant, job_id: str, *, device_ids=None, expected: int) -> dict:
    """jobs.services.job_create, timed: its INSERT ... SELECT, its other statements, and the COMMIT apart.

    An outer transaction.atomic makes job_create's own a savepoint (the same statements),
    so the COMMIT, which runs the deferred foreign-key checks, is timed on its own.
    """
    from django.db import connection, transaction

    from jobs.models import JobExecution
    from jobs.services import job_create

    spent = {"insert_executions": 0.0, "other_statements": 0.0}

    def timer(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            kind = "insert_executions" if sql.lstrip().startswith("INSERT INTO job_executions") else "other_statements"
            spent[kind] += time.perf_counter() - started

    started = time.perf_counter()
    with connection.execute_wrapper(timer), transaction.atomic():
        job = job_create(
            tenant=tenant,
            job_id=job_id,
            document_type="firmware_update",
            device_ids=device_ids,
            tags=None if device_ids else FLEET_TAGS,
            document_params={"version": "2.4.1"},
        )
        body = time.perf_counter() - started
    seconds = time.perf_counter() - started
    queued = JobExecution.objects.filter(job=job, status="QUEUED").count()
    if queued != expected or job.total != expected:
        raise BenchError(f"job {job_id}: expected {expected} QUEUED executions, found {queued} (total {job.total})")
    out = {"job_id": job_id, "selector": "device_ids" if device_ids else "tags", "executions": queued}
    out.update({k: round(v, 3) for k, v in spent.items()}, commit=round(seconds - body, 3), seconds=round(seconds, 3))
    out["python_and_other"] = round(seconds - sum(spent.values()) - out["commit"], 3)
    log(
        f"{job_id}: {queued:,} executions in {seconds:.2f} s (insert {out['insert_executions']:.2f}, commit "
        f"{out['commit']:.2f})"
    )
    return out


def fan_out(tenant, devices, jobs: int) -> list[dict]:
    from jobs.services import MAX_TARGET_IDS

    n = len(devices)
    fanout = [create_job(tenant, "fanout-tags", expected=n)]
    if n <= MAX_TARGET_IDS:
        fanout.append(create_job(tenant, "fanout-ids", device_ids=[d.device_id for d in devices], expected=n))
    for i in range(len(fanout) + 1, jobs + 1):
        fanout.append(create_job(tenant, f"fill-{i:02d}", expected=n))
    return fanout


def set_last_seen(pks: list[int], *, stale: bool) -> None:
    from django.utils import timezone

    from devices.models import Device

    Device.objects.filter(pk__in=pks).update(last_seen=None if stale else timezone.now())


def bench(args, run) -> int:
    binary = wrk.require(smoke=args.smoke)
    db = run.database()
    app.setup_django(run.database_url)
    tenant, devices = seed_fleet(args.devices)
    fanout = fan_out(tenant, devices, args.jobs)
    vacuum_s = seed.vacuum_analyze()
    report = run.report(config={**{k: v for k, v in vars(args).items() if k != "output"}, **db.info})
    rows = []
    for r in fanout:
        rows.append(
            [
                r["job_id"],
                r["selector"],
                f"{r['executions']:,}",
                f"{r['seconds']:.2f}",
                f"{r['executions'] / r['seconds']:,.0f}",
                f"{r['insert_executions']:.2f}",
                f"{r['other_statements']:.2f}",
                f"{r['commit']:.2f}",
                f"{r['python_and_other']:.2f}",
            ]
        )
    title = f"Job fan-out: {args.devices:,} devices, {len(fanout)} jobs ({len(fanout) * args.devices:,} executions)"
    headers = ["job", "selector", "executions", "s", "exec/s", "INSERT..SELECT s", "other SQL s", "COMMIT s",
               "python s"]  # fmt: skip
    print(f"\n{title}\n")
    print(table(headers, rows))
    report.data["tables"] = [{"title": title, "headers": headers, "rows": rows}]
    target = FANOUT_GOAL_S * args.devices / 100_000
    for r in fanout[:2]:
        report.rate(f"fan-out ({r['selector']})", achieved=round(r["executions"] / r["seconds"]), unit="executions/s")
        report.goal(
            f"fan-out of {r['executions']:,} ({r['selector']})",
            achieved=r["seconds"],
            target=target,
            unit="s",
            met=r["seconds"] <= target,
        )
    report.data.update(fanout=fanout, vacuum_after_fanout_s=vacuum_s)

    pending = []
    if binary is not None:
        sample = random.Random(args.seed).sample(devices, args.sample)
        expected_jobs = min(len(fanout), 10)
        set_last_seen([d.pk for d in sample], stale=args.stale_last_seen)
        app.close_connections()
        web = run.start(servers.Gunicorn(run.env(DB_CONN_MAX_AGE=str(args.conn_max_age)), workers=args.workers))
        for d in sample[:20]:
            status, body = servers.http_json("GET", web.base_url + PENDING.path, headers={"X-Provision-Token": d.token})
            jobs = body.get("jobs") if isinstance(body, dict) else None
            if status != 200 or jobs is None or len(jobs) != expected_jobs or jobs[0]["job_id"] != "fanout-tags":
                raise BenchError(f"preflight pending for {d.device_id}: {status} {str(body)[:300]}")
        script = wrk.script(PENDING, [d.token for d in sample], run.workdir)
        url = web.base_url + PENDING.path
        for conns in [args.connections, *args.more_connections]:
            if args.warmup > 0:
                wrk.run(binary, url, script, connections=conns, duration=args.warmup)
            with cpu.CpuMonitor(gunicorn=web.pids, postgres=cpu.postgres_pids(db.name)) as usage:
                result = wrk.run(binary, url, script, connections=conns, duration=args.duration)
                usage.add("wrk", result["cpu_s"])
            wrk.log_result(f"pending c={conns}", result)
            pending.append({"connections": conns, **result, "cpu": usage.usage})
            report.rate(f"pending, {conns} connections (closed loop)", achieved=result["rps"], unit="req/s")
            if result["errors"]["total"]:
                report.problem(f"pending c={conns}: {result['errors']['total']} failed requests {result['errors']}")
        rows = [
            [
                p["connections"],
                f"{p['rps']:.0f}",
                f"{p['latency_ms']['p50']:.1f}",
                f"{p['latency_ms']['p99']:.1f}",
                p["errors"]["total"],
                cpu.summary(p["cpu"]),
            ]
            for p in pending
        ]
        title = f"GET {PENDING.path}: {args.sample:,} device tokens, {expected_jobs} jobs per answer"
        headers = ["connections", "req/s", "p50 ms", "p99 ms", "errors", "CPU (% of one core)"]
        print(f"\n{title}\n")
        print(table(headers, rows))
        report.data["tables"].append({"title": title, "headers": headers, "rows": rows})
        for p in pending:
            target, p99 = PENDING_P99_GOAL_MS.get(p["connections"]), p["latency_ms"]["p99"]
            if target is not None:
                report.goal(f"pending p99 at {p['connections']} connections", achieved=p99, target=target,
                            unit="ms", met=p99 <= target)  # fmt: skip
        report.data["server_log_tail"] = web.log_tail()
    report.data["pending"] = pending
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    smoke = {"devices": 300, "jobs": 3, "sample": 100, "duration": 1, "warmup": 0, "more_connections": "", "workers": 2}
    sys.exit(cli.main("job_fanout", __doc__, options, bench, smoke, check=check))
