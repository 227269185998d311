import json
import logging

from iotcloud.logs import JSONFormatter


def test_json_log_lines_are_parseable_and_keep_arguments():
    record = logging.LogRecord("mqtt_bridge", logging.WARNING, __file__, 1, "report rejected code=%s", ("x",), None)
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "report rejected code=x"
    assert entry["level"] == "WARNING" and entry["logger"] == "mqtt_bridge"
