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


# --- MQTTMessageInfo's Condition, made only when someone waits -------------------------------------


def test_a_received_message_makes_no_condition():
    from paho.mqtt.client import MQTTMessage

    message = MQTTMessage(7, b"tenant/t/device/d/shadow/reported")
    assert paho_speedups._existing_condition(message.info) is None
    assert message.info.mid == 7 and not message.info.is_published()


def test_waiting_for_a_publish_wakes_when_it_is_acknowledged():
    import threading

    from paho.mqtt.client import MQTTMessageInfo

    info = MQTTMessageInfo(3)
    woke = threading.Event()

    def wait():
        info.wait_for_publish()  # no timeout: a lost notification would hang here
        woke.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    threading.Event().wait(0.05)
    info._set_as_published()
    assert woke.wait(5) and info.is_published()

    already = MQTTMessageInfo(4)
    already._set_as_published()  # acknowledged before anyone waited: no Condition was made
    assert paho_speedups._existing_condition(already) is None
    already.wait_for_publish(timeout=1)
    assert already.is_published()


def test_no_waiter_misses_its_acknowledgement_under_races():
    import threading

    from paho.mqtt.client import MQTTMessageInfo

    infos = [MQTTMessageInfo(n) for n in range(400)]
    done = []
    waiters = [threading.Thread(target=lambda i=i: (i.wait_for_publish(), done.append(i.mid)), daemon=True)
               for i in infos]  # fmt: skip
    setter = threading.Thread(target=lambda: [i._set_as_published() for i in infos], daemon=True)
    for thread in [*waiters[::2], setter, *waiters[1::2]]:
        thread.start()
    for thread in [*waiters, setter]:
        thread.join(10)
    assert sorted(done) == list(range(400))
