"""Cost as the fleet grows: the same device and operator requests at 10,000, 100,000 and 1,000,000 devices.

    .venv/bin/python bench/fleet_size/run.py [--sizes 10000,100000,1000000] [--duration 8] [--connections 16]
        [--scenarios get_shadow,post_reported,jobs_pending,list_pending,list_stale] [--no-bridge] [--smoke]

For each fleet size, in turn:

1. The database recreated and seeded in set-based SQL (common/seed.fleet: INSERT ... SELECT
   generate_series): one tenant, N devices in steady state (desired published and reported back,
   seen seconds ago), 1,000 of them with a desired version they have not reported yet (a rollout
   wave: the same number at every size; sync PENDING), 3 % seen two days ago (STALE); job
   "fleet-1" queued for every device and "fleet-2" for every 10th (N + N/10 executions); VACUUM
   ANALYZE.
2. Each scenario's statements, captured from one request served in this process (the real
   views), each EXPLAIN (ANALYZE, BUFFERS) in a rolled-back transaction: the scans on the tables
   that grow with the fleet (device_state, job_executions, ...), any Seq Scan on them, and the rows
   those scans read (returned + removed by a filter).
3. gunicorn as bench/http_device_api serves it (5 sync workers, DB_CONN_MAX_AGE=60), one checked
   request per scenario, then per scenario a warm-up and a measured wrk run (16 connections,
   round-robin over up to 10,000 random in-sync devices' tokens):
     get_shadow     GET  /device/v1/shadow
     post_reported  POST /device/v1/shadow/reported   {"reported": {"interval": 30}, "version": 1}
     jobs_pending   GET  /device/v1/jobs/pending       (one or two queued executions)
     list_pending   GET  /customer/devices?sync_status=pending   (an operator's bearer token; first page, 100)
     list_stale     GET  /customer/devices?sync_status=stale
   then the RSS of each gunicorn worker (VmRSS) and its peak (VmHWM).
4. The MQTT bridge (manage.py mqtt_bridge) on a private Mosquitto: first resuming a session the
   broker holds (no republish owed) for --bridge-seconds with its loops quickened (delivery poll 1 s,
   anti-entropy every 0.5 s over 500 devices, canary check every 2 s); then as a new bridge the
   broker has no session for, which marks every device's retained state for republishing
   (recovery: one UPDATE per table over the fleet) and delivers it, watched for --republish-seconds
   after the mark. RSS and peak RSS (VmHWM) of the bridge process after each, and the devices
   republished.

Prints one table: a row per figure, a column per fleet size, and "flat?": the largest fleet's figure
within FLAT_FACTOR (1.5x) of the smallest's (for req/s: at least 1/1.5 of it). Goals: per scenario, p99
and rows read flat by that rule (rows read is what "index-served" means here: no Seq Scan and the
same rows at every size); the gunicorn worker's and the bridge's peak RSS flat by it.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, Unavailable, app, cli, cpu, db, log, required, seed, servers, wrk
from bench.common.report import number, table

FLAT_FACTOR = 1.5
# Tables that grow with the fleet: a Seq Scan on one of them costs more with every device.
FLEET_TABLES = {
    "device_state", "job_executions", "job_execution_history", "audit_events", "twin_named_shadows",
    "twin_shadow_events", "device_certificates",
}  # fmt: skip
REPORTED = json.dumps({"reported": {"interval": 30}, "version": 1}, separators=(",", ":"))
SCENARIOS = {
    s.name: s
    for s in (
        wrk.Scenario("get_shadow", "GET shadow", path="/device/v1/shadow"),
        wrk.Scenario("post_reported", "POST reported", "POST", "/device/v1/shadow/reported", REPORTED),
        wrk.Scenario("jobs_pending", "GET jobs/pending", path="/device/v1/jobs/pending"),
        wrk.Scenario("list_pending", "list sync_status=pending", path="/customer/devices?sync_status=pending",
                     needs_token=False),
        wrk.Scenario("list_stale", "list sync_status=stale", path="/customer/devices?sync_status=stale",
                     needs_token=False),
    )
}  # fmt: skip
OPERATOR_SCENARIOS = {"list_pending", "list_stale"}


def options(p):
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated fleet sizes, smallest first")
    p.add_argument("--pending", type=int, default=1000, help="devices with a desired version not yet reported")
    p.add_argument("--stale-pct", type=int, default=3, help="%% of devices last seen two days ago")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--duration", type=float, default=6, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--repeat", type=int, default=2, help="measured runs per scenario and size, interleaved; medians")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--sample", type=int, default=10_000, help="random in-sync devices whose tokens wrk uses")
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--bridge-seconds", type=float, default=15, help="steady bridge loops before its RSS is read")
    p.add_argument("--republish-seconds", type=float, default=20, help="republishing watched after the mark")
    p.add_argument("--republish-max", type=int, default=100_000,
                   help="the full-fleet republish at fleets up to this size (at 1,000,000 its mark, an UPDATE of "
                        "every device's row, took over 2 minutes on this machine)")  # fmt: skip
    p.add_argument("--bridge-from", type=int, default=100_000, help="the bridge's memory at fleets this big and up")
    p.add_argument("--no-bridge", action="store_true", help="skip the bridge's memory")
    p.add_argument("--seed", type=int, default=1, help="random seed of the device sample")


def check(p, args):
    try:
        args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes takes comma-separated integers")
    if not args.sizes or any(s < 100 for s in args.sizes) or args.sizes != sorted(args.sizes):
        p.error("--sizes: at least one, each >= 100, smallest first")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in args.scenarios if s not in SCENARIOS]:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")


# --- memory, from /proc ---------------------------------------------------------------------------


def memory(pid: int) -> dict | None:
    """{"rss_mb", "hwm_mb"} of a process (VmRSS, and VmHWM: its peak RSS), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in fields}
    return {"rss_mb": round(kb.get("VmRSS", 0) / 1024, 1), "hwm_mb": round(kb.get("VmHWM", 0) / 1024, 1)}


