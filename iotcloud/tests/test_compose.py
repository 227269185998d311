"""docker-compose.yml, .env.example, the Dockerfile and the Mosquitto config checked without Docker.

docker compose is not available here: the compose file is read with PyYAML and held to the rules
of the deployment (services, dependencies, health checks, scalable bridges, no literal secrets,
every variable documented). When a `mosquitto` binary and its dynamic security plugin are
installed, the broker config is started for real and the bridge account's rights are exercised.
"""

import base64
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from iotcloud import pki
from mqtt_bridge.dev_tls import ensure_dev_tls

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DYNSEC_CONF = ROOT / "mqtt_bridge" / "mosquitto-dynsec.conf"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal dollar.
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY$")
APP_SERVICES = ("migrate", "web", "admin", "bridge")


def compose_variables():
    """(name, operator, argument) for every interpolation in docker-compose.yml."""
    return [m.groups() for m in VAR_RE.finditer(COMPOSE_TEXT.replace("$$", ""))]


def env_example():
    """Variables set in .env.example ({name: value}) and those only shown commented out."""
    active, commented = {}, set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            active[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            commented.add(m[1])
    return active, commented


def environment(service) -> dict:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def depends_on(service) -> dict:
    deps = SERVICES[service].get("depends_on") or {}
    return {name: {} for name in deps} if isinstance(deps, list) else deps


def test_services():
    assert {"postgres", "mosquitto", "redis", "migrate", "web", "admin", "bridge"} <= set(SERVICES)


def test_dependencies_exist_and_wait_for_the_right_state():
    for name in SERVICES:
        for dep in depends_on(name):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            assert dep != name
    for name in ("web", "admin", "bridge"):
        assert depends_on(name)["migrate"] == {"condition": "service_completed_successfully"}, name
    assert depends_on("migrate")["postgres"] == {"condition": "service_healthy"}
    assert depends_on("bridge")["mosquitto"] == {"condition": "service_healthy"}


def test_every_service_has_an_image_or_builds_this_repository():
    for name, service in SERVICES.items():
        assert service.get("build") == "." or service.get("image"), name
        if "build" in service:
            assert service["build"] == ".", name


def test_health_checks():
    for name in ("web", "admin", "bridge", "mosquitto", "postgres", "redis"):
        check = SERVICES[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
    for name, port in (("web", 8000), ("admin", 8080), ("proxy", 8080)):
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(SERVICES[name]["healthcheck"]["test"]), name


def test_migrations_run_once_in_their_own_one_shot_service():
    migrate = SERVICES["migrate"]
    assert "migrate" in " ".join(migrate["command"])
    assert migrate.get("restart") == "no"
    for name in ("web", "admin", "bridge"):
        assert "migrate" not in json.dumps(SERVICES[name].get("command", "")), f"{name} runs migrations itself"


def test_bridge_scales():
    bridge = SERVICES["bridge"]
    assert bridge["restart"] == "unless-stopped"
    assert "container_name" not in bridge and "ports" not in bridge and "hostname" not in bridge
    env = environment("bridge")
    assert env.get("MQTT_SHARED_GROUP"), "replicas must share the reports"
    assert "MQTT_CLIENT_ID" not in env, "a fixed client id would make replicas kick each other off"
    assert env["MQTT_URL"].startswith("mqtt://") and "@mosquitto:1883" in env["MQTT_URL"]


def test_web_runs_gunicorn_with_configurable_workers_and_admin_runs_daphne():
    web = " ".join(SERVICES["web"]["command"])
    assert "exec gunicorn iotcloud.wsgi:application" in web and "${WEB_WORKERS:-" in web
    # one set of Prometheus counters across the workers, emptied at start
    assert environment("web")["PROMETHEUS_MULTIPROC_DIR"] in web.split("rm -rf ")[1]
    assert "daphne" in SERVICES["admin"]["command"] and "iotcloud.asgi:application" in SERVICES["admin"]["command"]
    assert environment("web")["DEBUG"] == "false"


NGINX_TEMPLATE = ROOT / "iotcloud" / "deploy" / "nginx.conf.template"


def test_http_goes_through_the_proxy_only():
    """gunicorn and daphne listen on the compose network only; nginx publishes the HTTP port (test_proxy runs it)."""
    for name in ("web", "admin"):
        assert "ports" not in SERVICES[name], f"{name} must not face the network: clients go through the proxy"
    proxy, env = SERVICES["proxy"], environment("proxy")
    assert proxy["image"].startswith("nginx:"), "the official nginx image"
    assert proxy["ports"] == [f"${{HTTP_PORT:-8000}}:{env['IOTCLOUD_PROXY_PORT']}"]
    web, admin = " ".join(SERVICES["web"]["command"]), " ".join(SERVICES["admin"]["command"])
    assert env["IOTCLOUD_WEB_UPSTREAM"] == "web:8000" and "--bind=0.0.0.0:8000" in web
    assert env["IOTCLOUD_ADMIN_UPSTREAM"] == "admin:8080" and "--port 8080" in admin
    assert "./iotcloud/deploy/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in proxy["volumes"]
    for name in ("web", "admin"):
        assert depends_on("proxy")[name]["condition"] == "service_healthy"


def test_the_proxy_template_gets_every_variable_and_only_those():
    template, env = NGINX_TEMPLATE.read_text(), environment("proxy")
    used = set(re.findall(r"\$\{(IOTCLOUD_[A-Z0-9_]+)\}", template))
    assert used == {name for name in env if name.startswith("IOTCLOUD_")}
    assert not re.search(r"\$IOTCLOUD_", template), "write ${IOTCLOUD_...}: envsubst would also replace $IOTCLOUD_..."
    # The image's envsubst step takes the variables whose NAME=value matches the filter: ours, never
    # another one that could replace an nginx $variable or leak a value into the config.
    selected = {name for name, value in env.items() if re.search(env["NGINX_ENVSUBST_FILTER"], f"{name}={value}")}
    assert selected == used


def test_gunicorn_timeouts_and_the_proxy_waits_longer():
    web = " ".join(SERVICES["web"]["command"])
    timeout = int(re.search(r"--timeout=(\d+)", web)[1])
    assert 10 <= timeout <= 60, "a stuck worker is killed within a minute"
    assert re.search(r"--keep-alive=\d+", web) and re.search(r"--graceful-timeout=(\d+)", web)
    graceful = int(re.search(r"--graceful-timeout=(\d+)", web)[1])
    assert int(SERVICES["web"]["stop_grace_period"].rstrip("s")) > graceful, "docker must not kill a graceful stop"
    # The server-wide read timeout (the first one; /ws/ has its own): gunicorn gives up first.
    read_timeout = int(re.search(r"^\s*proxy_read_timeout (\d+)s;", NGINX_TEMPLATE.read_text(), re.M)[1])
    assert read_timeout > timeout


def test_no_literal_secrets():
    for name in SERVICES:
        for key, value in environment(name).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert VAR_RE.fullmatch(value), f"{name}.{key} must come from a ${{VAR}} reference, not {value!r}"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert VAR_RE.fullmatch(password), f"{name}.{key} has a literal password in a URL"
    for name, operator, argument in compose_variables():
        if SECRET_NAME.search(name) and operator in (":-", "-"):
            assert not argument, f"${{{name}}} has a default: a secret must be set, not defaulted"


def test_metrics_token_is_required():
    """Production refuses to start without it (or METRICS_PUBLIC): compose says so before starting anything."""
    operators = {operator for name, operator, _ in compose_variables() if name == "METRICS_TOKEN"}
    assert operators == {":?"}, "METRICS_TOKEN must be required (${METRICS_TOKEN:?...}), never defaulted"
    assert all(environment(name)["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?") for name in APP_SERVICES)
    assert env_example()[0]["METRICS_TOKEN"] == "", ".env.example lists it as required, without a value"


def test_sign_in_lockouts_count_the_client_not_the_proxy():
    """Behind compose's nginx every request comes from the proxy's address: without trusting its one
    X-Forwarded-For entry, five wrong passwords from anyone would lock everybody out."""
    for name in APP_SERVICES:
        assert environment(name)["TRUSTED_PROXY_COUNT"] == "${TRUSTED_PROXY_COUNT:-1}", name


def test_every_mounted_file_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_every_variable_is_in_env_example():
    active, commented = env_example()
    for name, operator, _ in compose_variables():
        if operator in (None, ":?", "?"):  # required: compose refuses to start without it
            assert name in active, f"${{{name}}} is required: .env.example must list it (uncommented)"
        assert name in active or name in commented, f"${{{name}}} is not described in .env.example"
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "MQTT_BRIDGE_PASSWORD"):
        assert active[name] == "", f".env.example must not ship a value for {name}"


def test_dockerfile():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root\b)\S+", dockerfile, re.M), "the image must not run as root"
    assert "collectstatic" in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().split(), ".env (secrets) must stay out of the image"


