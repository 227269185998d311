"""The application's processes and a broker, started and stopped by a benchmark.

    with Mosquitto() as broker, Bridge(env, broker.url) as bridge: ...   # stats = bridge.stop()
    with Gunicorn(env, workdir, workers=5) as web: web.base_url ...
    with Mosquitto(tls=dev_tls) as broker: broker.tls_port, broker.tls_url   # a TLS listener as well
    with TlsProxy(web.port, dev_tls, workdir) as proxy: proxy.url, proxy.tls_url   # nginx, plain and TLS

Each runs in its own process group with its output in a log file (shown when it fails to
start), is stopped with SIGTERM on exit, Ctrl-C or error, and killed if it does not stop.
Processes are the application's entry points: `gunicorn iotcloud.wsgi:application`,
`manage.py mqtt_bridge`. Their logs are read record by record in either LOG_FORMAT (a JSON
object per line: its "message"; plain text: the line).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.common import REPO, BenchError, Unavailable, app, cpu, log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def http_json(method: str, url: str, body: str | None = None, headers: dict | None = None, timeout: float = 5):
    """(status, decoded JSON body or text) of one request."""
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=headers or {})
    if body:
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


def log_messages(text: str) -> list[str]:
    """The messages of a log, one per record, whatever LOG_FORMAT wrote it (json or plain)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                out.append(json.loads(line)["message"])
                continue
        out.append(line)
    return out