class RssSampler:
    """The RSS of a process every `interval` seconds in a thread: its largest and last reading."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            if (m := memory(self.pid)) is not None:
                self.samples.append(m["rss_mb"])
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- query shapes ---------------------------------------------------------------------------------


def capture(method: str, path: str, headers: dict, body: str | None = None) -> tuple[int, list]:
    """One request served by the application in this process: its status and the statements it ran."""
    from django.db import connection
    from django.test import Client

    statements = []

    def wrapper(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    client = Client(HTTP_HOST="127.0.0.1")
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    with connection.execute_wrapper(wrapper):
        if method == "POST":
            response = client.post(path, body, content_type="application/json", **extra)
        else:
            response = client.get(path, **extra)
    return response.status_code, statements


def plan_nodes(node: dict):
    yield node
    for child in node.get("Plans") or []:
        yield from plan_nodes(child)


def explain(statements: list) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement that reads or writes a table, in a transaction rolled back."""
    from django.db import connection, transaction

    out = []
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT", "DELETE", "WITH")):
            continue
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
            transaction.set_rollback(True)
        plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
        scans, seq, rows = [], [], 0
        for n in plan_nodes(plan["Plan"]):
            relation = n.get("Relation Name")
            if relation is None or n["Node Type"] in ("ModifyTable",):
                continue
            loops = n.get("Actual Loops", 1)
            removed = n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0)
            read = (n.get("Actual Rows", 0) + removed) * loops
            index = n.get("Index Name") or "+".join(  # a bitmap heap scan's indexes are its children's
                c["Index Name"] for c in plan_nodes(n) if c.get("Index Name") and c is not n
            )  # fmt: skip
            scans.append({"node": n["Node Type"], "relation": relation, "index": index or None, "rows_read": read})
            if relation in FLEET_TABLES:
                rows += read
                if n["Node Type"] == "Seq Scan":
                    seq.append(relation)
        if not scans:
            continue
        out.append({
            "sql": " ".join(sql.split())[:300], "scans": scans, "seq_scans_on_fleet_tables": seq,
            "fleet_rows_read": rows, "ms": round(plan.get("Execution Time", 0.0), 3),
            "buffers": plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0),
        })  # fmt: skip
    return out