SECRET_ENV_FILES = (".env", ".env.production", ".env.local", "deploy/.env")


def test_env_files_with_secrets_are_ignored_by_git_and_docker():
    """The README has you create .env with secrets: git must not offer to commit it (only .env.example)."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a git checkout and the git binary")

    def ignored(path: str) -> bool:
        # --no-index: the patterns decide, whatever is in the index
        result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, timeout=30)
        assert result.returncode in (0, 1), f"git check-ignore failed for {path}"
        return result.returncode == 0

    for path in SECRET_ENV_FILES:
        assert ignored(path), f"{path} is not git-ignored"
    assert not ignored(".env.example"), ".env.example must stay tracked"
    tracked = subprocess.run(["git", "ls-files", "--", ".env", ".env.*"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.split() in ([], [".env.example"]), f"secret env files are tracked: {tracked.stdout}"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".env.*", "!.env.example"} <= set(dockerignore), ".env files must stay out of the image"


# --- Mosquitto ---------------------------------------------------------------------------

DYNSEC_PLUGIN_IMAGE = "/usr/lib/mosquitto_dynamic_security.so"  # eclipse-mosquitto:2
DYNSEC_PLUGIN_LOCAL = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"  # Debian


def conf_lines(path=DYNSEC_CONF):
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_dynsec_conf():
    lines = conf_lines()
    for line in (
        "listener 1883",
        "allow_anonymous false",
        f"plugin {DYNSEC_PLUGIN_IMAGE}",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
        "persistence true",
        "max_queued_messages 100000",
    ):
        assert line in lines, line
    mosquitto = SERVICES["mosquitto"]
    assert "./mqtt_bridge/mosquitto-dynsec.conf:/mosquitto/config/iotcloud.conf:ro" in mosquitto["volumes"]
    assert " ".join(mosquitto["command"]).startswith("sh -c mosquitto -c /mosquitto/config/iotcloud.conf &")
    assert "kill -HUP" in mosquitto["command"][2]  # the revocation list is read again when it changes
    assert depends_on("mosquitto")["mosquitto-init"] == {"condition": "service_completed_successfully"}
    init = "\n".join(SERVICES["mosquitto-init"]["command"])
    assert "mosquitto_ctrl dynsec init" in init and "/mosquitto/data/dynamic-security.json" in init
    assert "addRoleACL iotcloud-bridge publishClientSend 'tenant/#' allow" in init


def dynsec_client(username: str, password: str, roles) -> dict:
    """A client entry as `mosquitto_ctrl dynsec init` writes it (PBKDF2-SHA512, 12-byte salt, 101 rounds)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {
        "username": username, "textname": "", "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": [{"rolename": r} for r in roles],
    }  # fmt: skip


