"""Log formatting: plain text for people, one JSON object per line for log pipelines (LOG_FORMAT=json).

Whatever a record carries (a username, a device id, a user agent, an exception message), it is
written as exactly one line: the plain format escapes control and format characters (newline,
carriage return, ESC, NUL, zero-width and bidi marks, line and paragraph separators, lone
surrogates), so nobody can forge a log line or hide text from whoever reads the log; the JSON
format escapes them as JSON does (ensure_ascii).
"""

import json
import logging
import unicodedata
from datetime import UTC, datetime

# Cc: C0/C1 controls (\n \r \t ESC NUL \x85...), Cf: format (zero-width, bidi overrides, BOM),
# Zl/Zp: U+2028/U+2029 (line breaks to many viewers), Cs: lone surrogates (cannot be encoded).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def one_line(text: str) -> str:
    """`text` with every control/format character escaped (\\n, \\x1b, \\u200b...): always one line."""
    if text.isprintable():  # the common case: nothing to escape (isprintable is False for all of the above)
        return text
    return "".join(_escape_char(char) if unicodedata.category(char) in _UNSAFE_CATEGORIES else char for char in text)


class PlainFormatter(logging.Formatter):
    """The standard text format, one line per record (a traceback too: its line breaks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) escapes every control character, U+2028/U+2029 and lone surrogates.
        return json.dumps(entry, default=str, ensure_ascii=True)
