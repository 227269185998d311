"""The device HTTP API under gunicorn, served as in production, driven by wrk: req/s and latency.

    .venv/bin/python bench/http_device_api/run.py [--duration 15] [--connections 64] [--devices 1000]
        [--workers 5] [--worker-class sync|gthread|asgi] [--threads 1] [--repeat 1] [--smoke]

A fresh database with one tenant and N devices at desired_version 1; gunicorn
(iotcloud.wsgi, DEBUG off, DB_CONN_MAX_AGE=60, no access log) on a free port; each
scenario checked once (status and body; a wrong token gets 401), then a warm-up and a
measured wrk run, in the same server run:

  baseline       GET  /healthz/live              bare Django JSON view, no database
  get_shadow     GET  /device/v1/shadow          device token auth + one SELECT
  post_reported  POST /device/v1/shadow/reported token auth + parse + one UPDATE

Device scenarios spread over every device token. Reported: the req/s achieved, p50/p99,
errors, ratio to the baseline, CPU per process group, database commits per request,
devices whose last_seen was written and the share of device_state row updates PostgreSQL made in
place (HOT: no index entry written). Goals (the performance issue): GET >= 50 % and POST >= 35 %
of the baseline's req/s, p99 <= 50 ms. --repeat N interleaves the scenarios N times and shows medians.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, app, cli, cpu, log, seed, servers, wrk
from bench.common.report import table

DESIRED = {"interval": 30}
REPORTED = json.dumps({"reported": {"interval": 30}, "version": 1}, separators=(",", ":"))
SCENARIOS = {
    s.name: (s, expect)
    for s, expect in (
        (wrk.Scenario("baseline", "baseline /healthz/live", path="/healthz/live", needs_token=False), {"status": "ok"}),
        (wrk.Scenario("get_shadow", "GET shadow", path="/device/v1/shadow"), {"desired": DESIRED, "version": 1}),
        (
            wrk.Scenario("post_reported", "POST reported", "POST", "/device/v1/shadow/reported", REPORTED),
            {"accepted": True, "version": 1},
        ),
    )
}
GOALS = [
    ("get_shadow", "ratio", 0.50),
    ("post_reported", "ratio", 0.35),
    ("get_shadow", "p99", 50.0),
    ("post_reported", "p99", 50.0),
]


def options(p):
    p.add_argument("--duration", type=float, default=15, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of warm-up before each measured run (0: none)")
    p.add_argument("--settle", type=float, default=1.5, help="seconds for PostgreSQL's statistics around a run")
    p.add_argument("--repeat", type=int, default=1, help="measured runs per scenario, interleaved; medians shown")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--worker-class", default="sync", choices=["sync", "gthread", "asgi"])
    p.add_argument("--threads", type=int, default=1, help="threads per worker (gthread)")
    p.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE (asgi needs 0)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")


def check(p, args):
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in args.scenarios if s not in SCENARIOS]:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.worker_class != "gthread" and args.threads != 1:
        p.error("--threads needs --worker-class gthread")
    if args.worker_class == "asgi" and args.conn_max_age != 0:
        p.error("--worker-class asgi needs --conn-max-age 0 (one persistent connection per request thread)")


def measure(binary, args, db, web, sc, script) -> dict:
    url = web.base_url + sc.path
    if args.warmup > 0:
        wrk.run(binary, url, script, connections=args.connections, duration=args.warmup, threads=args.wrk_threads)
    time.sleep(args.settle)
    commits0, clock0 = db.commits()
    updates0 = db.row_updates("device_state")
    with cpu.CpuMonitor(gunicorn=web.pids, postgres=cpu.postgres_pids(db.name)) as usage:
        result = wrk.run(
            binary, url, script, connections=args.connections, duration=args.duration, threads=args.wrk_threads
        )
        usage.add("wrk", result["cpu_s"])
    time.sleep(args.settle)
    commits1, clock1 = db.commits()
    updates1 = db.row_updates("device_state")
    written = db.query("SELECT count(*) FROM device_state WHERE last_seen BETWEEN %s AND %s", [clock0, clock1])
    result.update(
        cpu=usage.usage,
        commits_per_request=round((commits1 - commits0) / max(result["requests"], 1), 2),
        devices_written=written[0][0],
        row_updates=updates1[0] - updates0[0],
        hot_updates=updates1[1] - updates0[1],
    )
    wrk.log_result(sc.name, result)
    return result


def median_of(runs: list[dict]) -> dict:
    if len(runs) == 1:
        return runs[0]
    return {
        **runs[-1],
        "rps": statistics.median(r["rps"] for r in runs),
        "rps_range": [min(r["rps"] for r in runs), max(r["rps"] for r in runs)],
        "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in runs) for k in runs[0]["latency_ms"]},
        "errors": {"total": sum(r["errors"]["total"] for r in runs)},
        "runs": runs,
    }


def bench(args, run) -> int:
    binary = wrk.require(smoke=args.smoke)
    if binary is None:
        return 0
    db = run.database()
    app.setup_django(run.database_url)
    _, devices = seed.devices(args.devices, desired=DESIRED)
    tokens = [d.token for d in devices]
    app.close_connections()
    web = run.start(
        servers.Gunicorn(
            run.env(DB_CONN_MAX_AGE=str(args.conn_max_age)),
            workers=args.workers,
            worker_class=args.worker_class,
            threads=args.threads,
        )
    )
    scenarios = [SCENARIOS[name][0] for name in args.scenarios]
    for sc in scenarios:  # one checked request each before any load
        status, body = servers.http_json(
            sc.method, web.base_url + sc.path, sc.body, {"X-Provision-Token": tokens[-1]} if sc.needs_token else {}
        )
        expect = SCENARIOS[sc.name][1]
        if status != 200 or not isinstance(body, dict) or any(body.get(k) != v for k, v in expect.items()):
            raise BenchError(f"preflight {sc.method} {sc.path}: expected 200 {expect}, got {status} {body}")
    if servers.http_json("GET", web.base_url + "/device/v1/shadow", headers={"X-Provision-Token": "iotd_no"})[0] != 401:
        raise BenchError("preflight: a wrong provision token should get 401")
    scripts = {sc.name: wrk.script(sc, tokens, run.workdir) for sc in scenarios}
    runs: dict[str, list[dict]] = {sc.name: [] for sc in scenarios}
    for rep in range(args.repeat):
        for sc in scenarios:
            log(f"{sc.name}: {args.duration:g} s at {args.connections} connections (round {rep + 1}/{args.repeat})")
            runs[sc.name].append(measure(binary, args, db, web, sc, scripts[sc.name]))
    results = {name: median_of(r) for name, r in runs.items()}
    base = results.get("baseline")
    for r in results.values():
        r["ratio_to_baseline"] = round(r["rps"] / base["rps"], 3) if base and base["rps"] else None

    config = {
        "app": web.app,
        "workers": args.workers,
        "worker_class": args.worker_class,
        "threads": args.threads,
        "db_conn_max_age": args.conn_max_age,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "devices": args.devices,
        "wrk_threads": args.wrk_threads,
        "wrk": wrk.version(binary),
        **db.info,
    }
    report = run.report(config=config)
    print(
        f"\nHTTP device API: gunicorn {args.worker_class} {args.workers}x{args.threads}, {args.connections} "
        f"connections, {args.duration:g} s per run, {args.devices} devices{', medians' if args.repeat > 1 else ''}\n"
    )
    rows, cpu_rows = [], []
    for name, r in results.items():
        sc = SCENARIOS[name][0]
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] is not None else "-"
        spread = "{:.0f}-{:.0f}".format(*r["rps_range"]) if "rps_range" in r else ""
        rows.append(
            [
                sc.label,
                f"{r['rps']:.0f}",
                spread,
                f"{r['latency_ms']['p50']:.1f}",
                f"{r['latency_ms']['p99']:.1f}",
                r["errors"]["total"],
                ratio,
            ]
        )
        hot = f"{100 * r['hot_updates'] / r['row_updates']:.0f}%" if r.get("row_updates") else "-"
        cpu_rows.append([sc.label, cpu.summary(r["cpu"]), f"~{r['commits_per_request']:.1f}", r["devices_written"],
                         hot])  # fmt: skip
        report.rate(f"{sc.label} (closed loop, {args.connections} connections)", achieved=r["rps"], unit="req/s")
        if r["errors"]["total"]:
            report.problem(f"{sc.label}: {r['errors']['total']} failed requests: {r['errors']}")
    print(table(["scenario", "req/s", "range", "p50 ms", "p99 ms", "errors", "vs baseline"], rows))
    print("\nCPU during the measured runs (% of one core):")
    print(table(["scenario", "CPU", "commits/request", "devices written", "HOT row updates"], cpu_rows))
    for name, kind, target in GOALS:
        r = results.get(name)
        if r is None or (kind == "ratio" and r["ratio_to_baseline"] is None):
            continue
        label = SCENARIOS[name][0].label
        if kind == "ratio":
            report.goal(
                f"{label} / baseline req/s",
                achieved=r["ratio_to_baseline"],
                target=target,
                met=r["ratio_to_baseline"] >= target,
                relation=">=",
            )
        else:
            p99 = r["latency_ms"]["p99"]
            report.goal(f"{label} p99", achieved=p99, target=target, unit="ms", met=p99 <= target)
    report.data["results"] = results
    report.data["server_log_tail"] = web.log_tail()
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    sys.exit(
        cli.main(
            "http_device_api",
            __doc__,
            options,
            bench,
            check=check,
            smoke={"devices": 200, "duration": 1, "warmup": 0, "settle": 0.2, "connections": 4, "workers": 2},
        )
    )
