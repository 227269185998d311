"""Provisioning, rotation and decommission hand broker-account changes to the bridge (MQTT_DEVICE_AUTH=dynsec)."""

import pytest

from devices.models import Device
from devices.services import device_decommission, device_provision, device_rotate_token
from iotcloud.sealing import unseal


@pytest.fixture
def dynsec(settings):
    settings.MQTT_DEVICE_AUTH = "dynsec"


def test_each_change_advances_the_account_and_carries_the_token_encrypted(tenant, dynsec):
    device, token = device_provision(tenant=tenant, device_id="pump-1")
    row = Device.objects.get(pk=device.pk)
    assert (row.broker_account_version, row.broker_synced_version) == (1, 0)
    assert token not in row.broker_secret and unseal(row.broker_secret) == token

    new = device_rotate_token(device=device)
    row = Device.objects.get(pk=device.pk)
    assert row.broker_account_version == 2 and unseal(row.broker_secret) == new

    device_decommission(device=device)
    row = Device.objects.get(pk=device.pk)
    assert row.broker_account_version == 3 and row.broker_secret == ""  # delete: no token travels


def test_a_token_sealed_under_another_key_cannot_be_read(tenant, dynsec, settings):
    device, _ = device_provision(tenant=tenant, device_id="pump-1")
    settings.BROKER_CREDENTIALS_KEY = "a-different-key"
    assert unseal(Device.objects.get(pk=device.pk).broker_secret) is None
    assert unseal("not even a token") is None


def test_nothing_is_kept_when_iotcloud_does_not_manage_broker_accounts(tenant, settings):
    settings.MQTT_DEVICE_AUTH = ""
    device, _ = device_provision(tenant=tenant, device_id="pump-1")
    device_rotate_token(device=device)
    row = Device.objects.get(pk=device.pk)
    assert (row.broker_account_version, row.broker_secret) == (0, "")
