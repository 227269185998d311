"""Cursor pagination (iotcloud.api.views.cursor_pagination): our cursors page, anything else is a 400."""

from base64 import b64encode
from urllib.parse import parse_qs, quote, urlsplit

import pytest

pytestmark = pytest.mark.django_db


def b64(raw: str | bytes) -> str:
    return b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


@pytest.fixture
def fleet(operator, tenant, make_device):
    """Five devices, five jobs, and a job with executions on all five devices."""
    for n in range(5):
        make_device(tenant, f"d{n}")
    for n in range(5):
        body = {"job_id": f"j{n}", "document_type": "reboot", "targets": {"device_ids": [f"d{n}"]}}
        operator.post("/customer/jobs", body, expect=201)
    body = {"job_id": "all", "document_type": "reboot", "targets": {"device_ids": [f"d{n}" for n in range(5)]}}
    operator.post("/customer/jobs", body, expect=201)


LISTS = {
    "devices": ("/customer/devices", "device_id"),
    "jobs": ("/customer/jobs", "job_id"),
    "executions": ("/customer/jobs/all/executions", "device_id"),
}

# Cursors that are malformed whatever the list.
MALFORMED = {
    "not base64": "!!!",
    "bad padding": "garbage",
    "spaces": "cD1k MA==",
    "url-safe alphabet": b64("p=d0?>").replace("+", "-").replace("/", "_"),
    "not ascii": b64(b"p=\xff\xfe"),
    "not a query string": b64("just words"),
    "unknown key": b64("x=1"),
    "repeated key": b64("p=d1&p=d2"),
    "position with NUL": b64("p=d%00x"),
    "position NUL only": b64("p=%00"),
    "position empty": b64("p="),
    "position very long": b64("p=" + "9" * 5000),
    "position non-ascii escaped": b64("p=%C3%A9"),
    "position not UTF-8 escaped": b64("p=%FF"),
    "position control character": b64("p=d%0A1"),
    "offset negative": b64("o=-1"),
    "offset huge": b64(f"o={10**30}"),
    "offset past the cutoff": b64("o=1001"),
    "offset 5000 digits": b64("o=" + "9" * 5000),
    "offset not a number": b64("o=abc"),
    "offset float": b64("o=1.0"),
    "reverse not a flag": b64("r=2"),
    "reverse not a number": b64("r=yes"),
    "huge cursor": b64("p=" + "a" * 20000),
}

# Positions of the wrong type for the list's ordering field.
WRONG_TYPE = {
    "devices": ["a b", "a/b", "#", "x" * 129, "d0+"],  # device_id: [A-Za-z0-9_.:-]{1,128}
    "jobs": [  # -created_at: an aware datetime
        "not-a-date",
        "1.5",
        str(2**63),
        "2024-01-01",
        "2024-01-01 00:00:00",
        "2024-13-01 00:00:00+00:00",
        "0001-01-01 00:00:00+05:00",
        "9999-12-31 23:59:59-05:00",
    ],
    "executions": ["abc", "1.5", "1e5", str(2**63), str(-(2**63) - 1), "9" * 100],  # id: a 64-bit integer
}


@pytest.mark.parametrize("cursor", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("name", LISTS)
def test_malformed_cursors_are_400(operator, fleet, name, cursor):
    url = f"{LISTS[name][0]}?cursor={quote(cursor, safe='')}"
    body = operator.get(url, expect=400).json()
    assert body == {"detail": "Invalid cursor", "code": "invalid_cursor"}


@pytest.mark.parametrize(
    ("name", "position"), [(name, position) for name, positions in WRONG_TYPE.items() for position in positions]
)
@pytest.mark.parametrize("reverse", ["0", "1"])
def test_positions_of_the_wrong_type_are_400(operator, fleet, name, position, reverse):
    cursor = b64(f"r={reverse}&p={quote(position)}")
    body = operator.get(f"{LISTS[name][0]}?cursor={quote(cursor, safe='')}", expect=400).json()
    assert body == {"detail": "Invalid cursor", "code": "invalid_cursor"}


@pytest.mark.parametrize("name", LISTS)
def test_a_position_that_no_row_has_is_still_a_valid_cursor(operator, fleet, name):
    position = {"devices": "d2x", "jobs": "2001-02-03 04:05:06.000007+00:00", "executions": "1"}[name]
    url = f"{LISTS[name][0]}?cursor={quote(b64('p=' + quote(position)), safe='')}"
    operator.get(url, expect=200)


def walk(operator, url, key, direction):
    seen = []
    while url:
        page = operator.get(url, expect=200).json()
        seen.append([row[key] for row in page["results"]])
        url = page[direction]
    return seen


@pytest.mark.parametrize("name", LISTS)
def test_cursors_we_issue_page_forward_and_back(operator, fleet, name):
    path, key = LISTS[name]
    forward = walk(operator, f"{path}?page_size=2", key, "next")
    assert [len(page) for page in forward] == ([2, 2, 2] if name == "jobs" else [2, 2, 1])
    everything = [row for page in forward for row in page]
    assert len(set(everything)) == len(everything)

    # From the last page back to the first, through `previous` cursors.
    last_url = f"{path}?page_size=2"
    for _ in forward[:-1]:
        last_url = operator.get(last_url, expect=200).json()["next"]
    backward = walk(operator, last_url, key, "previous")
    assert backward == list(reversed(forward))
    cursor = parse_qs(urlsplit(last_url).query)["cursor"][0]
    assert operator.get(f"{path}?page_size=2&cursor={quote(cursor, safe='')}", expect=200)