def acl(acltype, topic):
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


CONTROL = "$CONTROL/dynamic-security/#"


def initial_dynsec_json(username, password) -> dict:
    """What the compose service mosquitto-init leaves: `dynsec init`'s admin, plus the iotcloud-bridge role."""
    admin = [
        acl("publishClientSend", CONTROL), acl("publishClientReceive", CONTROL), acl("subscribePattern", CONTROL),
        acl("publishClientReceive", "$SYS/#"),
        acl("subscribePattern", "$SYS/#"), acl("publishClientReceive", "#"), acl("subscribePattern", "#"),
        acl("unsubscribePattern", "#"),
    ]  # fmt: skip
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [dynsec_client(username, password, ["admin", "iotcloud-bridge"])],
        "groups": [],
        "roles": [{"rolename": "admin", "acls": admin},
                  {"rolename": "iotcloud-bridge", "acls": [acl("publishClientSend", "tenant/#")]}],
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dynsec_broker(tmp_path):
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not mosquitto or not Path(DYNSEC_PLUGIN_LOCAL).exists():
        pytest.skip(f"needs the mosquitto binary and {DYNSEC_PLUGIN_LOCAL} (apt-get install mosquitto)")
    # mosquitto_ctrl is not installed here, so the init step's output is written directly in its format.
    username, password = "iotcloud-bridge", "pw-" + os.urandom(8).hex()
    (tmp_path / "dynamic-security.json").write_text(json.dumps(initial_dynsec_json(username, password)))
    port = free_port()
    conf = DYNSEC_CONF.read_text()
    tls_port = free_port()
    tls, _ = ensure_dev_tls(tmp_path / "tls")  # what compose's tls-init makes (manage.py tls_dev_ca)
    conf = conf.replace(DYNSEC_PLUGIN_IMAGE, DYNSEC_PLUGIN_LOCAL).replace("/mosquitto/data/", f"{tmp_path}/")
    conf = conf.replace("/mosquitto/tls/", f"{tmp_path}/tls/").replace("/mosquitto/device-ca/", f"{tmp_path}/tls/")
    (tmp_path / "tls" / "device-ca.crt").write_bytes(tls.ca_file.read_bytes())  # as device-ca writes them
    ca_key, ca_cert = pki.load_key(tls.ca_key), pki.load_certificate(tls.ca_file)
    (tmp_path / "tls" / "device-crl.pem").write_bytes(pki.crl_pem(pki.revocation_list(ca_cert, ca_key, [])))
    cert_port = free_port()
    conf = re.sub(r"^listener 8884$", f"listener {cert_port} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", conf, flags=re.M)
    conf += f"\nuser {getpass.getuser()}\n"  # as root, mosquitto would switch to a user who cannot write tmp_path
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = open(tmp_path / "mosquitto.log", "w")  # noqa: SIM115
    process = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "mosquitto.log").read_text()
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        yield {
            "port": port,
            "username": username,
            "password": password,
            "dir": tmp_path,
            "tls_port": tls_port,
            "ca_file": str(tls.ca_file),
            "cert_port": cert_port,
            "tls": tls,
        }
    finally:
        process.terminate()
        process.wait(10)
        log.close()


