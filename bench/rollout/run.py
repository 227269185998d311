"""Safe rollouts at fleet size: a desired-state job in exponential waves, an abort that reverts, the audit cost.

    .venv/bin/python bench/rollout/run.py [--devices 100000] [--base-rate 10000] [--factor 2] [--step 25000]
                                          [--abort-devices 50000] [--abort-timeout 20] [--audit-rounds 5]

1. rollout: a desired-state job (patch {"setpoint": 21}) over --devices devices (a tag selector),
   exponential rollout: --base-rate per minute, x --factor every --step notified devices.
   `manage.py mqtt_bridge` (the rollout scheduler, desired delivery, report ingestion) runs it
   against a private Mosquitto; a simulated fleet (bench/rollout/fleet.py: one MQTT connection
   for all devices) answers every desired version it receives with the seed's report of it.
   Reported: the release rate achieved at each configured rate (releases per tick over the time
   since the previous tick, the first tick left out), and from release to the device receiving
   the desired state, to its report, and to the execution SUCCEEDED (p50/p99).
2. abort: a second desired-state job over the first --abort-devices devices, released at once
   (JOBS_RELEASE_BATCH per transaction), whose patch the fleet does not apply (no report); the
   in-progress timeout (--abort-timeout s) times them out, the abort criterion (TIMED_OUT >= 10 %
   once all were released) trips: the job is canceled and every device gets its previous desired
   state back, a batch per transaction. Reported: seconds from the abort (the job canceled, its
   first batch reverted) to its last batch committed, and to the last device receiving it.
3. audit: desired writes through twin.services.twin_update_desired (the write path of the API and
   the admin) from --audit-threads writers, alternating write by write between the audit trail on
   and its rows neither built nor written, for --audit-rounds x --audit-seconds (the bridge
   stopped: the write path alone). Reported: time per write with and without, and the cost.
Goals: each rate within +-10 % of the configured one; the audit trail costs <= 5 % per desired write.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, app, cli, cpu, log, seed, servers
from bench.common.report import percentile, table
from bench.rollout import fleet as simulated

RATE_TOLERANCE = 0.10
AUDIT_COST_GOAL_PCT = 5.0
REFUSED_KEY = "unsupported_mode"


def options(p):
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--base-rate", type=int, default=10_000, help="releases per minute at the start")
    p.add_argument("--factor", type=float, default=2.0, help="the rate's increment factor")
    p.add_argument("--step", type=int, default=25_000, help="notified devices per rate step")
    p.add_argument("--abort-devices", type=int, default=50_000)
    p.add_argument("--abort-timeout", type=int, default=20, help="in-progress timeout of the aborted job (s)")
    p.add_argument("--audit-rounds", type=int, default=5)
    p.add_argument("--audit-seconds", type=float, default=4.0)
    p.add_argument("--audit-threads", type=int, default=4)
    p.add_argument("--phases", default="rollout,abort,audit", help="which of rollout, abort, audit to run")


def stamp(moment: datetime) -> float:
    return moment.timestamp()


def wait_job(job_pk: int, statuses: set[str], timeout: float, what: str) -> None:
    from jobs.models import Job

    deadline, last_log = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_pk)
        if job.status in statuses:
            return
        if time.monotonic() - last_log > 10:
            log(f"{what}: {job.status}, {job.released:,} of {job.total:,} released, {job.total - job.remaining:,} done")
            last_log = time.monotonic()
        time.sleep(0.1)
    raise BenchError(f"{what}: not {'/'.join(sorted(statuses))} within {timeout:.0f} s")


def executions(job_pk: int) -> list[tuple]:
    """(device_id, released_at, target_version, SUCCEEDED at or None, TIMED_OUT at or None) in release order."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.device_id, e.released_at, e.target_version,
                   (SELECT min(at) FROM job_execution_history WHERE execution_id = e.id AND status = 'SUCCEEDED'),
                   (SELECT min(at) FROM job_execution_history WHERE execution_id = e.id AND status = 'TIMED_OUT')
            FROM job_executions e JOIN device_state d ON d.id = e.device_id
            WHERE e.job_id = %s ORDER BY e.id
            """,
            [job_pk],
        )
        return cursor.fetchall()


def achieved_rates(rows: list[tuple], rollout) -> tuple[list[dict], dict[datetime, float]]:
    """Per configured rate: releases per minute over the ticks released at that rate (each tick's count
    over the time since the tick before; the first tick, the bucket's initial allowance, and the last,
    what was left, left out); and the configured rate of every tick."""
    ticks: dict[datetime, int] = {}
    for _, released_at, *_ in rows:
        ticks[released_at] = ticks.get(released_at, 0) + 1
    ordered = sorted(ticks.items())
    level_of, notified = {}, 0
    for moment, count in ordered:
        level_of[moment] = rollout.rate_per_minute(notified=notified, succeeded=0)
        notified += count
    levels: dict[float, list[float]] = {}
    for (previous, _), (moment, count) in itertools.pairwise(ordered[:-1]):  # the last: what was left
        seconds, n = levels.setdefault(level_of[moment], [0.0, 0])
        levels[level_of[moment]] = [seconds + (moment - previous).total_seconds(), n + count]
    rates = [{"configured_per_min": rate, "achieved_per_min": round(n / seconds * 60, 1) if seconds else None,
              "released": n, "seconds": round(seconds, 1)} for rate, (seconds, n) in levels.items()]  # fmt: skip
    return rates, level_of


def first_arrivals(arrivals) -> dict[tuple[str, int], tuple[float, float | None]]:
    out = {}
    for device_id, version, _, received, reported in arrivals:
        out.setdefault((device_id, version), (received, reported))
    return out


def ms(values) -> dict:
    return {p: round(percentile(values, int(p[1:])) * 1000, 1) for p in ("p50", "p99")} | {
        "max": round(max(values, default=float("nan")) * 1000, 1), "n": len(values)}  # fmt: skip


def rollout_phase(args, tenant) -> dict:
    from jobs.choices import DESIRED_PATCH
    from jobs.rollout import parse_rollout
    from jobs.services import job_create

    config = {"exponential": {"base_rate_per_minute": args.base_rate, "increment_factor": args.factor,
                              "rate_increase_criteria": {"number_of_notified_things": args.step}}}  # fmt: skip
    rollout = parse_rollout(config)
    expected = sum(
        min(args.step, args.devices - k * args.step) / rollout.rate_per_minute(notified=k * args.step, succeeded=0)
        for k in range(-(-args.devices // args.step))
    ) * 60  # fmt: skip
    started = time.monotonic()
    job = job_create(tenant=tenant, job_id="rollout", document_type=DESIRED_PATCH,
                     document_params={"patch": {"setpoint": 21}}, tags={"fleet": "bench"}, rollout=config,
                     in_progress_timeout_seconds=3600)  # fmt: skip
    log(f"job created over {job.total:,} devices in {time.monotonic() - started:.1f} s; the rollout should take "
        f"{expected:.0f} s")  # fmt: skip
    wait_job(job.pk, {"COMPLETED", "CANCELED"}, expected * 1.5 + 120, "rollout")
    rows = executions(job.pk)
    rates, levels = achieved_rates(rows, rollout)
    return {"rows": rows, "rates": rates, "levels": levels, "expected_s": expected}


def abort_phase(args, tenant, pipe) -> dict:
    from jobs.choices import DESIRED_PATCH
    from jobs.models import Job
    from jobs.services import job_create

    ids = [f"dev-{n:06d}" for n in range(args.abort_devices)]
    job = job_create(tenant=tenant, job_id="aborted", document_type=DESIRED_PATCH,
                     document_params={"patch": {REFUSED_KEY: "on"}}, device_ids=ids,
                     in_progress_timeout_seconds=args.abort_timeout,
                     abort_config={"criteria": [{"failure_type": "TIMED_OUT", "threshold_percentage": 10,
                                                 "min_executed": args.abort_devices}]})  # fmt: skip
    log(f"abort job over {job.total:,} devices; their timeouts come in {args.abort_timeout} s")
    wait_job(job.pk, {"CANCELED", "COMPLETED"}, args.abort_timeout + 300, "abort")
    deadline = time.monotonic() + 600
    while Job.objects.filter(pk=job.pk, reverting=True).exists():  # canceled at once, reverted a batch at a time
        if time.monotonic() > deadline:
            raise BenchError("abort: the revert did not end within 600 s")
        time.sleep(0.1)
    reverted_at = time.time()
    job = Job.objects.get(pk=job.pk)
    rows = executions(job.pk)
    # A revert is the version after the job's own (a device the patch had not reached yet gets only that).
    expected = {device_id: target + 1 for device_id, _, target, _, _ in rows if target is not None}
    pipe.send(expected)
    deadline, reverted = time.monotonic() + 300, 0
    while time.monotonic() < deadline:
        pipe.send("count")
        if (reverted := pipe.recv()) >= len(expected):
            break
        time.sleep(0.2)
    return {"job": job, "rows": rows, "fleet_reverted": reverted, "reverted_at": reverted_at}


def audit_phase(args, tenant) -> dict:
    """Desired writes with the audit trail and without it (its rows neither built nor sent), alternating
    write by write in every writer thread, so that whatever else changes during the run (autovacuum,
    checkpoints, the table growing) weighs on both alike; the bridge stopped: the write path alone."""
    from django.db import connection

    from devices.models import AuditEvent, Device
    from twin import engine
    from twin.services import twin_update_desired

    devices = list(Device.objects.filter(tenant=tenant).order_by("pk")[: args.audit_threads * 2000])
    real_row, real_insert = engine._audit_row, engine._insert_audits
    local = threading.local()
    engine._audit_row = lambda *a: None if local.off else real_row(*a)
    engine._insert_audits = lambda rows, deferred: None if local.off else real_insert(rows, deferred)
    seconds = args.audit_rounds * args.audit_seconds
    latencies: dict[bool, list[float]] = {False: [], True: []}  # off -> seconds per write
    before = AuditEvent.objects.count()

    def writer(mine, warm_up: float):
        stop, n = time.monotonic() + warm_up + seconds, 0
        warm = time.monotonic() + warm_up
        while (now := time.monotonic()) < stop:
            local.off = n % 2 == 1
            started = time.perf_counter()
            twin_update_desired(device=mine[n % len(mine)], document={"setpoint": n})
            if now >= warm:
                latencies[local.off].append(time.perf_counter() - started)
            n += 1
        connection.close()

    try:
        threads = [threading.Thread(target=writer, args=(devices[i :: args.audit_threads], 1.0))
                   for i in range(args.audit_threads)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine._audit_row, engine._insert_audits = real_row, real_insert
    recorded = AuditEvent.objects.count() - before
    audited = len(latencies[False])
    if recorded < audited:  # the warm-up's audited writes are recorded too, not timed
        raise BenchError(f"audit: {audited} audited writes left only {recorded} audit events")
    return {
        "with_ms": [x * 1000 for x in latencies[False]],
        "without_ms": [x * 1000 for x in latencies[True]],
        "seconds": seconds,
    }


def bench(args, run) -> int:
    db = run.database()
    app.setup_django(run.database_url)
    phases = set(args.phases.split(","))
    if unknown := phases - {"rollout", "abort", "audit"}:
        raise BenchError(f"--phases: unknown {', '.join(sorted(unknown))} (rollout, abort, audit)")
    if args.abort_devices > args.devices:
        raise BenchError("--abort-devices cannot exceed --devices")
    tenant, _ = seed.devices(args.devices, width=6, tags={"fleet": "bench"})
    report = run.report(config={**{k: v for k, v in vars(args).items() if k != "output"}, **db.info})
    if phases & {"rollout", "abort"}:
        broker = run.start(servers.Mosquitto())
        app.close_connections()  # the fleet forks
        process, pipe = simulated.start(broker.port, tenant.pk, REFUSED_KEY)
        bridge = run.start(servers.Bridge(run.env(JOBS_SWEEP_SECONDS="1"), broker.url))
        groups = {"bridge": bridge.pids, "mosquitto": broker.pids, "postgres": cpu.postgres_pids(db.name),
                  "fleet": lambda: [process.pid]}  # fmt: skip
        rolled = aborted = None
        if "rollout" in phases:
            with cpu.CpuMonitor(**groups) as usage:
                rolled = rollout_phase(args, tenant)
            rolled["cpu"] = usage.usage
        if "abort" in phases:
            with cpu.CpuMonitor(**groups) as usage:
                aborted = abort_phase(args, tenant, pipe)
            aborted["cpu"] = usage.usage
        pipe.send("stop")
        arrivals = pipe.recv()
        process.join(10)
        report.data["bridge"] = bridge.stop()
        first = first_arrivals(arrivals)
        if rolled is not None:
            show_rollout(args, report, rolled, first)
        if aborted is not None:
            show_abort(args, report, aborted, arrivals, first)
    if "audit" in phases:
        show_audit(args, report, audit_phase(args, tenant))
    return report.finish(args.fail_on_missed_goals)


def show_rollout(args, report, rolled: dict, first: dict) -> None:
    rows, levels = rolled["rows"], rolled["levels"]
    by_level: dict[float, dict[str, list[float]]] = {}
    missing = 0
    for device_id, released_at, target, succeeded_at, _ in rows:
        got = first.get((device_id, target))
        if got is None or succeeded_at is None:
            missing += 1
            continue
        for level in (levels[released_at], "all"):
            lists = by_level.setdefault(level, {"received": [], "reported": [], "succeeded": []})
            lists["received"].append(got[0] - stamp(released_at))
            lists["reported"].append(got[1] - stamp(released_at))
            lists["succeeded"].append(stamp(succeeded_at) - stamp(released_at))
    span = stamp(max(r[1] for r in rows)) - stamp(min(r[1] for r in rows))
    print(f"\nRollout: {len(rows):,} devices, exponential from {args.base_rate:,}/min x{args.factor:g} every "
          f"{args.step:,} notified; released in {span:.1f} s (configured: {rolled['expected_s']:.1f} s)\n")  # fmt: skip
    rate_rows = []
    for level in rolled["rates"]:
        off = (level["achieved_per_min"] or 0) / level["configured_per_min"] - 1
        rate_rows.append([f"{level['configured_per_min']:,.0f}", f"{level['achieved_per_min'] or 0:,.0f}",
                          f"{off * 100:+.1f}%", f"{level['released']:,}", f"{level['seconds']:.1f}"])  # fmt: skip
        report.rate(f"releases at {level['configured_per_min']:,.0f}/min", achieved=level["achieved_per_min"],
                    target=level["configured_per_min"], unit="/min", note=f"{off * 100:+.1f}%")  # fmt: skip
    print(table(["configured /min", "achieved /min", "off", "released", "seconds"], rate_rows))
    worst = max((abs((x["achieved_per_min"] or 0) / x["configured_per_min"] - 1) for x in rolled["rates"]), default=0)
    report.goal("release rate off the configured one (worst step)", achieved=round(worst * 100, 1),
                target=RATE_TOLERANCE * 100, unit="%", met=worst <= RATE_TOLERANCE)  # fmt: skip
    ordered = sorted(by_level.items(), key=lambda item: (item[0] == "all", item[0] if item[0] != "all" else 0))
    latency = {str(level): {k: ms(v) for k, v in lists.items()} for level, lists in ordered}
    print()
    print(table(["released at /min", "executions", "-> received p50/p99 ms", "-> reported p50/p99 ms",
                 "-> SUCCEEDED p50/p99 ms"],
                [[level if level == "all" else f"{float(level):,.0f}", f"{x['received']['n']:,}",
                  *(f"{x[k]['p50']:,.0f} / {x[k]['p99']:,.0f}" for k in ("received", "reported", "succeeded"))]
                 for level, x in latency.items()]))  # fmt: skip
    print(f"CPU (% of one core): {cpu.summary(rolled['cpu'])}")
    if missing:
        report.problem(f"{missing} execution(s) of the rollout never received or never succeeded")
    report.data["rollout"] = {"rates": rolled["rates"], "released_over_s": round(span, 2), "missing": missing,
                              "expected_s": round(rolled["expected_s"], 2), "latency_ms": latency,
                              "cpu": rolled["cpu"]}  # fmt: skip


def show_abort(args, report, aborted: dict, arrivals, first: dict) -> None:
    job, rows = aborted["job"], aborted["rows"]
    timeouts = [stamp(r[4]) for r in rows if r[4] is not None]
    targets = {device_id: target for device_id, _, target, _, _ in rows if target is not None}
    revert_received: dict[str, float] = {}  # device -> its first desired newer than the job's, without the patch
    for device_id, version, refused, received, _ in arrivals:
        if not refused and version > targets.get(device_id, version):
            revert_received[device_id] = min(received, revert_received.get(device_id, received))
    wave = ms([first[(d, t)][0] - stamp(r) for d, r, t, _, _ in rows if (d, t) in first])
    aborted_at = stamp(job.canceled_at)  # the criterion tripped: canceled, its first batch reverted
    to_commit = aborted["reverted_at"] - aborted_at  # polled every 0.1 s
    reverted_by = max(revert_received.values(), default=float("nan")) - aborted_at
    released_s = stamp(max(r[1] for r in rows)) - stamp(min(r[1] for r in rows))
    print(f"\nAbort: {len(rows):,} devices patched at once (released in {released_s:.1f} s, "
          f"{settings_batch()} per transaction; release -> device p50 {wave['p50']:,.0f} ms, p99 "
          f"{wave['p99']:,.0f} ms, {wave['n']:,} received, the rest got the revert only), {len(timeouts):,} timed "
          f"out; {job.cancel_reason}")  # fmt: skip
    print(table(["from the abort (job canceled, first batch reverted) to", "seconds"],
                [["the revert's last batch committed", f"{to_commit:.2f}"],
                 [f"the last of {len(revert_received):,} devices receiving it", f"{reverted_by:.2f}"]]))  # fmt: skip
    print(f"CPU (% of one core): {cpu.summary(aborted['cpu'])}")
    if aborted["fleet_reverted"] < args.abort_devices:
        report.problem(f"only {aborted['fleet_reverted']:,} of {args.abort_devices:,} devices received the revert")
    report.data["abort"] = {
        "devices": len(rows), "timed_out": len(timeouts), "cancel_reason": job.cancel_reason,
        "wave_release_to_device_ms": wave, "wave_released_s": round(released_s, 2),
        "abort_to_revert_committed_s": round(to_commit, 3), "abort_to_last_device_reverted_s": round(reverted_by, 3),
        "devices_reverted": aborted["fleet_reverted"], "cpu": aborted["cpu"],
    }  # fmt: skip


def settings_batch() -> int:
    from django.conf import settings

    return settings.JOBS_RELEASE_BATCH


def show_audit(args, report, audit: dict) -> None:
    with_, without = audit["with_ms"], audit["without_ms"]
    mean_with, mean_without = statistics.fmean(with_), statistics.fmean(without)
    cost = (mean_with - mean_without) / mean_without * 100  # of the time per write: writes/s lose as much
    # Each writer writes back to back: its rate is 1 / the time per write.
    rate_with, rate_without = args.audit_threads / mean_with * 1000, args.audit_threads / mean_without * 1000
    print(f"\nAudit trail on the desired write path ({args.audit_threads} writers, {audit['seconds']:g} s, "
          f"writes with and without it alternating)\n")  # fmt: skip
    shown = (("with the audit trail", with_, rate_with), ("without", without, rate_without))
    print(table(["", "writes", "mean ms", "p50 ms", "p99 ms", "writes/s"],
                [[name, f"{len(x):,}", f"{statistics.fmean(x):.2f}", f"{percentile(x, 50):.2f}",
                  f"{percentile(x, 99):.2f}", f"{rate:,.0f}"] for name, x, rate in shown]))  # fmt: skip
    print(f"cost: {cost:+.1f}% of the time per desired write")
    report.rate("desired writes with the audit trail", achieved=round(rate_with, 1), unit="writes/s",
                note=f"{args.audit_threads} writers")  # fmt: skip
    report.rate("desired writes without it", achieved=round(rate_without, 1), unit="writes/s",
                note=f"{args.audit_threads} writers")  # fmt: skip
    report.goal("audit trail cost per desired write", achieved=round(cost, 1), target=AUDIT_COST_GOAL_PCT,
                unit="%", met=cost <= AUDIT_COST_GOAL_PCT)  # fmt: skip
    report.data["audit"] = {
        "writes_with": len(with_), "writes_without": len(without), "mean_ms_with": round(mean_with, 3),
        "mean_ms_without": round(mean_without, 3), "p50_ms_with": round(percentile(with_, 50), 3),
        "p50_ms_without": round(percentile(without, 50), 3), "cost_pct": round(cost, 2),
    }  # fmt: skip


if __name__ == "__main__":
    smoke = {"devices": 400, "base_rate": 6000, "step": 150, "abort_devices": 200, "abort_timeout": 2,
             "audit_rounds": 1, "audit_seconds": 1.0, "audit_threads": 2}  # fmt: skip
    sys.exit(cli.main("rollout", __doc__, options, bench, smoke))
