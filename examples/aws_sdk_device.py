"""A device written only against the stock AWS IoT Device SDK v2 for Python, run against iotcloud.

It does what AWS IoT firmware usually does, through the SDK's own IotShadowClient and
IotJobsClient: get its shadow on start, apply the delta and report it back (a partial report:
only the keys that changed), report a few facts of its own, follow named shadows if asked, and
take jobs one at a time: notify-next -> start-next -> a progress update (IN_PROGRESS with
statusDetails) -> SUCCEEDED.

What differs from connecting to AWS IoT is only the connection: iotcloud's broker, username
`<tenant>/<device>`, password = the device's provision token, client id = the username, and
plain TCP (or TLS with a CA file, no client certificate). The thing name is `<tenant>:<device>`.

Against `make run` (the embedded broker listens on 127.0.0.1:1884; `manage.py demo` wrote the demo
tenant's device tokens to var/demo.json):

    make run SIMULATE=          # no simulator: it would use the same client ids as this device
    .venv/bin/python examples/aws_sdk_device.py --demo thermo-01 --shadow firmware

then change thermo-01's desired state in the operator UI (http://127.0.0.1:8000/admin/) or with
the curl line `make run` prints, and start a job for it (README, Jobs): the device prints the
delta it applies and the job it runs.

Against the compose stack (Mosquitto with per-device accounts on port 1883):

    docker compose exec web python manage.py provision_device acme pump-7     # prints the token
    .venv/bin/python examples/aws_sdk_device.py --host <host> --port 1883 \\
        --tenant acme --device pump-7 --token '<token>'

(`--tls --ca-file ca.pem` if a TLS listener is in front; IOTCLOUD_MQTT_HOST, IOTCLOUD_MQTT_PORT,
IOTCLOUD_TENANT, IOTCLOUD_DEVICE and IOTCLOUD_DEVICE_TOKEN may replace the options.)
`--max-jobs N` exits after N jobs succeeded, `--seconds S` after S seconds; by default it runs
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from pathlib import Path

from awscrt import mqtt
from awsiot import iotjobs, iotshadow, mqtt_connection_builder

QOS = mqtt.QoS.AT_LEAST_ONCE
TIMEOUT = 15  # seconds to wait for the broker (connect, SUBACK, PUBACK)
DEMO_FILE = Path(__file__).resolve().parents[1] / "var" / "demo.json"


def connect(args) -> mqtt.Connection:
    """An MQTT 3.1.1 connection to iotcloud's broker, logged in as the device.

    The SDK appends its metrics (`?SDK=...`) to the username unless told not to; iotcloud checks
    the username as written, so metrics are off.
    """
    login = f"{args.tenant}/{args.device}"
    if args.tls:
        return mqtt_connection_builder.new_default_builder(
            endpoint=args.host, port=args.port, client_id=login, username=login, password=args.token,
            ca_filepath=args.ca_file, clean_session=True, keep_alive_secs=30, enable_metrics_collection=False,
        )  # fmt: skip
    return mqtt.Connection(
        client=mqtt.Client(), host_name=args.host, port=args.port, client_id=login, username=login,
        password=args.token, clean_session=True, keep_alive_secs=30, disable_metrics=True,
    )  # fmt: skip


def merge(target: dict, changes: dict) -> dict:
    """Apply a delta to a state: nested objects are merged, everything else replaced."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