class Child:
    """A child process in its own session, output to a log file."""

    name = "process"

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")[1])

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or f"(no {self.name} output)"

    def starting(self, wait) -> None:
        """Run `wait` (until the process is ready); stop the process if it fails or is interrupted."""
        try:
            wait()
        except BaseException:
            self.__exit__()
            raise

    def check_alive(self, what: str) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            raise BenchError(f"{self.name} exited ({code}) {what}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {timeout:g} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


# A private broker sized for a bridge that must not lose reports (the default
# max_queued_messages, 1000, would drop QoS 1 messages under a burst); anonymous.
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
"""
PROJECT_CONF = REPO / "mqtt_bridge" / "mosquitto.conf"
# What a private broker replaces in the project's file: where it listens, persists and logs.
_PRIVATE_KEYS = {"listener", "port", "persistence", "persistence_location", "log_dest", "log_type"}


def project_conf(port: int) -> str:
    """mqtt_bridge/mosquitto.conf (the broker iotcloud documents) as a private broker: every setting as
    in the file, except its listener (127.0.0.1:`port`), no persistence and errors on stderr."""
    kept = [
        line
        for line in PROJECT_CONF.read_text().splitlines()
        if not line.strip() or line.lstrip().startswith("#") or line.split()[0] not in _PRIVATE_KEYS
    ]
    private = [f"listener {port} 127.0.0.1", "persistence false", "log_dest stderr", "log_type error"]
    header = f"# {PROJECT_CONF.relative_to(REPO)}, made private by bench/common/servers.py"
    return "\n".join([header, *private, *kept]) + "\n"


def tls_listener(port: int, tls) -> str:
    """A second listener, TLS with the broker certificate of `tls` (mqtt_bridge.dev_tls.DevTls: ca_file,
    cert_file, key_file), appended after the broker's settings (listener options follow their listener).
    As root, Mosquitto drops to the mosquitto user before it reads certificates: `user root` keeps it
    able to read the run's key (readable by its owner only)."""
    lines = [
        *(["user root"] if os.geteuid() == 0 else []),
        f"listener {port} 127.0.0.1",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
    ]
    return "\n".join(["# TLS listener added by bench/common/servers.py", *lines]) + "\n"


class Mosquitto(Child):
    """A private Mosquitto on a free port: MOSQUITTO_CONF, or `config(port)` (e.g. project_conf).

    With `tls` (mqtt_bridge.dev_tls.DevTls) the same broker also listens with TLS on `tls_port`
    (`tls_url`: mqtts://127.0.0.1:<tls_port>?ca_file=..., what the bridge's MQTT_URL takes)."""

    name = "mosquitto"

    def __init__(self, config: Callable[[int], str] | None = None, tls=None):
        super().__init__()
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if binary is None:
            raise Unavailable("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
        self.port = free_port()
        self.conf = self.log_path.with_suffix(".conf")
        text = config(self.port) if config else MOSQUITTO_CONF.format(port=self.port)
        self.tls, self.tls_port, self.tls_url = tls, None, None
        if tls is not None:
            self.tls_port = free_port()
            self.tls_url = f"mqtts://127.0.0.1:{self.tls_port}?ca_file={tls.ca_file}"
            text = text.rstrip("\n") + "\n" + tls_listener(self.tls_port, tls)
        self.conf.write_text(text)
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.spawn([binary, "-c", str(self.conf)])
        self.starting(self._wait)

    def _wait(self) -> None:
        for port in (self.port, self.tls_port):
            if port is not None and not wait_port(port):
                self.check_alive("while starting")
                raise BenchError(f"mosquitto does not listen on {port}:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        with contextlib.suppress(OSError):
            self.conf.unlink()


def bridge_processes(requested: int) -> int:
    """What `mqtt_bridge --processes` makes of a number: 0 is one per core (there is always MQTT_URL here)."""
    return requested or max(1, os.cpu_count() or 1)


class Bridge(Child):
    """`manage.py mqtt_bridge` on `mqtt_url`; started when it logs that it is connected."""

    name = "bridge"

    def __init__(self, environ: dict[str, str], mqtt_url: str, client_id: str = "bench-bridge", timeout: float = 30,
                 processes: int = 1):  # fmt: skip
        super().__init__()
        self.client_id, self.processes = client_id, bridge_processes(processes)
        env = {**environ, "MQTT_URL": mqtt_url, "MQTT_CLIENT_ID": client_id, "LOG_LEVEL": "INFO"}
        self.stats: dict | None = None
        self.spawn([sys.executable, app.MANAGE, "mqtt_bridge", "--client-id", client_id, "--processes",
                    str(processes)], env)  # fmt: skip
        self.starting(lambda: self._wait(timeout))

    def pids(self) -> list[int]:
        """The bridge and, with --processes N > 1, its N ingest workers."""
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.proc.pid, *map(int, children)]

    def _ready(self) -> bool:
        messages = log_messages(self.log_text())
        connected = any(m.startswith("connected to") or " connected to " in m for m in messages)
        workers = sum("ingest worker started client_id" in m for m in messages)
        return connected and (self.processes == 1 or workers >= self.processes)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready():
            self.check_alive("before connecting")
            if time.monotonic() > deadline:
                raise BenchError(f"the bridge did not connect within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> dict:
        """Stop the bridge; its final counters (received, accepted, rejected, published, ...)."""
        if self.stats is None:
            super().stop(timeout)
            self.stats = self.final_stats()
        return self.stats

    def final_stats(self) -> dict:
        """The final counters the bridge logs when it stops (its workers' included)."""
        found = [ast.literal_eval(m.group(1)) for message in log_messages(self.log_text())
                 if (m := re.search(r"bridge stopped stats=(\{[^{}]*\})", message))]  # fmt: skip
        if not found:
            raise BenchError(f"the bridge logged no final stats:\n{self.log_tail()}")
        return found[-1]


class Gunicorn(Child):
    """gunicorn serving the application on a free port of 127.0.0.1, no access log."""

    name = "gunicorn"

    def __init__(
        self,
        environ: dict[str, str],
        *,
        workers: int = 5,
        worker_class: str = "sync",
        threads: int = 1,
        timeout: float = 60,
    ):
        super().__init__()
        self.workers, self.worker_class, self.threads = workers, worker_class, threads
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # asgi: gunicorn's asyncio worker serving the ASGI app (for comparison; HTTP is served by WSGI).
        self.app = "iotcloud.asgi:application" if worker_class == "asgi" else "iotcloud.wsgi:application"
        self.command = [
            sys.executable, "-m", "gunicorn", self.app, "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers), "--worker-class", worker_class, "--threads", str(threads),
            "--chdir", str(REPO), "--log-level", "warning", "--graceful-timeout", "10",
        ]  # fmt: skip
        log(f"starting gunicorn {self.app}: {workers} {worker_class} workers x {threads} threads")
        self.spawn(self.command, environ)
        self.starting(lambda: self._wait(timeout))

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive("while starting")
            with contextlib.suppress(OSError):
                if http_json("GET", self.base_url + "/healthz/live", timeout=1)[0] == 200:
                    while len(self.pids()) < self.workers + 1 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    return
            time.sleep(0.2)
        raise BenchError(f"gunicorn did not answer /healthz/live within {timeout:g} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.proc.pid, *cpu.children_of(self.proc.pid)] if self.proc else []


# A TLS terminator in front of gunicorn, shaped like the compose proxy (iotcloud/deploy/nginx.conf.template:
# the official image's worker_processes auto, its keepalive settings, Host and X-Forwarded-* passed on)
# with only what a benchmark needs. TLS 1.2 and 1.3 (the image's default since nginx 1.23.4; older
# nginx offer no 1.3 unless told). Sessions are neither cached nor ticketed, so every new TLS
# connection is a full handshake (the cost of a fleet reconnecting, not of a resumed session).
NGINX_CONF = """# made by bench/common/servers.py (TlsProxy)
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log stderr warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
{temp_paths}
    upstream bench_app {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        listen 127.0.0.1:{tls_port} ssl default_server;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        keepalive_timeout 15s;
        keepalive_requests 1000;
        location / {{
            proxy_pass http://bench_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


class TlsProxy(Child):
    """nginx in front of 127.0.0.1:`upstream_port`: plain HTTP on `port` (`url`), TLS on `tls_port`
    (`tls_url`) with the broker certificate of `tls` (mqtt_bridge.dev_tls.DevTls); files under `workdir`."""

    name = "nginx"

    def __init__(self, upstream_port: int, tls, workdir: Path, workers: str = "auto", timeout: float = 10):
        super().__init__()
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if binary is None:
            raise Unavailable("nginx is not installed (Debian: apt-get install -y nginx)")
        self.port, self.tls_port = free_port(), free_port()
        self.url, self.tls_url = f"http://127.0.0.1:{self.port}", f"https://127.0.0.1:{self.tls_port}"
        self.dir = Path(workdir) / f"nginx-{self.port}"
        self.dir.mkdir(parents=True)
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        conf = NGINX_CONF.format(
            workers=workers, dir=self.dir, upstream_port=upstream_port, port=self.port, tls_port=self.tls_port,
            cert_file=tls.cert_file, key_file=tls.key_file,
            # As root, workers would switch to the compiled-in user, who cannot write here: stay root.
            user="user root;" if os.geteuid() == 0 else "",
            temp_paths="\n".join(f"    {kind}_temp_path {self.dir / kind};" for kind in kinds),
        )  # fmt: skip
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        self.version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr.strip()
        self.spawn([binary, "-p", str(self.dir), "-e", "stderr", "-c", str(self.conf)])
        self.starting(lambda: self._wait(timeout))

    def _wait(self, timeout: float) -> None:
        for port in (self.port, self.tls_port):
            if not wait_port(port, timeout):
                self.check_alive("while starting")
                raise BenchError(f"nginx does not listen on {port}:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.proc.pid, *cpu.children_of(self.proc.pid)] if self.proc else []
