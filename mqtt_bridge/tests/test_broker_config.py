"""The project's Mosquitto configuration, run by a real Mosquitto: what it lets a client send."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mqtt_bridge.config import BrokerSettings
from mqtt_bridge.tests.conftest import ROOT, MqttClient, _port_open, free_port, wait_until

CONFS = [ROOT / "mqtt_bridge" / "mosquitto.conf", ROOT / "mqtt_bridge" / "mosquitto-dynsec.conf"]


def _setting(conf: Path, name: str) -> str | None:
    match = re.search(rf"^{name} (\S+)$", conf.read_text(), flags=re.M)
    return match[1] if match else None


def test_both_configurations_limit_the_packet_size_alike():
    sizes = {conf.name: _setting(conf, "max_packet_size") for conf in CONFS}
    assert len(set(sizes.values())) == 1 and None not in sizes.values(), sizes


@pytest.fixture
def project_mosquitto(tmp_path):
    if not shutil.which("mosquitto"):
        pytest.skip("needs the mosquitto binary (apt-get install mosquitto)")
    port = free_port()
    conf = CONFS[0].read_text().replace("/mosquitto/data/", f"{tmp_path}/")
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf += f"\nuser {getpass.getuser()}\nlog_dest stderr\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    process = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _port_open(port), message="mosquitto to listen")
        yield BrokerSettings(host="127.0.0.1", port=port)
    finally:
        process.terminate()
        process.wait(10)


def test_a_client_cannot_park_a_large_retained_message(project_mosquitto):
    """The review found a device could keep 1 MiB retained on the broker; now nothing over the
    limit is accepted (the sender is disconnected) while the platform's largest message fits."""
    limit = int(_setting(CONFS[0], "max_packet_size"))
    parker = MqttClient(project_mosquitto, client_id="parker")
    parker.client.publish("tenant/acme/device/d1/shadow/reported", b"x" * (1024 * 1024), qos=1, retain=True)
    wait_until(lambda: not parker.client.is_connected(), message="the broker to drop the sender")
    parker.close()

    fits = MqttClient(project_mosquitto, client_id="platform")
    fits.publish("tenant/acme/device/d1/jobs/notify", b"j" * (limit - 1024), retain=True)
    watcher = MqttClient(project_mosquitto, client_id="watcher").subscribe("tenant/acme/device/d1/#")
    got = {m.topic: len(m.payload) for m in watcher.collect(quiet=1.0)}
    assert got == {"tenant/acme/device/d1/jobs/notify": limit - 1024}  # the big one was never kept
    fits.close()
    watcher.close()
