"""The device ACL rule (mqtt_bridge/accounts/acl.py) on its own: MQTT matching and the client id binding."""

import pytest

from mqtt_bridge.accounts import acl


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("a/b/#", "a/b", True),  # `#` also matches the parent level
        ("a/b/#", "a/b/c/d", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/x/c", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(pattern, topic, matches):
    assert acl.topic_matches(pattern, topic) is matches


@pytest.mark.parametrize(
    ("topic_filter", "within"),
    [
        ("t/a/#", True),
        ("t/a", True),
        ("t/a/+/x", True),
        ("t/+/x", False),  # reaches t/b/x
        ("t/#", False),
        ("#", False),
        ("t", False),
    ],
)
def test_filter_within_a_device_prefix(topic_filter, within):
    assert acl.filter_within(topic_filter, "t/a/#") is within


@pytest.mark.parametrize("bad", ["", "a/\x00", "a/b#", "a/#/b", "a/+b", "a/\ud800", "x" * 70_000])
def test_malformed_filters_are_never_valid(bad):
    assert not acl.valid_filter(bad)


def test_topic_names_have_no_wildcards():
    assert acl.valid_topic("a/b") and not acl.valid_topic("a/+") and not acl.valid_topic("a/#")


def test_a_device_is_bound_to_its_own_client_id():
    login = acl.parse_username("acme/pump-7")
    assert acl.device_client_id("acme", "pump-7") == "acme/pump-7"
    assert acl.client_id_allowed(login, "acme/pump-7")
    for other in ("pump-7", "acme/pump-8", "iotcloud-bridge", "", None, "acme/pump-7 "):
        assert not acl.client_id_allowed(login, other), other


def test_dynsec_acls_are_the_grants():
    entries = acl.dynsec_acls("acme", "d1")
    assert {"acltype": "publishClientSend", "topic": "tenant/acme/device/d1/shadow/reported", "allow": True} in entries
    assert {e["topic"] for e in entries} == {g.pattern for g in acl.device_grants("acme", "d1")}
    assert all(e["allow"] for e in entries)  # default-deny does the rest