def shape(plans: list[dict]) -> dict:
    """A scenario's statements summed up: rows read on fleet tables, Seq Scans on them, the scans."""
    scans = sorted({f"{s['node']} {s['relation']}" + (f" ({s['index']})" if s["index"] else "")
                    for p in plans for s in p["scans"]
                    if s["relation"] in FLEET_TABLES})  # fmt: skip
    return {
        "statements": len(plans),
        "fleet_rows_read": sum(p["fleet_rows_read"] for p in plans),
        "seq_scans": sorted({t for p in plans for t in p["seq_scans_on_fleet_tables"]}),
        "scans": scans,
        "sql_ms": round(sum(p["ms"] for p in plans), 3),
        "plans": plans,
    }


# --- one fleet size -------------------------------------------------------------------------------


def operator_token(tenant) -> str:
    from devices.services import operator_create, operator_token_create

    return operator_token_create(user=operator_create(username="bench-operator", tenant=tenant))


def refresh_last_seen(device_ids: list[str]) -> None:
    """The sample's devices were heard from just now (no request of the run has a last_seen to write)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE device_state SET last_seen = now() WHERE device_id = ANY(%s)", [device_ids])


def check_response(sc, status, body, fleet) -> None:
    from twin.shadow import PENDING, STALE

    ok = status == 200 and isinstance(body, dict)
    if ok and sc.name in OPERATOR_SCENARIOS:
        want = PENDING if sc.name == "list_pending" else STALE
        results = body.get("results") or []
        ok = bool(results) and all(d.get("sync_status") == want for d in results)
    elif ok and sc.name == "jobs_pending":
        ok = bool(body.get("jobs")) and body["jobs"][0]["job_id"] == "fleet-1"
    elif ok and sc.name == "get_shadow":
        ok = body.get("desired") == {"interval": 30}
    elif ok:
        ok = body.get("accepted") is True
    if not ok:
        raise BenchError(f"preflight {sc.method} {sc.path} at {fleet.count:,} devices: {status} {str(body)[:300]}")


def use_database(url: str) -> None:
    """Point this process's Django connection at another of the run's databases (same server)."""
    from django.db import connections

    app.close_connections()
    connections["default"].settings_dict["NAME"] = db.name_of(url)


def prepare(args, fleet, sample: list[int]) -> tuple[str, dict]:
    """An operator's bearer token; each scenario's query shapes; the sample's last_seen refreshed."""
    bearer = operator_token(fleet.tenant)
    shapes = {}
    # First: a device request would otherwise also write its due last_seen, which is not its shape.
    refresh_last_seen([f"dev-{n:07d}" for n in sample])
    for name in args.scenarios:
        sc = SCENARIOS[name]
        headers = ({"Authorization": f"Bearer {bearer}"} if name in OPERATOR_SCENARIOS
                   else {"X-Provision-Token": fleet.token(sample[0])})  # fmt: skip
        status, statements = capture(sc.method, sc.path, headers, sc.body)
        if status != 200:
            raise BenchError(f"{sc.method} {sc.path} in this process: {status}")
        shapes[name] = s = shape(explain(statements))
        log(f"{name} at {fleet.count:,}: {s['statements']} statements, {s['fleet_rows_read']:,} fleet rows read, "
            f"seq scans {s['seq_scans'] or 'none'}; {', '.join(s['scans'])}")  # fmt: skip
    refresh_last_seen([f"dev-{n:07d}" for n in sample])
    return bearer, shapes


def scenario_for(name: str, bearer: str) -> tuple[wrk.Scenario, dict]:
    sc = SCENARIOS[name]
    if name not in OPERATOR_SCENARIOS:
        return sc, {}
    auth = ("Authorization", f"Bearer {bearer}")
    return wrk.Scenario(sc.name, sc.label, sc.method, sc.path, sc.body, needs_token=False, headers=(auth,)), dict(
        [auth]
    )


