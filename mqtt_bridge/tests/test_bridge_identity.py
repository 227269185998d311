"""The bridge's own MQTT client id: stable across restarts (its persistent session), never guessable."""

from __future__ import annotations

import runpy
import socket

import pytest

from mqtt_bridge.tests.conftest import ROOT


@pytest.fixture
def client_id(monkeypatch):
    def read(**env) -> str:
        for name in ("MQTT_CLIENT_ID", "MQTT_SHARED_GROUP", "SECRET_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(ROOT / "iotcloud" / "settings.py"))["MQTT_CLIENT_ID"]

    return read


def test_the_default_client_id_is_per_host_stable_and_not_guessable(client_id):
    """The review's finding 1: the default was `iotcloud-bridge`, shown to anyone by /readyz."""
    one, again, other_key = (
        client_id(SECRET_KEY="k" * 50),
        client_id(SECRET_KEY="k" * 50),
        client_id(SECRET_KEY="j" * 50),
    )
    assert one == again  # a restart resumes the same persistent session
    assert one.startswith(f"iotcloud-bridge-{socket.gethostname()}-") and one != other_key
    suffix = one.rsplit("-", 1)[1]
    assert len(suffix) == 16 and "k" * 8 not in one
    assert client_id(SECRET_KEY="k" * 50, MQTT_SHARED_GROUP="iotcloud") == one
    assert client_id(SECRET_KEY="k" * 50, MQTT_CLIENT_ID="bridge-a") == "bridge-a"  # set explicitly: as given