class Client:
    def __init__(self, port, username=None, password=None, client_id="", ca_file=None):
        self.messages, self.connected, self.reason = [], threading.Event(), None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connected.set()

    @property
    def ok(self):
        return self.reason is not None and not self.reason.is_failure

    def wait_for(self, count, timeout=5):
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_dynsec_broker_starts_and_the_bridge_account_works(dynsec_broker):
    port, user, password = dynsec_broker["port"], dynsec_broker["username"], dynsec_broker["password"]
    anonymous, wrong = Client(port), Client(port, user, "wrong")
    assert not anonymous.ok and not wrong.ok, "anonymous and wrong-password logins must be refused"
    for c in (anonymous, wrong):
        c.close()

    bridge, publisher = Client(port, user, password, "bridge-1"), Client(port, user, password, "bridge-pub")
    try:
        assert bridge.ok and publisher.ok
        bridge.client.subscribe("$share/iotcloud/tenant/+/device/+/shadow/reported", qos=1)
        bridge.client.subscribe("tenant/+/device/+/shadow/desired", qos=1)
        bridge.client.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
        time.sleep(0.3)
        publisher.client.publish("tenant/acme/device/d1/shadow/reported", b"r", qos=1)
        publisher.client.publish("tenant/acme/device/d1/shadow/desired", b"d", qos=1, retain=True)
        # Admin of the plugin: the bridge manages device accounts over the control topic.
        publisher.client.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": [{"command": "listClients"}]}))
        topics = {topic for topic, _ in bridge.wait_for(3)}
        assert topics == {
            "tenant/acme/device/d1/shadow/reported",
            "tenant/acme/device/d1/shadow/desired",
            "$CONTROL/dynamic-security/v1/response",
        }
        response = json.loads(dict(bridge.messages)["$CONTROL/dynamic-security/v1/response"])
        assert user in response["responses"][0]["data"]["clients"]
    finally:
        bridge.close()
        publisher.close()