def measure_http(args, run, binary, fleets: dict, webs: dict, dbs: dict) -> dict[int, dict]:
    """wrk per scenario, the fleet sizes interleaved (a change in the machine's load hits every size
    alike): for each scenario, --repeat rounds over the sizes, every other round in reverse order."""
    runs: dict[int, dict[str, list]] = {n: {name: [] for name in args.scenarios} for n in fleets}
    scripts = {}
    for n, f in fleets.items():
        tokens = [f["fleet"].token(i) for i in f["sample"]]
        for name in args.scenarios:
            sc, headers = scenario_for(name, f["bearer"])
            headers = headers or {"X-Provision-Token": tokens[-1]}
            status, body = servers.http_json(sc.method, webs[n].base_url + sc.path, sc.body, headers)
            check_response(sc, status, body, f["fleet"])
            workdir = run.workdir / str(n)
            workdir.mkdir(exist_ok=True)
            scripts[n, name] = wrk.script(sc, tokens, workdir)
    for name in args.scenarios:
        for rep in range(args.repeat):
            for n in list(fleets) if rep % 2 == 0 else list(fleets)[::-1]:
                url = webs[n].base_url + SCENARIOS[name].path
                if args.warmup > 0:
                    wrk.run(binary, url, scripts[n, name], connections=args.connections, duration=args.warmup)
                with cpu.CpuMonitor(gunicorn=webs[n].pids, postgres=cpu.postgres_pids(dbs[n].name)) as usage:
                    result = wrk.run(binary, url, scripts[n, name], connections=args.connections,
                                     duration=args.duration)  # fmt: skip
                    usage.add("wrk", result["cpu_s"])
                result["cpu"] = usage.usage
                result.pop("wrk_output", None)
                wrk.log_result(f"{name} at {n:,} (round {rep + 1}/{args.repeat})", result)
                runs[n][name].append(result)
    return {n: {name: median_of(r) for name, r in by.items()} for n, by in runs.items()}


def median_of(runs: list[dict]) -> dict:
    if len(runs) == 1:
        return runs[0]
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in runs) for k in runs[0]["latency_ms"]},
        "errors": {"total": sum(r["errors"]["total"] for r in runs)},
        "runs": runs,
    }


def gunicorn_memory(web) -> dict:
    workers = {pid: m for pid in web.pids()[1:] if (m := memory(pid))}
    return {
        "workers": len(workers),
        "worker_rss_mb": max((m["rss_mb"] for m in workers.values()), default=None),
        "worker_hwm_mb": max((m["hwm_mb"] for m in workers.values()), default=None),
        "worker_rss_median_mb": statistics.median([m["rss_mb"] for m in workers.values()]) if workers else None,
        "master": memory(web.pids()[0]),
    }


