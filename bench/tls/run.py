"""What TLS costs on this machine: bridge ingest, device HTTP and a fleet reconnecting, each plain and over TLS.

    .venv/bin/python bench/tls/run.py [--parts ingest,http,storm] [--devices 5000] [--rounds 4]
        [--duration 8] [--connections 64] [--clients 4] [--connects 1500] [--smoke]

The certificates are a development CA and broker certificate made for the run (mqtt_bridge.dev_tls:
ECDSA P-256, for 127.0.0.1) in its work directory; every client verifies the chain and the address.

1. ingest: the bridge phase of bench/mqtt_ingest (bench/common/ingest.py): publisher processes
   send QoS 1 reports for N devices x R rounds through a private Mosquitto, `manage.py mqtt_bridge`
   commits them; msg/s until every device's last round is committed, none lost. Once on the broker's
   plain listener, once on its TLS listener (publishers: tls_set(ca_certs=...); the bridge:
   MQTT_URL=mqtts://127.0.0.1:<port>?ca_file=...), each with a fresh broker and database.
2. http: GET /device/v1/shadow with wrk (64 connections over the device tokens) against gunicorn
   (5 sync workers, as http_device_api) directly, and through nginx (bench/common/servers.TlsProxy,
   shaped like the compose proxy) in plain HTTP and in TLS; through nginx with keep-alive
   (connections reused: the steady-state cost) and with `Connection: close` (a new connection, a
   full TLS handshake, per request: no session cache, no tickets).
3. storm: K client processes each open M MQTT connections one after the other as fast as they can
   (TCP, the TLS handshake, CONNECT -> CONNACK, DISCONNECT; raw MQTT 3.1.1 packets, so the broker,
   not a client library, is what is measured), on a plain and on a TLS listener of one Mosquitto.

Reported: what was achieved each way (msg/s, req/s and p50/p99, connections/s and p50/p99 connect
time), the TLS cost in %, CPU per process group. No goals: the issue asks for the figures.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BenchError, Unavailable, app, cli, cpu, log, required, seed, servers, wrk
from bench.common.ingest import bridge_rate
from bench.common.report import percentile, table

PARTS = ("ingest", "http", "storm")
DESIRED = {"interval": 30}
KEEP_ALIVE = wrk.Scenario("get_shadow", "GET shadow", path="/device/v1/shadow")
CLOSE = wrk.Scenario("get_shadow_close", "GET shadow, Connection: close", path="/device/v1/shadow",
                     headers=(("Connection", "close"),))  # fmt: skip


def options(p):
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    g = p.add_argument_group("ingest")
    g.add_argument("--devices", type=int, default=5000, help="devices reporting (ingest)")
    g.add_argument("--rounds", type=int, default=4, help="reports per device")
    g.add_argument("--publishers", type=int, default=2, help="publisher processes")
    g.add_argument("--batch-max", type=int, default=2000, help="MQTT_BATCH_MAX of the bridge")
    g.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"], help="the bridge's MQTT protocol")
    g = p.add_argument_group("http")
    g.add_argument("--http-devices", type=int, default=1000, help="device tokens wrk walks")
    g.add_argument("--duration", type=float, default=8, help="seconds per measured wrk run")
    g.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each (0: none)")
    g.add_argument("--connections", type=int, default=64)
    g.add_argument("--workers", type=int, default=5, help="gunicorn sync workers")
    g.add_argument("--proxy-workers", default="auto", help="nginx worker_processes (the official image: auto)")
    g = p.add_argument_group("storm")
    g.add_argument("--clients", type=int, default=4, help="client processes (K)")
    g.add_argument("--connects", type=int, default=1500, help="connections each client opens (M)")


def check(p, args):
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if unknown := [s for s in args.parts if s not in PARTS]:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")


def cost(plain: float, tls: float) -> float | None:
    """How much lower the TLS figure is, in % of the plain one."""
    return round(100 * (plain - tls) / plain, 1) if plain else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def cpu_us(usage: dict, group: str, count: int) -> float | None:
    """CPU microseconds one process group spent per message / request / connection."""
    seconds = usage.get("cpu_s", {}).get(group)
    return round(1e6 * seconds / count, 1) if seconds is not None and count else None


def us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


# --- 1. bridge ingest ---------------------------------------------------------------------------


def ingest(args, run, db, dev) -> dict:
    out = {}
    for way in ("plain", "tls"):
        if way == "tls":
            db.recreate()  # the same start as the plain phase: devices with no round reported
        device_ids = [d.device_id for d in seed.devices(args.devices)[1]]
        app.close_connections()  # the publishers fork: no shared database socket
        with servers.Mosquitto(tls=dev) as broker:
            log(f"ingest, {way}: {args.devices * args.rounds:,} QoS 1 reports through mqtt_bridge")
            out[way] = bridge_rate(run, db, broker, device_ids, args, tls=way == "tls")
        app.close_connections()
        log(f"ingest, {way}: {out[way]['rate']:,} msg/s committed, {out[way]['lost']} lost")
    return out


# --- 2. device HTTP -------------------------------------------------------------------------------


def https_context(dev) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dev.ca_file))


def preflight(url: str, token: str, context: ssl.SSLContext | None) -> None:
    req = urllib.request.Request(url + KEEP_ALIVE.path, headers={"X-Provision-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            body = json.loads(resp.read())
    except OSError as exc:
        raise BenchError(f"preflight GET {url}{KEEP_ALIVE.path}: {exc}") from None
    if body.get("desired") != DESIRED or body.get("version") != 1:
        raise BenchError(f"preflight GET {url}{KEEP_ALIVE.path}: unexpected body {body}")


def tls_parameters(port: int, context: ssl.SSLContext) -> dict:
    """The protocol and cipher a verifying client negotiates with the listener on `port`."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        return {"version": sock.version(), "cipher": sock.cipher()[0]}


