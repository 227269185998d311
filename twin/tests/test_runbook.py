"""The original verification runbook (seeds/001), end to end over HTTP."""

import pytest

from iotcloud.testing import device_client


def runbook(operator, device):
    twin = f"/customer/devices/{device.device_id}/twin"
    body = operator.patch(
        f"{twin}/desired", {"desired": {"reporting_interval_s": 30, "alert_temp_threshold": 45}}, expect=200
    ).json()
    assert body["desired_version"] == 1

    dev = device_client(device)
    pulled = dev.get("/device/v1/shadow", expect=200).json()
    assert pulled == {"desired": {"reporting_interval_s": 30, "alert_temp_threshold": 45}, "version": 1}

    ack = dev.post(
        "/device/v1/shadow/reported",
        {"reported": {"reporting_interval_s": 30, "alert_temp_threshold": 45}, "version": 1},
        expect=200,
    ).json()
    assert ack == {"accepted": True, "version": 1}

    body = operator.get(twin, expect=200).json()
    assert (body["sync_status"], body["reported_version"]) == ("synced", 1)

    operator.patch(f"{twin}/desired", {"desired": {"reporting_interval_s": 60}}, expect=200)
    delta = operator.get(f"{twin}/delta", expect=200).json()
    assert delta["delta"] == {"reporting_interval_s": 60}
    assert delta["in_sync"] is False


@pytest.mark.postgres
def test_runbook_on_postgres(postgres_only, operator, device):
    runbook(operator, device)


@pytest.mark.django_db
def test_runbook_on_any_database(operator, device):
    runbook(operator, device)