def resumable_session(port: int, client_id: str) -> None:
    """What a bridge that ran before leaves on the broker: a persistent MQTT 5 session under its client id
    and its retained canary (mqtt_bridge.recovery). The bridge then connects with session_present, finds
    its canary, and owes no full republish."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from mqtt_bridge import topics
    from mqtt_bridge.recovery import Canary, canary_key, canary_payload

    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *a: connected.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError("could not open the bridge's session on the private broker")
        canary = Canary(1, time.time())
        info = client.publish(topics.bridge_canary(canary_key(client_id)), canary_payload(canary), qos=1, retain=True)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def unpublished(db) -> int:
    return db.query("SELECT count(*) FROM device_state WHERE desired_version > desired_published_version")[0][0]


def measure_bridge(args, url: str, db, fleet) -> dict:
    """The bridge's RSS after its steady loops (its session resumed), then while it republishes the fleet."""
    from mqtt_bridge.recovery import mark_for_republish

    env = app.env(url, MQTT_POLL_SECONDS="1", MQTT_ANTI_ENTROPY_SECONDS="0.5", MQTT_CANARY_CHECK_SECONDS="2")
    out = {}
    with servers.Mosquitto() as broker:
        client_id = f"bench-fleet-{fleet.count}"
        resumable_session(broker.port, client_id)
        with servers.Bridge(env, broker.url, client_id=client_id) as bridge:
            if "session_present=True" not in bridge.log_text():
                raise BenchError(f"the bridge did not resume its session:\n{bridge.log_tail()}")
            with RssSampler(bridge.pid) as sampler:
                time.sleep(args.bridge_seconds)
            bridge.check_alive("during its steady loops")
            out["steady"] = {**(memory(bridge.pid) or {}), "rss_max_sampled_mb": max(sampler.samples, default=None),
                             "seconds": args.bridge_seconds}  # fmt: skip
            log(f"bridge at {fleet.count:,}, steady: {out['steady']}")
            if fleet.count > args.republish_max:
                out["stats"] = bridge.stop()
                return out
            # What the bridge does when the broker lost its retained store (recovery.mark_for_republish:
            # one UPDATE per table over the fleet), here from this process: the bridge then delivers it all.
            with RssSampler(bridge.pid) as sampler:
                t0 = time.monotonic()
                marked = mark_for_republish()
                mark_s = time.monotonic() - t0
                app.close_connections()
                time.sleep(args.republish_seconds)
                left = unpublished(db)
            bridge.check_alive("while republishing")
            republish = memory(bridge.pid) or {}
            out["broker"] = memory(broker.pid)
            stats = bridge.stop()
        out["republish"] = {
            **republish, "rss_max_sampled_mb": max(sampler.samples, default=None), "mark_s": round(mark_s, 2),
            "watched_s": args.republish_seconds, "desired_marked": marked.desired, "jobs_marked": marked.jobs,
            "devices_republished": marked.desired - left,
            "devices_per_s": round((marked.desired - left) / args.republish_seconds),
        }  # fmt: skip
        out["stats"] = stats
        if stats.get("full_republishes"):
            log(f"warning: the bridge republished the fleet by itself ({stats['full_republishes']}x)")
        log(f"bridge at {fleet.count:,}, republishing: {out['republish']}")
    return out


# --- the table ------------------------------------------------------------------------------------


def ratio(values: list, higher_is_better: bool) -> float | None:
    """The largest fleet's figure over the smallest's (both measured), inverted for a figure where more is better."""
    measured = [v for v in values if v is not None]
    if len(measured) < 2:
        return None
    first, last = measured[0], measured[-1]
    if higher_is_better:
        return round(first / last, 2) if last else None
    return round(last / first, 2) if first else (1.0 if not last else None)


def flat_cell(r: float | None) -> str:
    if r is None:
        return "-"
    return f"yes ({r:.2f}x)" if r <= FLAT_FACTOR else f"NO ({r:.2f}x)"


def rows_of(args, sizes: dict) -> list[tuple[str, list, bool, str]]:
    """(figure, a value per size, higher is better, unit) for the table."""
    out = []
    for name in args.scenarios:
        label = SCENARIOS[name].label
        http = [s["http"].get(name) for s in sizes.values()]
        shp = [s["shapes"].get(name) for s in sizes.values()]
        if any(http):
            out.append((f"{label} req/s", [h and h["rps"] for h in http], True, ""))
            out.append((f"{label} p50 ms", [h and h["latency_ms"]["p50"] for h in http], False, ""))
            out.append((f"{label} p99 ms", [h and h["latency_ms"]["p99"] for h in http], False, ""))
        out.append((f"{label}: fleet rows read (EXPLAIN)", [s and s["fleet_rows_read"] for s in shp], False, ""))
        out.append((f"{label}: SQL ms (EXPLAIN ANALYZE)", [s and s["sql_ms"] for s in shp], False, "info"))
    mem = [s.get("gunicorn_memory") or {} for s in sizes.values()]
    if any(mem):
        out.append(("gunicorn worker RSS MB (largest)", [m.get("worker_rss_mb") for m in mem], False, ""))
        out.append(("gunicorn worker peak RSS MB (VmHWM)", [m.get("worker_hwm_mb") for m in mem], False, ""))
    bridge = [s.get("bridge") or {} for s in sizes.values()]
    if any(bridge):
        steady = [b.get("steady") or {} for b in bridge]
        rep = [b.get("republish") or {} for b in bridge]
        out.append(("bridge RSS MB, steady loops", [b.get("rss_mb") for b in steady], False, ""))
        out.append(("bridge peak RSS MB, steady (VmHWM)", [b.get("hwm_mb") for b in steady], False, ""))
        out.append(("bridge RSS MB, republishing the fleet", [b.get("rss_mb") for b in rep], False, ""))
        out.append(("bridge peak RSS MB, republishing (VmHWM)", [b.get("hwm_mb") for b in rep], False, ""))
        out.append(("republish: the mark (UPDATEs over the fleet) s", [b.get("mark_s") for b in rep], False, "info"))
        out.append(("republish: devices/s delivered", [b.get("devices_per_s") for b in rep], True, "info"))
    return out


