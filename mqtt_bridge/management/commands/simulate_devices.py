"""python manage.py simulate_devices — pretend to be devices, over MQTT.

Each simulated device connects with its own credentials (username "<tenant>/<device>", password =
its provision token, client id = its username). With --protocol native (the default) it speaks the
full device protocol on its native topics (tenant/<t>/device/<d>/...):
- on connect it asks for its shadow (shadow/get) and applies whatever delta the answer holds;
- on every shadow/update/delta it applies the delta and reports just those keys (a partial report,
  shadow/update), plus a temperature reading now and then;
- jobs over MQTT: on jobs/notify-next it takes the next job (jobs/start-next), reports progress
  (IN_PROGRESS with statusDetails), waits --job-seconds, then SUCCEEDED (FAILED when the job's
  params say {"fail": true}), each update with expectedVersion.
With --protocol seed it speaks only the original specification: the retained shadow/desired, whole
reports on shadow/reported with the desired version applied, and jobs claimed over HTTP on the
retained jobs/notify. Tokens come from var/demo.json (written by `manage.py demo`) or, with --count,
from devices it provisions (or re-keys) itself.
"""

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.models import Device, Tenant
from devices.services import device_provision, device_rotate_token
from iotcloud.signals import set_on_stop_signals
from mqtt_bridge import topics
from mqtt_bridge.accounts import acl
from mqtt_bridge.config import broker_settings
from twin.shadow import merge_patch

NATIVE, SEED = "native", "seed"