class Device:
    """The device: SDK callbacks only queue events; the main thread handles them in order."""

    def __init__(self, connection: mqtt.Connection, thing: str, shadows: list[str], facts: dict, job_seconds: float):
        self.shadow = iotshadow.IotShadowClient(connection)
        self.jobs = iotjobs.IotJobsClient(connection)
        self.thing = thing
        self.shadows = shadows  # "" is the classic shadow
        self.facts = facts
        self.job_seconds = job_seconds
        self.events: queue.Queue = queue.Queue()
        self.settings: dict[str, dict] = {name: {} for name in shadows}  # what the device has applied
        self.updates_in_flight = 0
        self.job = None  # (job id, the status last sent) while a job runs
        self.asking = False  # a start-next request awaits its answer
        self.jobs_done = 0

    # --- wiring -------------------------------------------------------------------------------

    SHADOW_KINDS = ("get/accepted", "get/rejected", "update/accepted", "update/rejected", "delta")
    JOBS_KINDS = ("notify-next", "start-next/accepted", "start-next/rejected", "job-update/accepted",
                  "job-update/rejected")  # fmt: skip

    def _on(self, kind: str, shadow_name: str = ""):
        return lambda event: self.events.put((kind, shadow_name, event))

    def subscribe(self):
        """Subscribe to every answer and event before sending any request (as AWS asks)."""
        futures = []
        for name in self.shadows:
            on = {kind: self._on(kind, name) for kind in self.SHADOW_KINDS}  # callback per answer
            if name:
                get = iotshadow.GetNamedShadowSubscriptionRequest(thing_name=self.thing, shadow_name=name)
                update = iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=self.thing, shadow_name=name)
                delta = iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name=self.thing, shadow_name=name)
                futures += [
                    self.shadow.subscribe_to_get_named_shadow_accepted(get, QOS, on["get/accepted"]),
                    self.shadow.subscribe_to_get_named_shadow_rejected(get, QOS, on["get/rejected"]),
                    self.shadow.subscribe_to_update_named_shadow_accepted(update, QOS, on["update/accepted"]),
                    self.shadow.subscribe_to_update_named_shadow_rejected(update, QOS, on["update/rejected"]),
                    self.shadow.subscribe_to_named_shadow_delta_updated_events(delta, QOS, on["delta"]),
                ]
            else:
                get = iotshadow.GetShadowSubscriptionRequest(thing_name=self.thing)
                update = iotshadow.UpdateShadowSubscriptionRequest(thing_name=self.thing)
                delta = iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=self.thing)
                futures += [
                    self.shadow.subscribe_to_get_shadow_accepted(get, QOS, on["get/accepted"]),
                    self.shadow.subscribe_to_get_shadow_rejected(get, QOS, on["get/rejected"]),
                    self.shadow.subscribe_to_update_shadow_accepted(update, QOS, on["update/accepted"]),
                    self.shadow.subscribe_to_update_shadow_rejected(update, QOS, on["update/rejected"]),
                    self.shadow.subscribe_to_shadow_delta_updated_events(delta, QOS, on["delta"]),
                ]
        notify = iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing)
        start = iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=self.thing)
        update = iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=self.thing, job_id="+")  # any job
        on = {kind: self._on(kind) for kind in self.JOBS_KINDS}
        futures += [
            self.jobs.subscribe_to_next_job_execution_changed_events(notify, QOS, on["notify-next"]),
            self.jobs.subscribe_to_start_next_pending_job_execution_accepted(start, QOS, on["start-next/accepted"]),
            self.jobs.subscribe_to_start_next_pending_job_execution_rejected(start, QOS, on["start-next/rejected"]),
            self.jobs.subscribe_to_update_job_execution_accepted(update, QOS, on["job-update/accepted"]),
            self.jobs.subscribe_to_update_job_execution_rejected(update, QOS, on["job-update/rejected"]),
        ]
        for future, _topic in futures:
            future.result(TIMEOUT)

    # --- requests -----------------------------------------------------------------------------

    def get_shadow(self, name: str):
        if name:
            request = iotshadow.GetNamedShadowRequest(thing_name=self.thing, shadow_name=name)
            self.shadow.publish_get_named_shadow(request, QOS).result(TIMEOUT)
        else:
            self.shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=self.thing), QOS).result(TIMEOUT)

    def report(self, name: str, reported: dict):
        """A partial report: only these keys change (null deletes one); the others stay as they are."""
        state = iotshadow.ShadowState(reported=reported)
        if name:
            request = iotshadow.UpdateNamedShadowRequest(thing_name=self.thing, shadow_name=name, state=state)
            future = self.shadow.publish_update_named_shadow(request, QOS)
        else:
            request = iotshadow.UpdateShadowRequest(thing_name=self.thing, state=state)
            future = self.shadow.publish_update_shadow(request, QOS)
        future.result(TIMEOUT)
        self.updates_in_flight += 1

    def start_next_job(self):
        """Claim the next pending job (AWS: the IN_PROGRESS one first, then the oldest QUEUED)."""
        request = iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing, status_details={"step": "0/2"})
        self.jobs.publish_start_next_pending_job_execution(request, QOS).result(TIMEOUT)
        self.asking = True

    def update_job(self, job_id: str, status: str, details: dict):
        request = iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing, job_id=job_id, status=status, status_details=details
        )
        self.jobs.publish_update_job_execution(request, QOS).result(TIMEOUT)
        self.job = (job_id, status)

    # --- events -------------------------------------------------------------------------------

    def apply(self, name: str, delta: dict, version):
        """Make the device match the desired state (here: remember it), then report what it now is."""
        label = name or "classic"
        print(f"shadow {label}: applying delta {json.dumps(delta)} (version {version})", flush=True)
        merge(self.settings[name], delta)
        self.report(name, delta)

    def handle(self, kind: str, name: str, event):
        label = name or "classic"
        if event is None:  # the SDK could not read the payload
            print(f"{kind} ({label}): a message the SDK could not parse", flush=True)
            return
        if kind == "get/accepted":
            state = event.state
            print(f"shadow {label}: version {event.version}, desired {json.dumps(state.desired)}, "
                  f"reported {json.dumps(state.reported)}", flush=True)  # fmt: skip
            if state.delta:
                self.apply(name, state.delta, event.version)
        elif kind == "get/rejected":
            print(f"shadow {label}: get rejected, {event.code} {event.message}", flush=True)
        elif kind == "delta":
            self.apply(name, event.state, event.version)
        elif kind == "update/accepted":
            self.updates_in_flight -= 1
            print(f"shadow {label}: update accepted, version {event.version}", flush=True)
        elif kind == "update/rejected":
            self.updates_in_flight -= 1
            print(f"shadow {label}: update rejected, {event.code} {event.message}", flush=True)
        elif kind == "notify-next":
            if event.execution is not None and self.job is None and not self.asking:
                self.start_next_job()
        elif kind == "start-next/accepted":
            self.asking = False
            execution = event.execution
            if execution is None:
                print("jobs: nothing pending", flush=True)
            elif self.job is None:
                print(f"job {execution.job_id}: started, document {json.dumps(execution.job_document)}", flush=True)
                self.update_job(execution.job_id, iotjobs.JobStatus.IN_PROGRESS, {"step": "1/2", "progress": "50%"})
        elif kind == "job-update/accepted" and self.job is not None:
            job_id, status = self.job
            if status == iotjobs.JobStatus.IN_PROGRESS:
                time.sleep(self.job_seconds)  # the work itself
                self.update_job(job_id, iotjobs.JobStatus.SUCCEEDED, {"step": "2/2", "progress": "100%"})
            else:
                print(f"job {job_id}: {status}", flush=True)
                self.job = None
                self.jobs_done += 1
                self.start_next_job()  # anything else pending?
        elif kind == "start-next/rejected":
            self.asking = False
            print(f"jobs: start-next rejected, {event.code} {event.message}", flush=True)
        elif kind == "job-update/rejected":
            print(f"jobs: update rejected, {event.code} {event.message}", flush=True)
            self.job = None

    def run(self, max_jobs: int, seconds: float):
        self.subscribe()
        for name in self.shadows:
            self.get_shadow(name)
        if self.facts:
            self.report("", self.facts)
        self.start_next_job()
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            if max_jobs and self.jobs_done >= max_jobs and self.updates_in_flight == 0 and self.events.empty():
                return True
            try:
                kind, name, event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(kind, name, event)
        return not max_jobs


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env("IOTCLOUD_MQTT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("IOTCLOUD_MQTT_PORT", "1884")))
    parser.add_argument("--tenant", default=env("IOTCLOUD_TENANT"))
    parser.add_argument("--device", default=env("IOTCLOUD_DEVICE"))
    parser.add_argument("--token", default=env("IOTCLOUD_DEVICE_TOKEN"), help="the device's provision token")
    parser.add_argument("--demo", metavar="DEVICE", help=f"a demo device: tenant and token from {DEMO_FILE}")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (server certificate only)")
    parser.add_argument("--ca-file", help="CA certificate(s) to trust for --tls (default: the system's)")
    parser.add_argument("--shadow", action="append", default=[], help="also follow this named shadow (repeatable)")
    parser.add_argument("--report", default='{"sdk": "aws-iot-device-sdk-python-v2", "firmware": "1.0.0"}',
                        help="JSON object reported once at start (a partial report)")  # fmt: skip
    parser.add_argument("--job-seconds", type=float, default=1.0, help="how long a job's work takes")
    parser.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs succeeded")
    parser.add_argument("--seconds", type=float, default=0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    if args.demo:
        saved = json.loads(DEMO_FILE.read_text())
        args.tenant, args.device, args.token = saved["tenant"], args.demo, saved["devices"][args.demo]
    if not (args.tenant and args.device and args.token):
        parser.error("give --tenant, --device and --token (or --demo DEVICE)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    thing = f"{args.tenant}:{args.device}"  # iotcloud's thing name
    connection = connect(args)
    connection.connect().result(TIMEOUT)
    print(f"connected to {args.host}:{args.port} as {args.tenant}/{args.device}, thing {thing}", flush=True)
    device = Device(connection, thing, ["", *args.shadow], json.loads(args.report), args.job_seconds)
    try:
        done = device.run(args.max_jobs, args.seconds)
    except KeyboardInterrupt:
        done = True
    finally:
        connection.disconnect().result(TIMEOUT)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
