"""The reverse proxy of the compose stack (iotcloud/deploy/nginx.conf.template), run with the real nginx binary.

The committed template is rendered as the official nginx image renders it (envsubst of the IOTCLOUD_*
variables only) with test addresses, inside a minimal nginx.conf shaped like the image's (the server
file included inside http { }) that keeps pid, logs and temp files in a tmp dir; nginx runs in the
foreground as the current user. Upstreams are small echo servers (routing, headers, limits) or a real
gunicorn running iotcloud.wsgi with sync workers and compose's flags (slow clients).

Skipped where /usr/sbin/nginx is missing, unless REQUIRE_NGINX=1 (.ci/run installs nginx and sets it,
so CI never skips these).
"""

from __future__ import annotations

import contextlib
import getpass
import http.client
import json
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "iotcloud" / "deploy" / "nginx.conf.template"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
TEMPLATE_VARIABLE = re.compile(r"\$\{(IOTCLOUD_[A-Z0-9_]+)\}")
HOST = "iot.example.com:8000"

if not Path(NGINX).exists():
    if os.environ.get("REQUIRE_NGINX") == "1":
        raise RuntimeError(f"REQUIRE_NGINX=1 but {NGINX} is missing (apt-get install nginx)")
    pytest.skip(f"{NGINX} not installed (apt-get install nginx)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def render(variables: dict[str, str], template: str | None = None) -> str:
    """The template with its ${IOTCLOUD_*} variables replaced, as the image's envsubst step does."""
    template = TEMPLATE.read_text() if template is None else template
    return TEMPLATE_VARIABLE.sub(lambda m: variables[m[1]], template)


# --- upstreams --------------------------------------------------------------------------------------


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with what it received (JSON); ?status=N picks the status; a websocket upgrade becomes a byte echo."""

    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "upstream": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body_length": len(body),
        }
        self.server.seen.append(seen)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.tunnel(seen)
        payload = json.dumps(seen).encode()
        self.send_response(int(parse_qs(urlsplit(self.path).query).get("status", ["200"])[0]))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def tunnel(self, seen):
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("X-Echo", json.dumps(seen))
        self.end_headers()
        self.wfile.flush()
        while data := self.rfile.read1(4096):
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


class Echo(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name, self.seen = name, []
        self.address = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class Nginx:
    """The real nginx with the rendered template, in the foreground, everything it writes under `directory`."""

    def __init__(self, directory: Path, web: str, admin: str, trust: str = "false", edit=None):
        self.port = free_port()
        self.dir = directory / f"nginx-{self.port}"
        self.dir.mkdir(parents=True)
        variables = {
            "IOTCLOUD_PROXY_PORT": f"127.0.0.1:{self.port}",
            "IOTCLOUD_WEB_UPSTREAM": web,
            "IOTCLOUD_ADMIN_UPSTREAM": admin,
            "IOTCLOUD_TRUST_FORWARDED_HEADERS": trust,
        }
        server = render(variables)
        (self.dir / "default.conf").write_text(edit(server) if edit else server)
        (self.dir / "nginx.conf").write_text(self.main_conf())
        command = [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.dir / "nginx.conf")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._up, message="nginx to listen")

    def main_conf(self) -> str:
        """The image's nginx.conf in miniature: the server file inside http { }; every path under self.dir."""
        d = self.dir
        # As root, workers would switch to the compiled-in user, who cannot write here: stay the current user.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "".join(f"    {kind}_temp_path {d / kind};\n" for kind in kinds)
        return (
            f"daemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} info;\n{user}\n"
            "events { worker_connections 512; }\n"
            f"http {{\n    access_log {d / 'access.log'};\n{temp}    include {d / 'default.conf'};\n}}\n"
        )

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited {self.process.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def call(port, method="GET", path="/", body=None, timeout=5.0, **headers) -> tuple[int, dict, bytes]:
    headers = {"Host": HOST, **{name.replace("_", "-"): value for name, value in headers.items()}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def seen_by(port, path, **headers) -> dict:
    status, _, body = call(port, path=path, **headers)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def upstreams():
    web, admin = Echo("web"), Echo("admin")
    yield web, admin
    web.close()
    admin.close()


@pytest.fixture
def proxy(tmp_path, upstreams):
    web, admin = upstreams
    nginx = Nginx(tmp_path, web.address, admin.address)
    yield nginx
    nginx.stop()


SPOOFED = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "Forwarded": "for=203.0.113.9;proto=https",
    "X-Real-IP": "203.0.113.9",
    "X-Client-Certificate": "-----BEGIN%20CERTIFICATE-----%0Aforged",  # only a TLS proxy that verified one
}


# --- the template ------------------------------------------------------------------------------------


def compose_variables() -> dict[str, str]:
    environment = COMPOSE["proxy"]["environment"]
    return {name: str(value) for name, value in environment.items() if name.startswith("IOTCLOUD_")}


def test_rendering_matches_envsubst_and_compose_values_are_valid_nginx(tmp_path, upstreams):
    """compose's own values (service names mapped to loopback, the trust flag's default) pass `nginx -t`."""
    variables = compose_variables()
    variables["IOTCLOUD_TRUST_FORWARDED_HEADERS"] = "false"  # ${PROXY_TRUST_FORWARDED_HEADERS:-false}
    if shutil.which("envsubst"):  # what the image runs, with its NGINX_ENVSUBST_FILTER selection
        names = " ".join(f"${{{name}}}" for name in variables)
        env = {**variables, "host": "must-not-replace-nginx-variables", "PATH": os.environ["PATH"]}
        real = subprocess.run(["envsubst", names], input=TEMPLATE.read_text(), env=env, capture_output=True, text=True)
        assert real.returncode == 0 and real.stdout == render(variables)
    web, admin = upstreams
    for name, service in (("IOTCLOUD_WEB_UPSTREAM", "web:"), ("IOTCLOUD_ADMIN_UPSTREAM", "admin:")):
        assert variables[name].startswith(service)
        variables[name] = variables[name].replace(service, "127.0.0.1:")  # nginx -t resolves upstream hosts
    nginx = Nginx(tmp_path, web.address, admin.address)  # its main nginx.conf, reused for the check
    nginx.stop()
    (nginx.dir / "default.conf").write_text(render(variables))
    check = subprocess.run(
        [NGINX, "-t", "-p", str(nginx.dir), "-e", str(nginx.dir / "error.log"), "-c", str(nginx.dir / "nginx.conf")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "listen 8080 default_server;" in render(variables)


# --- routing and headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/healthz", "web"), ("/readyz", "web"), ("/metrics", "web"), ("/customer/devices?page_size=5", "web"),
        ("/device/v1/shadow", "web"), ("/mqtt/auth", "web"), ("/api/docs", "web"), ("/administrator", "web"),
        ("/wsx", "web"),
        ("/admin/", "admin"), ("/admin/devices/device/?q=1", "admin"), ("/static/admin/css/base.css", "admin"),
        ("/ws/live", "admin"),
    ],
)  # fmt: skip
def test_routes_and_forwarded_headers(proxy, path, upstream):
    seen = seen_by(proxy.port, path, **SPOOFED)
    assert (seen["upstream"], seen["path"]) == (upstream, path)
    headers = seen["headers"]
    assert headers["host"] == HOST  # with its port: ALLOWED_HOSTS and the CSRF origin check need it
    # What nginx saw, whatever the client claimed: the direct client's address, plain HTTP.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    for name in ("x-forwarded-host", "x-forwarded-port", "forwarded", "x-client-certificate"):
        assert name not in headers, name


def test_admin_without_its_slash_is_redirected_relative(proxy):
    """nginx's own redirect for a proxied prefix location; relative, as nginx's port (8080 in its container) is not
    the public one."""
    for path in ("/admin", "/ws"):
        status, headers, _ = call(proxy.port, path=path)
        assert (status, headers["location"]) == (301, path + "/")


def test_no_version_in_the_server_header(proxy):
    _, headers, _ = call(proxy.port, path="/healthz")
    assert headers["server"] == "nginx"


def test_websockets_are_upgraded_and_tunnelled_to_daphne(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"GET /ws/live HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: http://" + HOST.encode() + b"\r\nX-Forwarded-Proto: https\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines
        echo = json.loads(next(line.split(": ", 1)[1] for line in lines if line.lower().startswith("x-echo:")))
        assert echo["upstream"] == "admin"
        assert echo["headers"]["upgrade"] == "websocket"
        assert echo["headers"]["connection"] == "upgrade"
        # The location repeats the server's headers (a proxy_set_header there would drop the inherited ones).
        assert echo["headers"]["host"] == HOST
        assert echo["headers"]["origin"] == f"http://{HOST}"
        assert echo["headers"]["x-forwarded-proto"] == "http"
        assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"
        sock.sendall(b"ping over the tunnel")
        received = rest
        while len(received) < len(b"ping over the tunnel"):
            received += sock.recv(4096)
        assert received == b"ping over the tunnel"


def test_a_trusted_load_balancer_keeps_its_headers(tmp_path, upstreams):
    web, admin = upstreams
    nginx = Nginx(tmp_path, web.address, admin.address, trust="true")
    try:
        headers = seen_by(nginx.port, "/healthz", **SPOOFED)["headers"]
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert "x-forwarded-host" not in headers
        assert seen_by(nginx.port, "/healthz", X_Forwarded_Proto="gopher")["headers"]["x-forwarded-proto"] == "http"
        assert seen_by(nginx.port, "/ws/live", **SPOOFED)["headers"]["x-forwarded-proto"] == "https"
    finally:
        nginx.stop()


# --- limits -----------------------------------------------------------------------------------------


def test_body_size_is_capped_a_little_above_api_max_body_bytes(proxy, upstreams, settings):
    web, admin = upstreams
    limit = settings.API_MAX_BODY_BYTES  # 64 KiB: the app answers 413 itself up to the proxy's cap
    status, _, body = call(proxy.port, "POST", "/device/v1/shadow/reported", b"x" * (limit + 1024))
    assert status == 200 and json.loads(body)["body_length"] == limit + 1024

    status, headers, body = call(proxy.port, "POST", "/device/v1/shadow/reported", b"x" * (80 * 1024 + 1))
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "too_large" and json.loads(body)["detail"]
    assert len(web.seen) == 1, "the oversize body must not reach gunicorn"

    # Admin forms are URL-encoded: a larger cap there.
    assert call(proxy.port, "POST", "/admin/jobs/job/add/", b"x" * (200 * 1024))[0] == 200
    assert call(proxy.port, "POST", "/admin/jobs/job/add/", b"x" * (300 * 1024))[0] == 413
    assert [s["body_length"] for s in admin.seen] == [200 * 1024]

    # Bulk provisioning takes files of up to DEVICES_BULK_MAX_BYTES (8 MiB), on its two paths only.
    assert settings.DEVICES_BULK_MAX_BYTES <= 8 * 1024 * 1024
    assert call(proxy.port, "POST", "/customer/devices/bulk", b"x" * (2 * 1024 * 1024))[0] == 200
    assert call(proxy.port, "POST", "/admin/devices/device/bulk/", b"x" * (2 * 1024 * 1024))[0] == 200
    assert call(proxy.port, "POST", "/customer/devices/bulk", b"x" * (8 * 1024 * 1024 + 1))[0] == 413
    assert call(proxy.port, "POST", "/customer/devices/bulky", b"x" * (200 * 1024))[0] == 413  # exactly that path
    assert [s["body_length"] for s in web.seen][-1] == 2 * 1024 * 1024


def test_a_slow_body_reaches_gunicorn_only_once_complete(proxy, upstreams):
    web, _ = upstreams
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"POST /device/v1/shadow/reported HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 100
        )
        time.sleep(0.5)
        assert web.seen == [], "nginx must hold an incomplete body, not pass it to a worker"
        sock.sendall(b"x" * 900)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200")
    assert [s["body_length"] for s in web.seen] == [1000]


def test_a_client_that_never_finishes_its_header_is_dropped(tmp_path, upstreams):
    """client_header_timeout (10 s, shortened to 1 s here) is one timer for the whole header, not per byte."""
    web, admin = upstreams
    assert "client_header_timeout 10s;" in TEMPLATE.read_text()
    shorter = lambda conf: conf.replace("client_header_timeout 10s;", "client_header_timeout 1s;")  # noqa: E731
    nginx = Nginx(tmp_path, web.address, admin.address, edit=shorter)
    try:
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=5) as sock:
            started = time.monotonic()
            closed = None
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                try:
                    sock.send(bytes([byte]))
                    if select.select([sock], [], [], 0.1)[0]:
                        sock.recv(4096)  # an answer or the end: either way nginx gave up on the request
                        raise ConnectionAbortedError
                except OSError:  # reset (reset_timedout_connection) or closed
                    closed = time.monotonic() - started
                    break
        assert closed is not None and closed < 3, "nginx kept a trickling header past client_header_timeout"
        assert web.seen == []
    finally:
        nginx.stop()


# --- errors -----------------------------------------------------------------------------------------


def test_the_apps_errors_pass_through_and_the_proxys_own_are_json(tmp_path, proxy):
    status, _, body = call(proxy.port, path="/readyz?status=503")
    assert status == 503 and json.loads(body)["upstream"] == "web"  # the app's body, not nginx's page

    for raw, status, code in (
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400, "headers_too_large"),
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(raw)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()), head
        assert json.loads(body)["code"] == code

    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    nginx = Nginx(tmp_path, nobody, nobody)
    try:
        status, headers, body = call(nginx.port, path="/device/v1/shadow")
        assert status == 502 and headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "upstream_unavailable"
        assert call(nginx.port, path="/admin/")[0] == 502
    finally:
        nginx.stop()


