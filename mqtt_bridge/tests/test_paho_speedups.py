"""The patched paho Properties behave as paho's own on the same bytes (mqtt_bridge.paho_speedups)."""

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from mqtt_bridge import paho_speedups


@pytest.fixture
def original():
    paho_speedups.uninstall()
    yield
    assert paho_speedups.install()


def _publish_properties() -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.PayloadFormatIndicator = 1
    properties.MessageExpiryInterval = 3600
    properties.ContentType = "application/json"
    properties.ResponseTopic = "tenant/t/device/d/answers"
    properties.CorrelationData = b"\x00\x01corr"
    properties.UserProperty = [("a", "1"), ("b", "2")]
    return properties


def _decoded(packed: bytes, packet_type=PacketTypes.PUBLISH) -> tuple[dict, str, bool]:
    properties = Properties(packet_type)
    properties.unpack(packed)
    return properties.json(), str(properties), properties.isEmpty()


def _paho_own(function, *args):
    paho_speedups.uninstall()
    try:
        return function(*args)
    finally:
        assert paho_speedups.install()


def test_the_patch_is_installed_by_the_bridge_client():
    import mqtt_bridge.client  # noqa: F401  (installs it)

    assert Properties.__init__ is not paho_speedups._ORIGINAL["__init__"]


def test_decoding_gives_what_paho_gives():
    packed = _paho_own(lambda: _publish_properties().pack())
    assert _decoded(packed) == _paho_own(_decoded, packed)
    fields, _, empty = _decoded(packed)
    assert fields["UserProperty"] == [("a", "1"), ("b", "2")] and fields["MessageExpiryInterval"] == 3600
    assert not empty


def test_encoding_gives_the_same_bytes():
    assert _publish_properties().pack() == _paho_own(lambda: _publish_properties().pack())


def test_empty_properties_and_reuse_after_clear():
    empty = Properties(PacketTypes.PUBACK)
    assert empty.isEmpty() and empty.pack() == b"\x00"
    reused = _publish_properties()
    reused.unpack(b"\x00")  # unpack starts with clear()
    assert reused.isEmpty() and reused.json() == {}


def test_instances_do_not_share_their_values():
    first, second = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    first.ContentType = "text/plain"
    assert not hasattr(second, "ContentType") and second.isEmpty()


def test_paho_checks_still_apply():
    properties = Properties(PacketTypes.PUBLISH)
    with pytest.raises(MQTTException):
        properties.ReceiveMaximum = 10  # a CONNECT property, not a PUBLISH one
    once = b"\x03\x00\x01a"  # ContentType (identifier 3), the UTF-8 string "a"
    assert _decoded(bytes([len(once)]) + once)[0] == {"ContentType": "a"}
    with pytest.raises(MQTTException):  # a property that may not repeat, twice
        _decoded(bytes([2 * len(once)]) + once + once)


@pytest.mark.parametrize("packet_type", [PacketTypes.CONNACK, PacketTypes.SUBACK, PacketTypes.PUBACK])
def test_every_packet_type_sees_paho_tables(packet_type, original):
    paho_tables = Properties(packet_type)
    assert paho_speedups.install()
    patched = Properties(packet_type)
    assert (patched.names, patched.properties, patched.types) == (
        paho_tables.names, paho_tables.properties, paho_tables.types,
    )  # fmt: skip
    assert patched.getNameFromIdent(38) == "User Property" and patched.getNameFromIdent(99) is None