def cell(value) -> str:
    if value is None:
        return "-"
    return number(float(value)) if isinstance(value, float) else f"{value:,}"


# --- the benchmark --------------------------------------------------------------------------------


def database_url(run, count: int) -> str:
    """The database of one fleet size: the run's name with the size in it (a smoke run's keeps its pid last)."""
    base = db.name_of(run.database_url)
    if run.smoke and (m := db.SMOKE_PATTERN.match(base)):
        name = f"{base[: m.start(1) - 1]}_{count}_{m.group(1)}"
    else:
        name = f"{base}_{count}"
    return run.database_url.rsplit("/", 1)[0] + "/" + name


def bench(args, run) -> int:
    binary = wrk.require(smoke=args.smoke)
    urls = {n: database_url(run, n) for n in args.sizes}
    dbs = {n: run.stack.enter_context(db.Database(url, drop_after=run.smoke)) for n, url in urls.items()}
    app.setup_django(urls[args.sizes[0]])
    sizes: dict[int, dict] = {}
    fleets: dict[int, dict] = {}
    for count in args.sizes:  # every fleet seeded first, kept side by side
        use_database(urls[count])
        log(f"fleet of {count:,} devices: seeding")
        fleet = seed.fleet(count, pending=min(args.pending, max(1, count // 10)), stale_pct=args.stale_pct)
        synced = [n for n in range(count) if fleet.sync_status(n) == "SYNCED"]
        sample = random.Random(args.seed).sample(synced, min(args.sample, len(synced)))
        bearer, shapes = prepare(args, fleet, sample)
        fleets[count] = {"fleet": fleet, "sample": sample, "bearer": bearer}
        sizes[count] = {"seed": {"executions": fleet.executions, "seconds": fleet.seconds,
                                 "pending_devices": len(range(0, count, fleet.pending_every)),
                                 "stale_pct": args.stale_pct},
                        "shapes": shapes, "http": {}, "gunicorn_memory": {}}  # fmt: skip
    app.close_connections()
    if binary is not None:
        with contextlib.ExitStack() as stack:  # a gunicorn per fleet, all serving at once
            webs = {n: stack.enter_context(servers.Gunicorn(app.env(urls[n], DB_CONN_MAX_AGE="60"),
                                                            workers=args.workers)) for n in args.sizes}  # fmt: skip
            http = measure_http(args, run, binary, fleets, webs, dbs)
            for n in args.sizes:
                sizes[n]["http"] = http[n]
                sizes[n]["gunicorn_memory"] = gunicorn_memory(webs[n])
            if any(r["errors"]["total"] for h in http.values() for r in h.values()):
                for n, web in webs.items():
                    log(f"gunicorn log ({n:,} devices):\n{web.log_tail()}")
    bridge_ok = not args.no_bridge
    for count in args.sizes:
        if bridge_ok and count >= args.bridge_from:
            use_database(urls[count])
            try:
                sizes[count]["bridge"] = measure_bridge(args, urls[count], dbs[count], fleets[count]["fleet"])
            except Unavailable as exc:
                if not args.smoke or required():
                    raise
                print(f"skipped the bridge part: {exc}")
                bridge_ok = False
        sizes[count]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    app.close_connections()

    config = {k: v for k, v in vars(args).items() if k != "output"}
    config.update(dbs[args.sizes[-1]].info, databases=[d.name for d in dbs.values()], flat_factor=FLAT_FACTOR,
                  wrk=wrk.version(binary) if binary else None)  # fmt: skip
    report = run.report(config=config)
    headers = ["figure", *(f"{n:,}" for n in args.sizes), "flat?"]
    rows = []
    for what, values, higher, kind in rows_of(args, sizes):
        rows.append([what, *(cell(v) for v in values), "" if kind == "info" else flat_cell(ratio(values, higher))])
    print(f"\nCost as the fleet grows: {args.connections} connections, {args.duration:g} s per run, gunicorn "
          f"{args.workers} sync workers; flat: the largest fleet within {FLAT_FACTOR}x of the smallest\n")  # fmt: skip
    print(table(headers, rows))
    largest = args.sizes[-1]
    plan_rows = []
    for name in args.scenarios:
        s = sizes[largest]["shapes"][name]
        served = "no: Seq Scan on " + ", ".join(s["seq_scans"]) if s["seq_scans"] else "yes"
        plan_rows.append([SCENARIOS[name].label, s["statements"], "; ".join(s["scans"]), served])
    print(f"\nQuery shapes at {largest:,} devices (EXPLAIN ANALYZE of each statement one request runs):\n")
    print(table(["scenario", "statements", "scans on fleet tables", "index-served"], plan_rows))
    report.data["tables"] = [
        {"title": f"By fleet size ({args.connections} connections, {args.duration:g} s per run; flat: the largest "
                  f"fleet's figure within {FLAT_FACTOR}x of the smallest's)", "headers": headers, "rows": rows},
        {"title": f"Query shapes at {largest:,} devices", "headers": ["scenario", "statements",
                                                                      "scans on fleet tables", "index-served"],
         "rows": plan_rows},
    ]  # fmt: skip

    def goal(what, values, higher=False):
        r = ratio(values, higher)
        if r is not None:
            report.goal(what, achieved=r, target=FLAT_FACTOR, unit="x", met=r <= FLAT_FACTOR)

    if len(args.sizes) > 1:
        span = f"{args.sizes[-1]:,} vs {args.sizes[0]:,} devices"
        for name in args.scenarios:
            label = SCENARIOS[name].label
            values = [s["http"].get(name) for s in sizes.values()]
            if all(values):
                goal(f"{label} p99, {span}", [v["latency_ms"]["p99"] for v in values])
            goal(f"{label} rows read (index-served), {span}", [s["shapes"][name]["fleet_rows_read"]
                                                              for s in sizes.values()])  # fmt: skip
        if all(s.get("gunicorn_memory") for s in sizes.values()):
            goal(f"gunicorn worker peak RSS, {span}", [s["gunicorn_memory"]["worker_hwm_mb"] for s in sizes.values()])
        bridged = {n: s["bridge"] for n, s in sizes.items() if s.get("bridge")}
        if len(bridged) > 1:
            goal(f"bridge peak RSS after its loops, {max(bridged):,} vs {min(bridged):,} devices",
                 [b["steady"].get("hwm_mb") for b in bridged.values()])  # fmt: skip
    for count, s in sizes.items():
        for name, r in s["http"].items():
            if r["errors"]["total"]:
                report.problem(f"{name} at {count:,} devices: {r['errors']['total']} failed requests {r['errors']}")
        for name, shp in s["shapes"].items():
            if shp["seq_scans"]:
                log(f"finding: {name} at {count:,} devices: Seq Scan on {', '.join(shp['seq_scans'])}")
    report.data["sizes"] = {str(k): v for k, v in sizes.items()}
    return report.finish(args.fail_on_missed_goals)


if __name__ == "__main__":
    smoke = {"sizes": "300,600", "pending": 20, "sample": 100, "duration": 1, "warmup": 0, "workers": 2,
             "connections": 4, "repeat": 1, "bridge_seconds": 0.5, "republish_seconds": 1, "republish_max": 600,
             "bridge_from": 600}  # fmt: skip
    sys.exit(cli.main("fleet_size", __doc__, options, bench, smoke, check=check))
