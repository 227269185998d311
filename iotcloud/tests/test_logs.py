import copy
import json
import logging
import logging.config
import unicodedata

import pytest

from iotcloud.logs import JSONFormatter, one_line


def test_json_log_lines_are_parseable_and_keep_arguments():
    record = logging.LogRecord("mqtt_bridge", logging.WARNING, __file__, 1, "report rejected code=%s", ("x",), None)
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "report rejected code=x"
    assert entry["level"] == "WARNING" and entry["logger"] == "mqtt_bridge"


HOSTILE = [
    "acme-admin\n2026-01-01 12:00:00,000 INFO devices.services operator created root",  # a forged line
    "carriage\rreturn",
    "escape \x1b[2J sequences",
    "nul\x00byte",
    "zero\u200bwidth and bidi \u202e override",
    "line\u2028and paragraph\u2029separators",
    "next line \x85 and form feed \x0c and vertical tab \x0b",
    "lone \ud800 surrogate",
]


def _record(message, *args, exc_info=None):
    return logging.LogRecord("devices.services", logging.INFO, __file__, 1, message, args, exc_info)


def _exc_info(message):
    try:
        raise ValueError(message)
    except ValueError:
        import sys

        return sys.exc_info()


@pytest.mark.parametrize("value", HOSTILE)
def test_plain_log_lines_escape_control_characters(settings, value):
    # The formatter LOG_FORMAT=plain configures (a copy: dictConfig pops keys from what it is given).
    config = copy.deepcopy(settings.LOGGING["formatters"]["plain"])
    formatter = logging.config.dictConfigClass({"version": 1}).configure_formatter(config)
    line = formatter.format(_record("operator created %s", value))
    assert len(line.splitlines()) == 1
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Zl", "Zp", "Cs"} for c in line)
    assert line.encode("utf-8")  # writable (a lone surrogate would make the handler drop the record)
    assert "operator created" in line
    # A traceback is part of its record's line too, and its message is escaped like any other.
    with_traceback = formatter.format(_record("failed for %s", value, exc_info=_exc_info(value)))
    assert len(with_traceback.splitlines()) == 1
    assert "Traceback (most recent call last):\\n" in with_traceback


def test_plain_log_escapes_are_readable():
    assert one_line("a\nb\r\tc\x1bd\u200be") == "a\\nb\\r\\tc\\x1bd\\u200be"
    assert one_line("ordinary text, accents é and CJK 漢字 stay") == "ordinary text, accents é and CJK 漢字 stay"


@pytest.mark.parametrize("value", HOSTILE)
def test_json_log_lines_stay_one_valid_object(value):
    line = JSONFormatter().format(_record("operator created %s", value, exc_info=_exc_info(value)))
    assert len(line.splitlines()) == 1 and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == f"operator created {value}"
    assert value.split("\n")[0] in entry["exception"]
