"""paho-mqtt 2.2's MQTT 5 `Properties` without their per-packet cost (installed by mqtt_bridge.client).

paho builds every `Properties` (one per PUBLISH received, and per PUBACK and SUBACK) by filling two
dictionaries of about 30 entries, and `clear()` (run by every unpack) and `isEmpty()` walk one of
them calling `str.replace` on each name. In the bridge's network thread that was about 40% of the
time spent per report (py-spy, bench/mqtt_ingest). The tables never change after they are built, so
every instance can share one copy, and the walks become lookups of the precomputed names. The
behaviour is paho's own (mqtt_bridge/tests/test_paho_speedups.py compares them on the same bytes).
Tied to the pinned paho version (requirements.txt): `install()` refuses another.
"""

from __future__ import annotations

import paho.mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SUPPORTED_VERSION = "2.2.0"

_ORIGINAL = {name: getattr(Properties, name) for name in ("__init__", "clear", "isEmpty", "getNameFromIdent")}
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
    _installed = True
    return True


def uninstall() -> None:
    """paho's own methods back (for the tests that compare both)."""
    global _installed
    for name, method in _ORIGINAL.items():
        setattr(Properties, name, method)
    _installed = False
