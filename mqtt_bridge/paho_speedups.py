"""paho-mqtt 2.2 without two per-message costs of its own (installed by mqtt_bridge.client).

1. MQTT 5 `Properties`.

paho builds every `Properties` (one per PUBLISH received, and per PUBACK and SUBACK) by filling two
dictionaries of about 30 entries, and `clear()` (run by every unpack) and `isEmpty()` walk one of
them calling `str.replace` on each name. In the bridge's network thread that was about 40% of the
time spent per report (py-spy, bench/mqtt_ingest). The tables never change after they are built, so
every instance can share one copy, and the walks become lookups of the precomputed names. The
behaviour is paho's own (mqtt_bridge/tests/test_paho_speedups.py compares them on the same bytes).

2. `MQTTMessageInfo` makes a `threading.Condition` for every message, received ones included, where
only a caller of `wait_for_publish` ever waits on one: about 10% of the bridge's CPU per report
(py-spy --gil, bench/mqtt_ingest). It is made when first needed instead, under one lock shared with
`_set_as_published`, so a waiter never misses its notification.

Tied to the pinned paho version (requirements.txt): `install()` refuses another.
"""

from __future__ import annotations

import threading

import paho.mqtt
from paho.mqtt.client import MQTTErrorCode, MQTTMessageInfo
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SUPPORTED_VERSION = "2.2.0"

_ORIGINAL = {name: getattr(Properties, name) for name in ("__init__", "clear", "isEmpty", "getNameFromIdent")}
_ORIGINAL_INFO = {name: MQTTMessageInfo.__dict__[name] for name in ("__init__", "_set_as_published", "_condition")}
_CONDITION_SLOT = MQTTMessageInfo.__dict__["_condition"]  # the slot's own descriptor: where the Condition lives
_conditions = threading.Lock()  # making a Condition, and publishing without one, never interleave
_installed = False


def _tables() -> tuple[list, dict, dict, tuple[str, ...], dict]:
    reference = Properties.__new__(Properties)
    _ORIGINAL["__init__"](reference, PacketTypes.PUBLISH)
    compressed = tuple(name.replace(" ", "") for name in reference.names)
    by_ident = {}
    for name, ident in reference.names.items():  # paho returns the last name for an identifier
        by_ident[ident] = name
    return reference.types, reference.names, reference.properties, compressed, by_ident


def install() -> bool:
    """Patch Properties once; False (and nothing patched) with a paho version it was not checked on."""
    global _installed
    if _installed:
        return True
    if paho.mqtt.__version__ != SUPPORTED_VERSION:
        return False
    types, names, properties, compressed, by_ident = _tables()

    def __init__(self, packetType):
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "properties", properties)

    def clear(self):
        attributes = self.__dict__
        for name in compressed:
            attributes.pop(name, None)

    def isEmpty(self):
        attributes = self.__dict__
        return not any(name in attributes for name in compressed)

    def getNameFromIdent(self, identifier):
        return by_ident.get(identifier)

    Properties.__init__ = __init__
    Properties.clear = clear
    Properties.isEmpty = isEmpty
    Properties.getNameFromIdent = getNameFromIdent
    _install_lazy_conditions()
    _installed = True
    return True


def _existing_condition(info) -> threading.Condition | None:
    try:
        return _CONDITION_SLOT.__get__(info)
    except AttributeError:
        return None


def _condition(info) -> threading.Condition:
    condition = _existing_condition(info)
    if condition is None:
        with _conditions:
            condition = _existing_condition(info)
            if condition is None:
                condition = threading.Condition()
                _CONDITION_SLOT.__set__(info, condition)
    return condition


def _install_lazy_conditions() -> None:
    def __init__(self, mid: int):
        self.mid = mid
        self._published = False
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        with _conditions:
            condition = _existing_condition(self)
            if condition is None:  # nobody waits (one who comes later sees _published first)
                self._published = True
                return
        with condition:
            self._published = True
            condition.notify()

    MQTTMessageInfo.__init__ = __init__
    MQTTMessageInfo._set_as_published = _set_as_published
    MQTTMessageInfo._condition = property(_condition, _CONDITION_SLOT.__set__)


def uninstall() -> None:
    """paho's own methods back (for the tests that compare both)."""
    global _installed
    for name, method in _ORIGINAL.items():
        setattr(Properties, name, method)
    for name, member in _ORIGINAL_INFO.items():
        setattr(MQTTMessageInfo, name, member)
    _installed = False
