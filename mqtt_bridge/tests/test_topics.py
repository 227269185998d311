import pytest

from mqtt_bridge import topics


def test_builders():
    assert topics.desired("acme", "d1") == "tenant/acme/device/d1/shadow/desired"
    assert topics.reported("acme", "d1") == "tenant/acme/device/d1/shadow/reported"
    assert topics.reported_rejected("acme", "d1") == "tenant/acme/device/d1/shadow/reported/rejected"
    assert topics.jobs_notify("acme", "d1") == "tenant/acme/device/d1/jobs/notify"


def test_parse_reported_round_trips():
    assert topics.parse_reported(topics.reported("acme", "a.b:c-d_e")) == ("acme", "a.b:c-d_e")


@pytest.mark.parametrize(
    "topic",
    [
        "tenant/acme/device/d1/shadow/desired",
        "tenant/acme/device/d1/shadow/reported/extra",
        "tenant/acme/device/d1/extra/shadow/reported",
        "tenant/acme/device//shadow/reported",
        "tenant/acme/device/+/shadow/reported",
        "/tenant/acme/device/d1/shadow/reported",
        "tenant/acme/devices/d1/shadow/reported",
        "tenant/acme/device/d1/shadow/reported\n",
    ],
)
def test_parse_reported_refuses_other_topics(topic):
    assert topics.parse_reported(topic) is None


def test_shared_subscription():
    assert topics.subscription(topics.REPORTED_FILTER) == "tenant/+/device/+/shadow/reported"
    assert (
        topics.subscription(topics.REPORTED_FILTER, "iotcloud") == "$share/iotcloud/tenant/+/device/+/shadow/reported"
    )


def test_shared_filters_split_into_group_and_filter():
    assert topics.split_shared("$share/iotcloud/tenant/+/device/+/shadow/reported") == (
        "iotcloud", "tenant/+/device/+/shadow/reported",
    )  # fmt: skip
    for malformed in ("$share/", "$share/g", "$share//x", "$share/g+/x", "$share/#/x"):
        assert topics.split_shared(malformed) is None, malformed
        assert topics.is_shared(malformed)
    assert topics.split_shared("tenant/a/device/b/#") is None and not topics.is_shared("tenant/a/device/b/#")
    assert topics.dynsec_response("$CONTROL/dynamic-security/v1") == "$CONTROL/dynamic-security/v1/response"