def http(args, run, db, dev, binary) -> dict:
    db.recreate()
    _, devices = seed.devices(args.http_devices, desired=DESIRED)
    tokens = [d.token for d in devices]
    app.close_connections()
    web = run.start(servers.Gunicorn(run.env(DB_CONN_MAX_AGE="60"), workers=args.workers))
    proxy = run.start(servers.TlsProxy(web.port, dev, run.workdir, workers=args.proxy_workers))
    context = https_context(dev)
    for url, ctx in ((web.base_url, None), (proxy.url, None), (proxy.tls_url, context)):
        preflight(url, tokens[-1], ctx)
    scripts = {sc.name: wrk.script(sc, tokens, run.workdir) for sc in (KEEP_ALIVE, CLOSE)}
    rows = [  # (key, label, url, scenario)
        ("direct", "gunicorn directly (sync workers close every connection)", web.base_url, KEEP_ALIVE),
        ("proxy_keepalive", "nginx, plain HTTP, keep-alive", proxy.url, KEEP_ALIVE),
        ("tls_keepalive", "nginx, TLS, keep-alive", proxy.tls_url, KEEP_ALIVE),
        ("proxy_close", "nginx, plain HTTP, new connection per request", proxy.url, CLOSE),
        ("tls_close", "nginx, TLS, new connection (full handshake) per request", proxy.tls_url, CLOSE),
    ]
    results = {}
    for key, label, url, sc in rows:
        target = url + sc.path
        log(f"http {key}: {args.duration:g} s at {args.connections} connections, {target}")
        if args.warmup > 0:
            wrk.run(binary, target, scripts[sc.name], connections=args.connections, duration=args.warmup)
        groups = {"gunicorn": web.pids, "postgres": cpu.postgres_pids(db.name)}
        if url != web.base_url:
            groups["nginx"] = proxy.pids
        with cpu.CpuMonitor(**groups) as usage:
            result = wrk.run(binary, target, scripts[sc.name], connections=args.connections, duration=args.duration)
            usage.add("wrk", result["cpu_s"])
        wrk.log_result(key, result)
        result.pop("wrk_output", None)
        results[key] = {"label": label, "url": target, **result, "cpu": usage.usage}
    return {
        "results": results,
        "tls": tls_parameters(proxy.tls_port, context),
        "nginx": proxy.version,
        "wrk": wrk.version(binary),
    }