class SimulatedDevice:
    """The seed's protocol: retained desired in, whole reports out, jobs over HTTP."""

    def __init__(self, broker, tenant_id: str, device_id: str, token: str, log, api_url: str | None = None,
                 job_seconds: float = 3.0):  # fmt: skip
        self.tenant_id, self.device_id, self.log = tenant_id, device_id, log
        self.token, self.api_url, self.job_seconds = token, api_url, job_seconds
        self.state: dict = {}
        self.version = 0
        self._running_jobs: set[str] = set()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=acl.device_client_id(tenant_id, device_id),
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        self.client.username_pw_set(acl.device_username(tenant_id, device_id), token)
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log(f"{self.device_id}: broker refused the connection ({reason_code})")
            return
        client.subscribe(topics.desired(self.tenant_id, self.device_id), qos=1)
        client.subscribe(topics.reported_rejected(self.tenant_id, self.device_id), qos=1)
        if self.api_url:
            client.subscribe(topics.jobs_notify(self.tenant_id, self.device_id), qos=1)
        self.report(temperature_c=round(random.uniform(18, 24), 1))  # "I'm online": the fleet is not stale

    def _on_message(self, client, userdata, message):
        if message.topic == topics.jobs_notify(self.tenant_id, self.device_id):
            for job in json.loads(message.payload or b'{"jobs": []}')["jobs"]:
                if job["job_id"] not in self._running_jobs:
                    self._running_jobs.add(job["job_id"])
                    threading.Thread(target=self._run_job, args=(job,), daemon=True).start()
            return
        if message.topic == topics.reported_rejected(self.tenant_id, self.device_id):
            self.log(f"{self.device_id}: report rejected: {message.payload.decode(errors='replace')}")
            return
        if not message.payload:
            self.log(f"{self.device_id}: desired state cleared (decommissioned?)")
            return
        body = json.loads(message.payload)
        if body["version"] < self.version:
            return  # an older version than the one applied: ignore
        self.state, self.version = body["desired"], body["version"]
        self.log(f"{self.device_id}: applied desired v{self.version} {json.dumps(self.state)}")
        self.report()

    def _run_job(self, job: dict) -> None:
        """Claim over HTTP, "work", then succeed (or fail when params say {"fail": true})."""
        url = f"{self.api_url}/device/v1/jobs/{job['job_id']}/execution"
        try:
            if job.get("status", "QUEUED") == "QUEUED":
                claimed = self._put(url, {"status": "IN_PROGRESS", "execution_number": job["execution_number"]})
            else:  # already ours (a restart mid-job): finish it
                claimed = job
            self.log(f"{self.device_id}: running job {job['job_id']} ({job['document']['type']})")
            time.sleep(self.job_seconds)
            outcome = "FAILED" if job["document"]["params"].get("fail") else "SUCCEEDED"
            self._put(url, {"status": outcome, "execution_number": claimed["execution_number"],
                            "status_details": {"simulated": True}})  # fmt: skip
            self.log(f"{self.device_id}: job {job['job_id']} {outcome}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.log(f"{self.device_id}: job {job['job_id']} not run: {exc}")
        finally:
            self._running_jobs.discard(job["job_id"])

    def _put(self, url: str, body: dict) -> dict:
        request = urllib.request.Request(  # noqa: S310 (the operator-given API URL)
            url, data=json.dumps(body).encode(), method="PUT",
            headers={"Content-Type": "application/json", "X-Provision-Token": self.token},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def report(self, **readings):
        payload = {"reported": {**self.state, **readings}, "version": self.version}
        self.client.publish(topics.reported(self.tenant_id, self.device_id), json.dumps(payload), qos=1)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class NativeDevice(SimulatedDevice):
    """The full native protocol: shadow get/update/delta and jobs over MQTT."""

    def _topic(self, suffix: str) -> str:
        return topics.shadow_topic(topics.NATIVE, self.tenant_id, self.device_id, "", suffix)

    def _jobs(self, suffix: str) -> str:
        return topics.jobs_topic(topics.NATIVE, self.tenant_id, self.device_id, suffix)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log(f"{self.device_id}: broker refused the connection ({reason_code})")
            return
        for suffix in ("get/accepted", "get/rejected", "update/accepted", "update/rejected", "update/delta"):
            client.subscribe(self._topic(suffix), qos=1)
        for suffix in ("notify-next", "start-next/accepted", "start-next/rejected", "+/update/rejected"):
            client.subscribe(self._jobs(suffix), qos=1)
        self._request(self._topic("get"), {})  # where do I stand? the answer's delta is applied

    def _request(self, topic: str, body: dict) -> None:
        body.setdefault("clientToken", uuid.uuid4().hex[:16])
        self.client.publish(topic, json.dumps(body), qos=1)

    def _on_message(self, client, userdata, message):
        topic, body = message.topic, json.loads(message.payload or b"{}")
        if topic == self._topic("get/accepted"):
            self.state = dict(body["state"].get("reported", {}))
            self.apply(body["state"].get("delta", {}), online=True)
        elif topic == self._topic("update/delta"):
            self.apply(body["state"])
        elif topic == self._jobs("notify-next") and body.get("execution"):
            self._request(self._jobs("start-next"), {"statusDetails": {"step": "starting"}})
        elif topic == self._jobs("start-next/accepted") and body.get("execution"):
            execution = body["execution"]
            if execution["jobId"] not in self._running_jobs:
                self._running_jobs.add(execution["jobId"])
                threading.Thread(target=self._run_mqtt_job, args=(execution,), daemon=True).start()
        elif topic.endswith("/rejected"):
            self.log(
                f"{self.device_id}: {topic.rsplit('/', 2)[-2]} rejected: {message.payload.decode(errors='replace')}"
            )

    def apply(self, delta: dict, *, online: bool = False) -> None:
        """Take on what the delta asks and report just that (a partial report); null keys are dropped."""
        readings = {"temperature_c": round(random.uniform(18, 24), 1)} if online else {}
        if not delta and not readings:
            return
        self.state = merge_patch(self.state, delta)
        if delta:
            self.log(f"{self.device_id}: applied delta {json.dumps(delta)}")
        self.report_partial({**delta, **readings})

    def report_partial(self, changes: dict) -> None:
        self._request(self._topic("update"), {"state": {"reported": changes}})

    def report(self, **readings):
        self.report_partial(readings)

    def _run_mqtt_job(self, execution: dict) -> None:
        job_id, version = execution["jobId"], execution["versionNumber"]
        document = execution.get("jobDocument") or {}
        update = self._jobs(f"{job_id}/update")
        try:
            self.log(f"{self.device_id}: running job {job_id} ({document.get('type')})")
            self._request(update, {"status": "IN_PROGRESS", "statusDetails": {"progress": "50%"},
                                   "expectedVersion": version})  # fmt: skip
            time.sleep(self.job_seconds)
            outcome = "FAILED" if (document.get("params") or {}).get("fail") else "SUCCEEDED"
            self._request(update, {"status": outcome, "statusDetails": {"simulated": "true"},
                                   "expectedVersion": version + 1})  # fmt: skip
            self.log(f"{self.device_id}: job {job_id} {outcome}")
        finally:
            self._running_jobs.discard(job_id)


class Command(BaseCommand):
    help = "Simulate devices over MQTT: apply desired state and report it back."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", default="demo")
        parser.add_argument(
            "--count", type=int, default=0, help="simulate N devices sim-0001..N in --tenant (provisioned or re-keyed)"
        )
        parser.add_argument(
            "--telemetry-every", type=float, default=30.0, help="seconds between temperature reports (0: never)"
        )
        parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until ^C)")
        parser.add_argument(
            "--api-url",
            default="http://127.0.0.1:8000",
            help="where devices claim and report jobs over HTTP ('' to ignore jobs)",
        )
        parser.add_argument("--job-seconds", type=float, default=3.0, help="how long a simulated job runs")
        parser.add_argument(
            "--protocol", choices=[NATIVE, SEED], default=NATIVE,
            help="native: shadow get/update/delta and jobs over MQTT; seed: the original topics, jobs over HTTP",
        )  # fmt: skip

    def handle(self, *args, tenant, count, telemetry_every, duration, api_url, job_seconds, protocol, **options):
        credentials = self._credentials(tenant, count)
        broker = broker_settings()
        stop = threading.Event()
        set_on_stop_signals(stop)
        kind = NativeDevice if protocol == NATIVE else SimulatedDevice
        devices = [
            kind(broker, tenant, device_id, token, self._log, api_url=api_url or None, job_seconds=job_seconds)
            for device_id, token in credentials
        ]  # fmt: skip
        self._log(f"simulating {len(devices)} device(s) of tenant {tenant} on {broker} ({protocol} protocol)")
        started = time.monotonic()
        try:
            while not stop.wait(telemetry_every or 1):
                if duration and time.monotonic() - started > duration:
                    break
                if telemetry_every:
                    for device in devices:
                        device.report(temperature_c=round(random.uniform(18, 24), 1))
        finally:
            for device in devices:
                device.close()

    def _credentials(self, tenant_id: str, count: int) -> list[tuple[str, str]]:
        if count:
            tenant = Tenant.objects.filter(id=tenant_id).first()
            if tenant is None:
                raise CommandError(f"Tenant {tenant_id!r} does not exist")
            pairs = []
            for n in range(1, count + 1):
                device_id = f"sim-{n:04}"
                device = Device.objects.filter(tenant=tenant, device_id=device_id).first()
                token = (
                    device_rotate_token(device=device) if device
                    else device_provision(tenant=tenant, device_id=device_id)[1]
                )  # fmt: skip
                pairs.append((device_id, token))
            return pairs
        path = settings.VAR_DIR / "demo.json"
        if not path.exists():
            raise CommandError(f"{path} not found: run `python manage.py demo` first, or use --count N")
        saved = json.loads(path.read_text())
        if saved.get("tenant") != tenant_id:
            raise CommandError(f"{path} holds tenant {saved.get('tenant')!r}, not {tenant_id!r}; use --count N")
        return list(saved["devices"].items())

    def _log(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