def test_devices_reach_the_compose_broker_over_tls_only(dynsec_broker):
    """8883 (the only port compose publishes) speaks TLS with tls-init's certificate, same accounts."""
    tls_port, ca_file = dynsec_broker["tls_port"], dynsec_broker["ca_file"]
    user, password = dynsec_broker["username"], dynsec_broker["password"]
    over_tls = Client(tls_port, user, password, "bridge-tls", ca_file=ca_file)
    try:
        assert over_tls.ok
    finally:
        over_tls.close()
    plain = Client(tls_port, user, password, "bridge-plain")  # plain MQTT on the TLS port: no session
    try:
        assert not plain.ok
    finally:
        plain.close()
    assert SERVICES["mosquitto"]["ports"] == ["${MQTT_TLS_PORT:-8883}:8883", "${MQTT_CERT_PORT:-8884}:8884"]
    assert SERVICES["mosquitto"]["depends_on"]["tls-init"] == {"condition": "service_completed_successfully"}
    assert "manage.py tls_dev_ca --dir /tls" in " ".join(SERVICES["tls-init"]["command"])


def test_certificate_devices_log_in_on_8884_as_their_cn_with_its_accounts_rights(dynsec_broker, tmp_path):
    """8884 wants a certificate from the device CA; its CN is the dynamic-security username, so the
    account's ACL applies (here the bridge's account, the only one the fixture has)."""
    tls, port = dynsec_broker["tls"], dynsec_broker["cert_port"]
    ca_key, ca_cert = pki.load_key(tls.ca_key), pki.load_certificate(tls.ca_file)

    def session(common_name):
        key = pki.new_key()
        cert = pki.client_certificate(ca_cert, ca_key, key.public_key(), common_name)
        name = common_name.replace("/", "_")
        cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert_file.write_bytes(pki.certificate_pem(cert))
        pki.write_private(key_file, pki.key_pem(key))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=common_name, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=dynsec_broker["ca_file"], certfile=str(cert_file), keyfile=str(key_file))
        granted, answered = [], threading.Event()
        client.on_subscribe = lambda c, u, mid, codes, p: (granted.extend(str(x) for x in codes), answered.set())
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.subscribe("tenant/acme/device/d1/shadow/reported", qos=1)
        answered.wait(5)
        client.disconnect()
        client.loop_stop()
        return granted

    assert session(dynsec_broker["username"]) == ["Granted QoS 1"]  # the account's rights, no password
    assert session("acme/no-such-account") == ["Not authorized"]  # a certificate alone grants nothing
    anonymous = Client(port, client_id="no-certificate", ca_file=dynsec_broker["ca_file"])
    try:
        assert not anonymous.ok  # no client certificate: the handshake fails
    finally:
        anonymous.close()


def test_compose_health_checks_pass_against_the_broker(dynsec_broker):
    """The mosquitto and bridge health-check commands, run as compose would run them (ports rewritten)."""
    if not shutil.which("mosquitto_sub"):
        pytest.skip("needs mosquitto_sub (apt-get install mosquitto-clients)")
    port = dynsec_broker["port"]
    env = {
        **os.environ,
        "MQTT_BRIDGE_USERNAME": dynsec_broker["username"],
        "MQTT_BRIDGE_PASSWORD": dynsec_broker["password"],
    }
    kind, command = SERVICES["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$").replace("-p 1883", f"-p {port}")
    assert subprocess.run(["sh", "-c", command], env=env, timeout=15).returncode == 0
    assert subprocess.run(["sh", "-c", command], env={**env, "MQTT_BRIDGE_PASSWORD": "wrong"}, timeout=15).returncode

    # The bridge's own check reads its heartbeat row (mqtt_bridge/tests/test_bridge_health.py runs it).
    assert SERVICES["bridge"]["healthcheck"]["test"] == ["CMD", "python", "manage.py", "bridge_health"]