def test_compose_health_check_of_the_proxy(tmp_path, proxy, upstreams):
    """The proxy service's health check command, as compose runs it (port rewritten): /healthz through nginx."""
    if not shutil.which("curl"):
        if os.environ.get("REQUIRE_NGINX") == "1":
            raise AssertionError("REQUIRE_NGINX=1 but curl is missing (apt-get install curl)")
        pytest.skip("needs curl (the nginx image has it)")
    web, _ = upstreams
    kind, command = COMPOSE["proxy"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$").replace("127.0.0.1:8080", f"127.0.0.1:{proxy.port}")
    env = {**os.environ, "ALLOWED_HOSTS": " .iot.example.com, other.example.com"}
    assert subprocess.run(["sh", "-c", command], env=env, timeout=15).returncode == 0
    assert (web.seen[-1]["path"], web.seen[-1]["headers"]["host"]) == ("/healthz", "iot.example.com")

    nobody = f"127.0.0.1:{free_port()}"
    down = Nginx(tmp_path, nobody, nobody)
    try:
        command = command.replace(f"127.0.0.1:{proxy.port}", f"127.0.0.1:{down.port}")
        assert subprocess.run(["sh", "-c", command], env=env, timeout=15, capture_output=True).returncode != 0
    finally:
        down.stop()


# --- slow clients against real gunicorn sync workers --------------------------------------------------


class Slowloris:
    """Sockets that send a request header one byte at a time and never finish it."""

    HEADER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, port: int, count: int, interval: float = 0.1):
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.interval, self.stopping = interval, threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self):
        sent = 0
        while not self.stopping.is_set():
            byte = self.HEADER[sent : sent + 1] or b"a"
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # a server that gave up on it
                    sock.send(byte)
            sent += 1
            self.stopping.wait(self.interval)

    def __enter__(self):
        time.sleep(0.3)  # let the server take them
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


