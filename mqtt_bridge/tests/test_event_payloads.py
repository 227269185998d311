"""Shadow event messages are the same bytes whether their JSON comes from the insert or is encoded again."""

import json
from datetime import UTC, datetime

import pytest

from mqtt_bridge.delivery import shadow_event_publications
from twin.engine import LeasedEvent, _encoded, _recordset

DOCUMENTS = {
    "previous": {"state": {"desired": {"led": "off"}, "reported": {}}, "metadata": {}, "version": 1},
    "current": {"state": {"desired": {"led": "on"}, "reported": {"name": "Zürich ☃"}},
                "metadata": {"desired": {"led": {"timestamp": 1}}}, "version": 2},
}  # fmt: skip
DELTA = {"state": {"led": "on"}, "metadata": {"led": {"timestamp": 1}}, "version": 2}


def event(*, delta, token, encoded=None):
    created = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    return LeasedEvent(7, "acme", "pump-1", 11, "", DOCUMENTS, delta, token, created, encoded)


@pytest.mark.parametrize(("delta", "token"), [(DELTA, "tok-1"), (None, ""), (DELTA, ""), (None, 'a"b')])
def test_pre_encoded_events_publish_the_same_bytes(delta, token):
    record = {"device_id": 11, "shadow_name": "", "documents": DOCUMENTS, "delta": delta, "client_token": token}
    encoded = _encoded(record)
    plain = shadow_event_publications(event(delta=delta, token=token))
    spliced = shadow_event_publications(event(delta=delta, token=token, encoded=encoded))
    assert [(p.topic, p.payload) for p in spliced] == [(p.topic, p.payload) for p in plain]
    body = json.loads(spliced[0].payload)
    assert body["timestamp"] == 1796126400 and body["current"]["state"]["reported"]["name"] == "Zürich ☃"
    assert ("clientToken" in body) == bool(token)


def test_the_recordset_is_the_events_as_json():
    records = [
        {"device_id": 11, "shadow_name": "", "documents": DOCUMENTS, "delta": DELTA, "client_token": "t"},
        {"device_id": 12, "shadow_name": 'cfg"x', "documents": DOCUMENTS, "delta": None, "client_token": ""},
    ]
    assert json.loads(_recordset(records, [_encoded(r) for r in records])) == records
