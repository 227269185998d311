"""HTTP benchmark of the device twin API, served the way production serves it.

Steps: recreate a dedicated PostgreSQL database, migrate, seed one tenant and
N devices (desired_version 1), start gunicorn (DEBUG off, persistent database
connections, no access log) on a free local port, then drive it with wrk at a
fixed number of connections, one scenario after the other in the same server
run:

  baseline       GET  /healthz/live              bare Django JSON view, no database
  get_shadow     GET  /device/v1/shadow          device token auth + one SELECT
  post_reported  POST /device/v1/shadow/reported token auth + parse + one UPDATE

The device scenarios spread their requests over every device token. Each
measured run follows a short warm-up run. Results (req/s, p50, p99, errors,
ratio to the baseline, CPU use) are printed as a table with the performance
goals, and written as JSON to bench/results/http_device_api.json.

    .venv/bin/python bench/http_device_api/run.py [--duration 15] [--connections 64]
        [--devices 1000] [--workers N] [--worker-class sync|gthread|asgi] [--threads T] [--repeat N]

Needs wrk (apt-get install -y wrk) and a PostgreSQL server; the database named
in --database-url is dropped and recreated on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LUA_TEMPLATE = HERE / "wrk_scenario.lua"
DEFAULT_OUTPUT = REPO / "bench" / "results" / "http_device_api.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/iotcloud_bench"

# The serving configuration chosen on a 2-core machine (see bench/README.md).
DEFAULT_WORKERS = 5
DEFAULT_WORKER_CLASS = "sync"
DEFAULT_THREADS = 1

REPORTED_BODY = json.dumps({"reported": {"interval": 30}, "version": 1}, separators=(",", ":"))


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    method: str
    path: str
    body: str | None = None
    needs_token: bool = True
    expect: dict = field(default_factory=dict)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "baseline", "baseline /healthz/live", "GET", "/healthz/live", needs_token=False, expect={"status": "ok"}
        ),
        Scenario(
            "get_shadow", "GET shadow", "GET", "/device/v1/shadow", expect={"desired": {"interval": 30}, "version": 1}
        ),
        Scenario(
            "post_reported",
            "POST reported",
            "POST",
            "/device/v1/shadow/reported",
            body=REPORTED_BODY,
            expect={"accepted": True, "version": 1},
        ),
    )
}

# Goals: (scenario, kind, target). Throughput goals are a share of the
# baseline's req/s measured in the same server run; latency goals are p99.
GOALS = [
    ("get_shadow", "ratio", 0.40),
    ("post_reported", "ratio", 0.25),
    ("get_shadow", "p99_ms", 50.0),
    ("post_reported", "p99_ms", 50.0),
]


class BenchError(Exception):
    """A failure with a message for the person running the benchmark."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- arguments ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the device twin HTTP API under gunicorn with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=15, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of warm-up before each measured run (0: none)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measured runs per scenario, interleaved (baseline, GET, POST, baseline, ...); the table shows medians",
    )
    p.add_argument("--connections", type=int, default=64, help="wrk connections (concurrent clients)")
    p.add_argument("--devices", type=int, default=1000, help="devices (tokens) the device scenarios spread over")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn worker processes")
    p.add_argument(
        "--worker-class",
        default=DEFAULT_WORKER_CLASS,
        choices=["sync", "gthread", "asgi"],
        help="gunicorn worker class (asgi: iotcloud.asgi:application on gunicorn's asyncio worker, for comparison)",
    )
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads per worker (gthread)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (wrk shares the machine's CPUs)")
    p.add_argument("--wrk-timeout", default="2s", help="wrk request timeout; a timed-out request is an error")
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of: {', '.join(SCENARIOS)}"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database for the run (dropped and recreated; env BENCH_DATABASE_URL)",
    )
    p.add_argument(
        "--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the server (seconds; persistent connections)"
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    p.add_argument("--label", default="", help="free text stored with the results (e.g. what you changed)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (Lua scripts, server log)")
    p.add_argument("--fail-on-missed-goals", action="store_true", help="exit 1 when a goal is missed")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.worker_class != "gthread" and args.threads != 1:
        p.error("--threads needs --worker-class gthread (gunicorn would switch sync to gthread silently)")
    if min(args.workers, args.threads, args.connections, args.devices, args.wrk_threads, args.repeat) < 1:
        p.error("--workers, --threads, --connections, --devices, --wrk-threads and --repeat must be >= 1")
    if args.worker_class == "asgi" and args.conn_max_age != 0:
        p.error(
            "--worker-class asgi needs --conn-max-age 0: Django's ASGI handler runs each sync view in its own "
            "thread, and with persistent connections every such thread keeps a PostgreSQL connection open "
            "(they grow with concurrency until max_connections is exhausted)"
        )
    if args.wrk_threads > args.connections:
        p.error("--wrk-threads cannot exceed --connections")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    return args


# --- prerequisites ---------------------------------------------------------------


def find_wrk() -> tuple[str, str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError(
            "wrk is not installed (the HTTP load generator this benchmark drives).\n"
            "  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y wrk\n"
            "  macOS:         brew install wrk\n"
            "  From source:   https://github.com/wg/wrk (make; put ./wrk on PATH)"
        )
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return wrk, first[0] if first else "wrk (unknown version)"


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


# DATABASE_URL query options that django-environ turns into Django settings (not libpq parameters).
DJANGO_DB_OPTIONS = {
    "conn_max_age",
    "atomic_requests",
    "autocommit",
    "disable_server_side_cursors",
    "conn_health_checks",
}


def libpq_url(database_url: str) -> str:
    """The URL for a direct psycopg connection: without django-environ's own query options."""
    parts = urllib.parse.urlsplit(database_url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() not in DJANGO_DB_OPTIONS]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class RunLock:
    """A PostgreSQL advisory lock named after the benchmark database, held for the whole run.

    Two runs on the same database would drop each other's data mid-run (every
    request of the other run then gets 401), so the second one stops at once.
    """

    def __init__(self, database_url: str):
        parts = urllib.parse.urlsplit(libpq_url(database_url))
        self.dbname = urllib.parse.unquote(parts.path.lstrip("/"))
        self.admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        self.conn = None

    def acquire(self) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise BenchError(
                f"cannot reach PostgreSQL at {redact(self.admin_url)}: {exc}\n"
                "  Start it (Debian): pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            ) from None
        key = f"bench/http_device_api:{self.dbname}"
        locked = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()[0]
        if not locked:
            self.release()
            raise BenchError(
                f"another run of this benchmark is using database {self.dbname!r}; wait for it to finish, "
                "or give this one its own database: --database-url postgres://.../iotcloud_bench_2"
            )

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()  # ends the session, which releases the lock
            self.conn = None


def recreate_database(database_url: str) -> tuple[str, int]:
    """Drop and create the benchmark database; returns the server version and max_connections."""
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise BenchError(f"--database-url must be a PostgreSQL URL, got {redact(database_url)}")
    dbname = urllib.parse.unquote(parts.path.lstrip("/"))
    if "bench" not in dbname:
        raise BenchError(
            f"refusing to drop database {dbname!r}: the benchmark recreates its database on every run, "
            "so its name must contain 'bench'"
        )
    admin_url = urllib.parse.urlunsplit(urllib.parse.urlsplit(libpq_url(database_url))._replace(path="/postgres"))
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            max_conn = conn.execute("SHOW max_connections").fetchone()[0]
    except psycopg.OperationalError as exc:
        raise BenchError(
            f"cannot reach PostgreSQL at {redact(admin_url)}: {exc}\n"
            "  Start it (Debian): pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from None
    log(f"database {dbname!r} recreated (PostgreSQL {version}, max_connections {max_conn})")
    return version, int(max_conn)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "iotcloud.settings",
            "DATABASE_URL": args.database_url,
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "false",
            "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback, as behind a TLS proxy
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "METRICS_TOKEN": secrets.token_urlsafe(32),  # required when DEBUG is off
            "DB_CONN_MAX_AGE": str(args.conn_max_age),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare_database(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> list[str]:
    args.postgres_version, args.postgres_max_connections = recreate_database(args.database_url)
    needed = args.workers * args.threads
    if args.conn_max_age and needed > args.postgres_max_connections // 2:
        log(
            f"warning: {needed} persistent connections is more than half of PostgreSQL's max_connections "
            f"({args.postgres_max_connections})"
        )
    log("manage.py migrate")
    run_checked([sys.executable, str(REPO / "manage.py"), "migrate", "--noinput", "-v", "0"], env, "migrate")
    tokens_file = workdir / "tokens.json"
    log(f"seeding {args.devices} devices")
    run_checked(
        [sys.executable, str(HERE / "seed.py"), "--devices", str(args.devices), "--out", str(tokens_file)],
        env,
        "seed",
    )
    tokens = json.loads(tokens_file.read_text())
    tokens_file.unlink()
    return tokens


def run_checked(cmd: list[str], env: dict[str, str], what: str) -> None:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"{what} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}")


# --- the server --------------------------------------------------------------------


def app_for(worker_class: str) -> str:
    return "iotcloud.asgi:application" if worker_class == "asgi" else "iotcloud.wsgi:application"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn in its own process group, stopped on exit, Ctrl-C or error."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workdir: Path):
        self.args = args
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gunicorn.log"
        self.dbname = urllib.parse.unquote(urllib.parse.urlsplit(args.database_url).path.lstrip("/"))
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "gunicorn",
            app_for(a.worker_class),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(a.workers),
            "--worker-class",
            a.worker_class,
            "--threads",
            str(a.threads),
            "--chdir",
            str(REPO),
            # No --access-logfile: gunicorn writes no access log unless asked.
            "--error-logfile",
            str(self.log_path),
            "--log-level",
            "warning",
            "--graceful-timeout",
            "10",
        ]

    def start(self) -> None:
        cmd = self.command()
        log(f"starting gunicorn: {' '.join(cmd[3:])}")
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_json("GET", self.base_url + "/healthz/live", timeout=1)
                if status == 200:
                    self.wait_for_workers(deadline)
                    log(f"gunicorn is up on {self.base_url} (pid {self.proc.pid}, workers {self.worker_pids()})")
                    return
            time.sleep(0.2)
        raise BenchError(f"gunicorn did not answer /healthz/live within 60 s:\n{self.log_tail()}")

    def wait_for_workers(self, deadline: float) -> None:
        while len(self.worker_pids()) < self.args.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        return children_of(self.proc.pid) if self.proc else []

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.worker_pids()] if self.proc else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log("stopping gunicorn")
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log("gunicorn did not stop in 20 s; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def http_json(method: str, url: str, body: str | None = None, headers: dict | None = None, timeout: float = 5):
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload or b"null")
        except ValueError:
            return exc.code, payload[:200].decode(errors="replace")


def preflight(server: Server, scenarios: list[Scenario], tokens: list[str]) -> None:
    """One request per scenario, checked for status and body, before any load."""
    for sc in scenarios:
        headers = {"X-Provision-Token": tokens[-1]} if sc.needs_token else {}
        status, body = http_json(sc.method, server.base_url + sc.path, sc.body, headers)
        if status != 200 or body != sc.expect:
            raise BenchError(
                f"preflight {sc.method} {sc.path}: expected 200 {sc.expect}, got {status} {body}\n"
                f"server log:\n{server.log_tail()}"
            )
    status, _ = http_json("GET", server.base_url + "/device/v1/shadow", headers={"X-Provision-Token": "iotd_wrong"})
    if status != 401:
        raise BenchError(f"preflight: a wrong provision token should get 401, got {status}")


# --- CPU accounting (Linux /proc) ------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds) of a process, or None when it is gone.

    A process that starts and ends between two snapshots (another database's
    short session, say) is not seen: its CPU shows up in "other".
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []


def children_of(ppid: int) -> list[int]:
    return sorted(pid for pid in _all_pids() if (st := _stat(pid)) and st[1] == ppid)


def _machine_ticks() -> dict[str, int]:
    """Machine-wide CPU time from /proc/stat: busy, idle, iowait and steal, in clock ticks."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {"busy": user + nice + system + irq + softirq, "idle": idle, "iowait": iowait, "steal": steal}


# A backend's title: "postgres: [<cluster>: ]<user> <database> <host>(<port>)|[local] <state>".
_BACKEND_TITLE = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\]) ")


def _postgres_database(pid: int) -> str | None:
    """The database a PostgreSQL backend serves (from its process title); None for background processes."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    m = _BACKEND_TITLE.match(title)
    return m.group(1) if m else None


class CpuMonitor:
    """CPU used during a run by gunicorn, by PostgreSQL (this database's backends and the shared
    background processes; backends of other databases count as "other"), by wrk and by the rest.

    Processes are sampled every INTERVAL seconds, so a backend that ends during
    the run (Django replaces a connection older than CONN_MAX_AGE) still counts
    up to its last sample. Figures are % of one core: 200 = two cores busy.
    """

    INTERVAL = 0.5

    def __init__(self, server: Server):
        self.server = server
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.first: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict[int, float]] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        server_pids = set(self.server.pids())
        sample: dict[str, dict[int, float]] = {"server": {}, "postgres": {}}
        for pid in _all_pids():
            st = _stat(pid)
            if st is None:
                continue
            if pid in server_pids:
                sample["server"][pid] = st[2]
            elif st[0] == "postgres" and _postgres_database(pid) in (None, self.server.dbname):
                sample["postgres"][pid] = st[2]
        return sample

    def _update(self, sample: dict[str, dict[int, float]]) -> None:
        for group, procs in sample.items():
            for pid, seconds in procs.items():
                self.last[group][pid] = seconds
                self.first[group].setdefault(pid, 0.0)  # started during the run: all of its time counts

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._update(self._sample())

    def start(self) -> None:
        self.machine0 = _machine_ticks()
        self.children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.first = self._sample()
        self.last = {group: dict(procs) for group, procs in self.first.items()}
        self.wall0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="cpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        wall = time.monotonic() - self.wall0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._update(self._sample())
        machine1, children1 = _machine_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)

        def group(name: str) -> float:
            return sum(t - self.first[name].get(pid, 0.0) for pid, t in self.last[name].items())

        c0, c1 = self.children0, children1
        wrk = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)  # wrk: the only child reaped meanwhile
        usage = {
            "gunicorn_pct": round(100 * group("server") / wall, 1),
            "postgres_pct": round(100 * group("postgres") / wall, 1),
            "wrk_pct": round(100 * wrk / wall, 1),
            "capacity_pct": 100 * (os.cpu_count() or 1),
        }
        if self.machine0 and machine1:
            machine = {k: 100 * (machine1[k] - self.machine0[k]) / CLK_TCK / wall for k in machine1}
            usage["machine_busy_pct"] = round(machine["busy"], 1)
            usage["machine_idle_pct"] = round(machine["idle"], 1)
            usage["iowait_pct"] = round(machine["iowait"], 1)
            usage["steal_pct"] = round(machine["steal"], 1)
            # Anything else on the machine during the run: other jobs, kernel threads, short-lived processes.
            usage["other_pct"] = round(
                max(0.0, machine["busy"] - usage["gunicorn_pct"] - usage["postgres_pct"] - usage["wrk_pct"]), 1
            )
        return usage