def probe(port: int, timeout: float) -> float | None:
    """Seconds GET /healthz took, or None when it did not answer within timeout."""
    started = time.perf_counter()
    try:
        status, _, body = call(port, path="/healthz", timeout=timeout, Host="127.0.0.1")
    except (TimeoutError, OSError):
        return None
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    return time.perf_counter() - started


def compose_gunicorn_flags() -> list[str]:
    """The timeout flags compose gives gunicorn, so the test runs the same worker settings."""
    command = " ".join(COMPOSE["web"]["command"])
    flags = re.findall(r"--(?:timeout|graceful-timeout|keep-alive)=\d+", command)
    assert len(flags) == 3, command
    return flags


@pytest.fixture
def gunicorn(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",  # /healthz touches no database
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1,localhost,iot.example.com",
        "METRICS_TOKEN": secrets.token_urlsafe(32),
        "USE_X_FORWARDED_PROTO": "true",
        "LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "iotcloud.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--worker-class", "sync", *compose_gunicorn_flags(), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        wait_until(lambda: server.poll() is None and probe(port, 1), timeout=30, message="gunicorn to answer")
        yield port
    finally:
        server.terminate()
        server.wait(30)
        log.close()


SLOW_SOCKETS = 8


def test_slow_clients_exhaust_gunicorn_alone_but_not_behind_the_proxy(tmp_path, gunicorn):
    # Before: gunicorn faces the network (compose's port 8000 until now). Two sync workers, each
    # waiting for a header that never ends: the probe is not answered.
    with Slowloris(gunicorn, SLOW_SOCKETS):
        assert probe(gunicorn, timeout=1.5) is None, "gunicorn answered although every worker is held"
    wait_until(lambda: probe(gunicorn, 2), message="gunicorn to recover once the slow sockets close")

    # After: the same gunicorn behind the committed nginx config.
    nginx = Nginx(tmp_path, f"127.0.0.1:{gunicorn}", f"127.0.0.1:{free_port()}")
    try:
        with Slowloris(nginx.port, SLOW_SOCKETS):
            latencies = [probe(nginx.port, timeout=2) for _ in range(5)]
            assert None not in latencies, f"a probe through the proxy timed out: {latencies}"
            assert max(latencies) < 1.0, latencies
            # The app behind it: plain HTTP as nginx saw it, whatever the client claims.
            status, headers, _ = call(nginx.port, path="/device/v1/shadow", X_Forwarded_Proto="https")
            assert status == 301 and headers["location"].startswith("https://")
        print(
            f"\n{SLOW_SOCKETS} slow sockets: gunicorn alone: no answer within 1.5 s; through nginx: "
            f"/healthz in {min(latencies) * 1000:.1f}-{max(latencies) * 1000:.1f} ms"
        )
    finally:
        nginx.stop()