# --- 3. reconnect storm ---------------------------------------------------------------------------


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, no credentials (the broker is anonymous)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    if len(body) > 127:
        raise ValueError("client id too long for a one-byte remaining length")
    return b"\x10" + bytes([len(body)]) + body


CONNACK_OK = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"


def recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def storm_client(port: int, ca_file: str | None, index: int, count: int, ready, start, out) -> None:
    """Open `count` connections one after the other: connect (and handshake), CONNECT, wait for CONNACK,
    DISCONNECT, close. Each a full handshake: the context is shared, no session is ever reused."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    connect_s, handshake_s, failures, first_error, negotiated = [], [], 0, None, None
    ready.put(1)
    start.wait()
    began = time.perf_counter()
    for n in range(count):
        t0 = time.perf_counter()
        sock = None
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname="127.0.0.1")  # the handshake, verified
                handshake_s.append(time.perf_counter() - t0)
                negotiated = negotiated or {"version": sock.version(), "cipher": sock.cipher()[0]}
            sock.sendall(connect_packet(f"storm-{index}-{n}"))
            ack = recv_exact(sock, 4)
            if ack != CONNACK_OK:
                raise OSError(f"CONNACK {ack.hex() or '(connection closed)'}")
            connect_s.append(time.perf_counter() - t0)
            sock.sendall(DISCONNECT)
        except OSError as exc:
            failures += 1
            first_error = first_error or repr(exc)
        finally:
            if sock is not None:
                sock.close()
    out.put({
        "began": began, "ended": time.perf_counter(), "connect_s": connect_s, "handshake_s": handshake_s,
        "failures": failures, "first_error": first_error, "tls": negotiated, "cpu_s": time.process_time(),
    })  # fmt: skip


def storm_once(broker, args, tls: bool) -> dict:
    port, ca_file = (broker.tls_port, str(broker.tls.ca_file)) if tls else (broker.port, None)
    ready, start, out = mp.Queue(), mp.Event(), mp.Queue()
    procs = [
        mp.Process(target=storm_client, args=(port, ca_file, k, args.connects, ready, start, out))
        for k in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=30)
    with cpu.CpuMonitor(mosquitto=broker.pids) as usage:
        start.set()
        got = [out.get(timeout=600) for _ in procs]
        for g in got:
            usage.add("clients", g["cpu_s"])
    for proc in procs:
        proc.join()
    connect_ms = [s * 1000 for g in got for s in g["connect_s"]]
    handshake_ms = [s * 1000 for g in got for s in g["handshake_s"]]
    seconds = max(g["ended"] for g in got) - min(g["began"] for g in got)
    return {
        "connections": len(connect_ms),
        "attempted": args.clients * args.connects,
        "failures": sum(g["failures"] for g in got),
        "first_error": next((g["first_error"] for g in got if g["first_error"]), None),
        "seconds": round(seconds, 3),
        "rate": round(len(connect_ms) / seconds, 1) if seconds else 0.0,
        "connect_ms": {f"p{p}": round(percentile(connect_ms, p), 3) for p in (50, 90, 99)}
        | {"max": round(max(connect_ms, default=float("nan")), 3)},
        "handshake_ms": {f"p{p}": round(percentile(handshake_ms, p), 3) for p in (50, 99)} if handshake_ms else None,
        "tls": next((g["tls"] for g in got if g["tls"]), None),
        "cpu": usage.usage,
    }


def storm(args, dev) -> dict:
    out = {}
    with servers.Mosquitto(tls=dev) as broker:
        for way in ("plain", "tls"):
            log(f"storm, {way}: {args.clients} clients x {args.connects} connections")
            out[way] = storm_once(broker, args, tls=way == "tls")
            log(f"storm, {way}: {out[way]['rate']:,.0f} connections/s, p99 {out[way]['connect_ms']['p99']:.2f} ms")
    return out


# --- the run --------------------------------------------------------------------------------------


def prerequisites(args) -> str | None:
    """The wrk binary when the http part runs, else None (the part is dropped, with the reason printed)."""
    if "http" not in args.parts:
        return None
    binary = wrk.require(smoke=args.smoke)
    if binary is not None and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        if args.smoke and not required():
            print("skipped the http part: nginx is not installed (the TLS terminator; apt-get install -y nginx)")
            binary = None
        else:
            raise Unavailable("nginx is not installed (the TLS terminator of the http part; apt-get install -y nginx)")
    if binary is None:
        args.parts = [p for p in args.parts if p != "http"]
    return binary


def show_cpu(rows: list[tuple[str, dict]]) -> None:
    print("CPU during each measured phase (% of one core):")
    print(table(["", "CPU"], [[label, cpu.summary(usage)] for label, usage in rows]))


def show_ingest(report, args, r: dict) -> None:
    plain, tls = r["plain"], r["tls"]
    r["tls_cost_pct"] = cost(plain["rate"], tls["rate"])
    print(f"\nBridge ingest: {args.devices:,} devices x {args.rounds} QoS 1 reports, {args.publishers} publishers, "
          f"bridge protocol {args.protocol}, committed to PostgreSQL\n")  # fmt: skip
    rows = []
    for label, p in (("plain (mqtt://)", plain), ("TLS (mqtts://)", tls)):
        p["cpu_us_per_message"] = per = {g: cpu_us(p["cpu"], g, p["messages"]) for g in ("bridge", "mosquitto")}
        rows.append([label, p["messages"], p["seconds"], f"{p['rate']:,}", p["lost"], us(per["bridge"]),
                     us(per["mosquitto"])])  # fmt: skip
    print(table(["listener", "messages", "seconds", "msg/s", "lost", "bridge CPU µs/msg", "broker CPU µs/msg"], rows))
    print(f"TLS cost: {pct(r['tls_cost_pct'])} of the plain rate\n")
    show_cpu([("plain", plain["cpu"]), ("TLS", tls["cpu"])])
    report.rate("bridge ingest, plain", achieved=plain["rate"], unit="msg/s")
    report.rate("bridge ingest, TLS", achieved=tls["rate"], unit="msg/s", note=f"TLS cost {pct(r['tls_cost_pct'])}")
    for way, p in (("plain", plain), ("TLS", tls)):
        if p["lost"] or p["devices_complete"] != args.devices:
            report.problem(f"ingest {way}: {p['lost']} reports lost, {p['devices_complete']} of {args.devices} "
                           "devices hold their last round")  # fmt: skip


def show_http(report, args, r: dict) -> None:
    h = r["results"]
    direct = h["direct"]["rps"]
    r["tls_cost_pct"] = c = {
        "keepalive": cost(h["proxy_keepalive"]["rps"], h["tls_keepalive"]["rps"]),
        "close": cost(h["proxy_close"]["rps"], h["tls_close"]["rps"]),
        "tls_keepalive_vs_direct": cost(direct, h["tls_keepalive"]["rps"]),
    }
    t = r["tls"]
    print(f"\nDevice HTTP: GET /device/v1/shadow, wrk {args.connections} connections, {args.duration:g} s each, "
          f"gunicorn {args.workers} sync workers; TLS {t['version']} {t['cipher']}, ECDSA P-256\n")  # fmt: skip
    rows = []
    for x in h.values():
        x["cpu_us_per_request"] = per = {g: cpu_us(x["cpu"], g, x["requests"]) for g in ("gunicorn", "nginx", "wrk")}
        lat = x["latency_ms"]
        rows.append([x["label"], f"{x['rps']:,.0f}", f"{lat['p50']:.1f}", f"{lat['p99']:.1f}", x["errors"]["total"],
                     f"{x['rps'] / direct:.2f}" if direct else "-", us(per["nginx"]), us(per["wrk"])])  # fmt: skip
    print(table(["path", "req/s", "p50 ms", "p99 ms", "errors", "vs direct", "nginx CPU µs/req", "wrk CPU µs/req"],
                rows))  # fmt: skip
    print(f"TLS cost through nginx: {pct(c['keepalive'])} of req/s with keep-alive, {pct(c['close'])} with a "
          "new connection per request; TLS keep-alive vs gunicorn directly: "
          f"{pct(c['tls_keepalive_vs_direct'])}")  # fmt: skip
    print("(wrk's latency starts when the request is written: a new connection's TCP and TLS handshake "
          "count in req/s, not in p50/p99)\n")  # fmt: skip
    show_cpu([(x["label"], x["cpu"]) for x in h.values()])
    for key, x in h.items():
        report.rate(f"HTTP {x['label']}", achieved=x["rps"], unit="req/s", note=f"p99 {x['latency_ms']['p99']:.1f} ms")
        if x["errors"]["total"]:
            report.problem(f"http {key}: {x['errors']['total']} failed requests: {x['errors']}")


def show_storm(report, args, s: dict) -> None:
    s["tls_cost_pct"] = cost(s["plain"]["rate"], s["tls"]["rate"])
    t = s["tls"]["tls"] or {}
    print(f"\nReconnect storm: {args.clients} client processes x {args.connects} connections each, one after the "
          f"other (TCP, TLS, CONNECT -> CONNACK, DISCONNECT); TLS {t.get('version')} {t.get('cipher')}, "
          "ECDSA P-256, full handshakes\n")  # fmt: skip
    rows = []
    for way, p in (("plain", s["plain"]), ("TLS", s["tls"])):
        hs, ms = p["handshake_ms"], p["connect_ms"]
        p["cpu_us_per_connection"] = per = {g: cpu_us(p["cpu"], g, p["connections"]) for g in ("mosquitto", "clients")}
        rows.append([
            way, f"{p['connections']:,}", p["failures"], p["seconds"], f"{p['rate']:,.0f}", f"{ms['p50']:.2f}",
            f"{ms['p99']:.2f}", f"{hs['p50']:.2f} / {hs['p99']:.2f}" if hs else "-", us(per["mosquitto"]),
            us(per["clients"]),
        ])  # fmt: skip
        report.rate(f"reconnect storm, {way}", achieved=p["rate"], unit="connections/s",
                    note=f"connect p50 {ms['p50']:.2f} / p99 {ms['p99']:.2f} ms")  # fmt: skip
        if p["failures"]:
            report.problem(f"storm {way}: {p['failures']} connections failed (first: {p['first_error']})")
    print(table(["listener", "connected", "failed", "seconds", "connections/s", "connect p50 ms", "p99 ms",
                 "TCP+TLS p50 / p99 ms", "broker CPU µs/conn", "clients CPU µs/conn"], rows))  # fmt: skip
    print(f"TLS cost: {pct(s['tls_cost_pct'])} of the plain connection rate\n")
    show_cpu([("plain", s["plain"]["cpu"]), ("TLS", s["tls"]["cpu"])])


def bench(args, run) -> int:
    from mqtt_bridge.dev_tls import ensure_dev_tls

    binary = prerequisites(args)
    dev, _ = ensure_dev_tls(run.workdir / "tls", ("127.0.0.1", "localhost"))
    db = None
    if "ingest" in args.parts or "http" in args.parts:
        db = run.database()
        app.setup_django(run.database_url)
    results = {}
    if "ingest" in args.parts:
        results["ingest"] = ingest(args, run, db, dev)
    if "http" in args.parts:
        results["http"] = http(args, run, db, dev, binary)
    if "storm" in args.parts:
        results["storm"] = storm(args, dev)

    config = {k: v for k, v in vars(args).items() if k != "output"}
    report = run.report(config={**config, **(db.info if db else {})})
    for part, show in (("ingest", show_ingest), ("http", show_http), ("storm", show_storm)):
        if part in results:
            show(report, args, results[part])
    report.data.update(results)
    return report.finish(args.fail_on_missed_goals)


SMOKE = {
    "devices": 50, "rounds": 2, "publishers": 1, "http_devices": 50, "duration": 1, "warmup": 0,
    "connections": 4, "workers": 2, "clients": 1, "connects": 50,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(
        cli.main(
            "tls",
            __doc__,
            options,
            bench,
            check=check,
            smoke=SMOKE,
        )
    )