# --- wrk ---------------------------------------------------------------------------


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def write_lua(sc: Scenario, tokens: list[str], workdir: Path) -> Path:
    tokens_for = tokens if sc.needs_token else []
    lines = [
        f"-- generated by bench/http_device_api/run.py for scenario {sc.name}",
        f"bench_method = {lua_string(sc.method)}",
        f"bench_path = {lua_string(sc.path)}",
        f"bench_body = {lua_string(sc.body) if sc.body is not None else 'nil'}",
        f"bench_content_type = {lua_string('application/json')}",
        "bench_tokens = {",
        *(f"  {lua_string(t)}," for t in tokens_for),
        "}",
        "",
    ]
    path = workdir / f"{sc.name}.lua"
    path.write_text("\n".join(lines) + LUA_TEMPLATE.read_text())
    return path


def run_wrk(wrk: str, args: argparse.Namespace, url: str, script: Path, duration: float) -> str:
    cmd = [
        wrk,
        "--threads",
        str(args.wrk_threads),
        "--connections",
        str(args.connections),
        "--duration",
        f"{max(1, round(duration))}s",
        "--timeout",
        args.wrk_timeout,
        "--latency",
        "--script",
        str(script),
        url,
        "--",
        str(args.wrk_threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0 or "BENCH_RESULT" not in out.stdout:
        raise BenchError(f"wrk failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stdout}{out.stderr}")
    return out.stdout


def parse_wrk(output: str) -> dict:
    """Numbers from the Lua done() line, cross-checked with wrk's own text report."""
    line = next(line for line in output.splitlines() if line.startswith("BENCH_RESULT "))
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    text_rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    text_non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    e = raw["errors"]
    socket_total = e["connect"] + e["read"] + e["write"] + e["timeout"]
    if socket_errors:  # the text report and done() come from the same counters
        socket_total = max(socket_total, sum(int(n) for n in socket_errors.groups()))
    non2xx = max(raw["non2xx"], e["status_ge_400"], int(text_non2xx.group(1)) if text_non2xx else 0)
    lat = raw["latency_us"]
    duration_s = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "duration_s": round(duration_s, 3),
        "rps": round(raw["requests"] / duration_s, 1) if duration_s else 0.0,
        "rps_wrk_text": float(text_rps.group(1)) if text_rps else None,
        "latency_ms": {
            k: round(lat[k] / 1000, 3) for k in ("min", "mean", "stdev", "max", "p50", "p75", "p90", "p99", "p99_9")
        },
        "errors": {
            "non2xx": non2xx,
            "statuses": raw["statuses"],
            "connect": e["connect"],
            "read": e["read"],
            "write": e["write"],
            "timeout": e["timeout"],
            "total": non2xx + socket_total,
        },
    }


def db_counters(database_url: str) -> dict:
    """Committed transactions in the benchmark database, and the database clock.

    PostgreSQL publishes a backend's statistics when it goes idle, at most once
    a second (idle backends can lag longer), so callers wait STATS_SETTLE_S after
    the load stops and treat commits per request as approximate.
    """
    import psycopg

    try:
        with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
            commits = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            clock = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    except psycopg.Error as exc:
        raise BenchError(f"cannot read PostgreSQL statistics: {exc}") from None
    return {"commits": commits[0] if commits else 0, "clock": clock}


def devices_written(database_url: str, start, end) -> int:
    """Devices whose last_seen was written between two database clock readings."""
    import psycopg

    try:
        with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
            return conn.execute(
                "SELECT count(*) FROM device_state WHERE last_seen >= %s AND last_seen <= %s", [start, end]
            ).fetchone()[0]
    except psycopg.Error as exc:
        raise BenchError(f"cannot count written devices: {exc}") from None


STATS_SETTLE_S = 1.5
# CPU used by other processes (or stolen by the hypervisor) above which a run is marked as disturbed.
NOISY_OTHER_PCT = 15.0


def run_scenario(wrk: str, args, server: Server, sc: Scenario, tokens: list[str], workdir: Path) -> dict:
    script = write_lua(sc, tokens, workdir)
    url = server.base_url + sc.path
    warmup = None
    if args.warmup > 0:
        log(f"{sc.name}: warm-up {args.warmup:g} s")
        warmup = parse_wrk(run_wrk(wrk, args, url, script, args.warmup))
    time.sleep(STATS_SETTLE_S)
    db_before = db_counters(args.database_url)
    log(f"{sc.name}: measuring {args.duration:g} s at {args.connections} connections")
    monitor = CpuMonitor(server)
    monitor.start()
    try:
        output = run_wrk(wrk, args, url, script, args.duration)
    finally:
        cpu = monitor.stop()
    time.sleep(STATS_SETTLE_S)
    db_after = db_counters(args.database_url)
    result = {
        "scenario": sc.name,
        "label": sc.label,
        "method": sc.method,
        "path": sc.path,
        **parse_wrk(output),
        "cpu": cpu,
    }
    n = max(result["requests"], 1)
    # Includes the few statements of db_counters itself; per request they round to nothing.
    result["db"] = {
        "commits_per_request": round((db_after["commits"] - db_before["commits"]) / n, 2),
        # GET writes last_seen at most once per DEVICE_LAST_SEEN_RESOLUTION; POST always does.
        "devices_written": devices_written(args.database_url, db_before["clock"], db_after["clock"]),
    }
    result["flagged"] = result["errors"]["total"] > 0
    cpu = result["cpu"]
    result["noisy"] = cpu.get("other_pct", 0) > NOISY_OTHER_PCT or cpu.get("steal_pct", 0) > NOISY_OTHER_PCT
    if warmup is not None:
        result["warmup_errors"] = warmup["errors"]["total"]
    result["wrk_output"] = output
    log(
        f"{sc.name}: {result['rps']:.0f} req/s, p50 {result['latency_ms']['p50']:.1f} ms, "
        f"p99 {result['latency_ms']['p99']:.1f} ms, errors {result['errors']['total']}"
    )
    return result


def combine(runs: list[dict]) -> dict:
    """One row per scenario: the run itself, or the medians of repeated runs (every run kept under "runs")."""
    if len(runs) == 1:
        return {**runs[0], "repeats": 1}
    first = runs[0]
    errors = {k: sum(r["errors"][k] for r in runs) for k in ("non2xx", "connect", "read", "write", "timeout", "total")}
    statuses: dict[str, int] = {}
    for r in runs:
        for status, count in r["errors"]["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    errors["statuses"] = statuses
    return {
        "scenario": first["scenario"],
        "label": first["label"],
        "method": first["method"],
        "path": first["path"],
        "repeats": len(runs),
        "requests": sum(r["requests"] for r in runs),
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "rps_min": min(r["rps"] for r in runs),
        "rps_max": max(r["rps"] for r in runs),
        "latency_ms": {k: round(statistics.median(r["latency_ms"][k] for r in runs), 3) for k in first["latency_ms"]},
        "errors": errors,
        "cpu": {k: round(statistics.mean(r["cpu"].get(k, 0) for r in runs), 1) for k in first["cpu"]},
        "db": {k: round(statistics.mean(r["db"][k] for r in runs), 2) for k in first["db"]},
        "flagged": any(r["flagged"] for r in runs),
        "noisy": any(r["noisy"] for r in runs),
        "runs": runs,
    }


# --- report ------------------------------------------------------------------------


def evaluate(results: list[dict]) -> list[dict]:
    by_name = {r["scenario"]: r for r in results}
    base = by_name.get("baseline")
    for r in results:
        r["ratio_to_baseline"] = round(r["rps"] / base["rps"], 3) if base and base["rps"] else None
    goals = []
    for name, kind, target in GOALS:
        r = by_name.get(name)
        if r is None:
            continue
        label = SCENARIOS[name].label
        if kind == "ratio":
            if r["ratio_to_baseline"] is None:
                continue
            value, met = r["ratio_to_baseline"], r["ratio_to_baseline"] >= target
            text = f"{label} >= {target:.0%} of baseline req/s"
            shown = f"{value:.0%}"
        else:
            value, met = r["latency_ms"]["p99"], r["latency_ms"]["p99"] <= target
            text = f"{label} p99 <= {target:g} ms"
            shown = f"{value:.1f} ms"
        tainted = r["flagged"] or (kind == "ratio" and base is not None and base["flagged"])
        goals.append(
            {
                "goal": text,
                "scenario": name,
                "kind": kind,
                "target": target,
                "value": value,
                "shown": shown,
                "met": bool(met and not tainted),
                "errors_in_run": tainted,
            }
        )
    return goals


def format_table(results: list[dict], goals: list[dict]) -> str:
    repeated = any(r.get("repeats", 1) > 1 for r in results)
    header = f"{'scenario':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>9}{'vs baseline':>13}"
    if repeated:
        header += f"{'req/s min-max':>16}"
    rows = [header, "-" * len(header)]
    for r in results:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] is not None else "n/a"
        errors = f"{r['errors']['total']}{' !' if r['flagged'] else ''}"
        row = (
            f"{r['label']:<24}{r['rps']:>10.0f}{r['latency_ms']['p50']:>9.1f}"
            f"{r['latency_ms']['p99']:>9.1f}{errors:>9}{ratio:>13}"
        )
        if repeated:
            row += f"{r.get('rps_min', r['rps']):>10.0f}-{r.get('rps_max', r['rps']):<5.0f}"
        rows.append(row)
    if repeated:
        rows.append(f"(medians of {max(r.get('repeats', 1) for r in results)} interleaved runs per scenario)")
    for r in results:
        if r["flagged"]:
            e = r["errors"]
            rows.append(
                f"  ! {r['label']}: {e['non2xx']} non-2xx {e['statuses'] or ''}, socket errors: "
                f"connect {e['connect']}, read {e['read']}, write {e['write']}, timeout {e['timeout']}"
                " -- figures of this run are not trustworthy"
            )
    for r in results:
        if r.get("noisy"):
            c = r["cpu"]
            rows.append(
                f"  ~ {r['label']}: other processes used {c.get('other_pct', 0):.0f}% CPU "
                f"(steal {c.get('steal_pct', 0):.0f}%) during the run -- the machine was not quiet; rerun"
            )
    rows.append("")
    rows.append(
        "CPU during the measured runs (% of one core; "
        f"{results[0]['cpu']['capacity_pct'] if results else 0}% = all cores):"
    )
    for r in results:
        c = r["cpu"]
        d = r.get("db", {})
        rows.append(
            f"  {r['label']:<22} gunicorn {c['gunicorn_pct']:>4.0f}%  postgres {c['postgres_pct']:>4.0f}%"
            f"  wrk {c['wrk_pct']:>3.0f}%  other {c.get('other_pct', 0):>3.0f}%  idle "
            f"{c.get('machine_idle_pct', 0) + c.get('iowait_pct', 0):>3.0f}% | "
            f"DB commits/request ~{d.get('commits_per_request', 0):.1f}, "
            f"devices written {d.get('devices_written', 0):.0f}"
        )
    if goals:
        rows.append("")
        rows.append("Goals:")
        for g in goals:
            status = "met" if g["met"] else ("MISSED (errors in run)" if g["errors_in_run"] else "MISSED")
            rows.append(f"  {g['goal']:<42}{g['shown']:>10}   {status}")
    return "\n".join(rows)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("django", "djangorestframework", "gunicorn", "psycopg"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


# --- main --------------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = dt.datetime.now(dt.UTC)
    try:
        wrk, wrk_version = find_wrk()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    server = None
    lock = RunLock(args.database_url)
    try:
        lock.acquire()
        env = server_env(args)
        tokens = prepare_database(args, env, workdir)
        server = Server(args, env, workdir)
        server.start()
        scenarios = [SCENARIOS[name] for name in args.scenarios]
        preflight(server, scenarios, tokens)
        runs: dict[str, list[dict]] = {sc.name: [] for sc in scenarios}
        for rep in range(args.repeat):
            if args.repeat > 1:
                log(f"round {rep + 1} of {args.repeat}")
            for sc in scenarios:
                runs[sc.name].append(run_scenario(wrk, args, server, sc, tokens, workdir))
        results = [combine(runs[sc.name]) for sc in scenarios]
        server_log = server.log_tail()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unexpected: say what, after the server is stopped (finally)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        if server is not None:
            print(f"server log:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        lock.release()
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    goals = evaluate(results)
    config = {
        "server": "gunicorn",
        "app": app_for(args.worker_class),
        "workers": args.workers,
        "worker_class": args.worker_class,
        "threads": args.threads,
        "max_db_connections": args.workers * args.threads,
        "db_conn_max_age": args.conn_max_age,
        "debug": False,
        "access_log": False,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "devices": args.devices,
        "wrk_threads": args.wrk_threads,
        "wrk_timeout": args.wrk_timeout,
        "wrk": wrk_version,
        "database": redact(args.database_url),
        "postgres": args.postgres_version,
        "postgres_max_connections": args.postgres_max_connections,
        **versions(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": started.isoformat(timespec="seconds"),
        "label": args.label,
    }
    table = format_table(results, goals)
    desc = (
        f"gunicorn {args.worker_class}, {args.workers} workers x {args.threads} threads "
        f"(<= {args.workers * args.threads} PostgreSQL connections), wrk {args.wrk_threads} thread(s), "
        f"{args.connections} connections, {args.duration:g} s per run, {args.devices} devices, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"\nHTTP device API benchmark -- {desc}\n")
    print(table)
    write_json(
        args.output,
        {
            "benchmark": "http_device_api",
            "config": config,
            "results": results,
            "goals": goals,
            "server_log_tail": server_log,
        },
    )
    try:
        shown = args.output.resolve().relative_to(REPO)
    except ValueError:
        shown = args.output
    print(f"\nresults: {shown}")
    if any(r["flagged"] for r in results):
        print("error: some runs had failed requests (see '!' rows)", file=sys.stderr)
        return 1
    if args.fail_on_missed_goals and not all(g["met"] for g in goals):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
