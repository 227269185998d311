"""A job's retry configuration, as AWS IoT Jobs' jobExecutionsRetryConfig: pure rules, no database.

`{"criteria": [{"failure_type": "FAILED" | "TIMED_OUT" | "ALL", "number_of_retries": n}]}`: an
execution that ends FAILED (the device said so) or TIMED_OUT (the platform's timers) is queued
again, as a new attempt, while retries of that type are left: FAILED and TIMED_OUT count
separately, ALL counts both together (and cannot be combined with the others). At most
MAX_RETRIES retries per device in all, as AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

from iotcloud.errors import InvalidInput
from iotcloud.rules import is_integer
from jobs.choices import DESIRED_PATCH

MAX_RETRIES = 10
FAILURE_TYPES = ("FAILED", "TIMED_OUT", "ALL")


@dataclass(frozen=True)
class Retry:
    failed: int = 0
    timed_out: int = 0
    any: int | None = None  # ALL: both types together

    def allows(self, failure: str, *, failed_used: int, timed_out_used: int) -> bool:
        """May an execution that just ended `failure` (FAILED / TIMED_OUT) be retried?"""
        if self.any is not None:
            return failed_used + timed_out_used < self.any
        if failure == "FAILED":
            return failed_used < self.failed
        return timed_out_used < self.timed_out


def parse_retry(config) -> Retry | None:
    """The job's `retry_config` (None or {}: no retries); InvalidInput naming the field otherwise."""
    if config is None or config == {}:
        return None
    if not isinstance(config, dict) or config.keys() != {"criteria"}:
        raise _bad("retry_config", 'must be an object with "criteria"')
    items = config["criteria"]
    if not isinstance(items, list) or not 1 <= len(items) <= 2:
        raise _bad("retry_config.criteria", "must be a list of 1 or 2 criteria")
    numbers: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"retry_config.criteria[{index}]"
        if not isinstance(item, dict) or item.keys() != {"failure_type", "number_of_retries"}:
            raise _bad(where, 'must be an object with "failure_type" and "number_of_retries"')
        failure_type = item["failure_type"]
        if failure_type not in FAILURE_TYPES:
            raise _bad(f"{where}.failure_type", f"must be one of {', '.join(FAILURE_TYPES)}")
        if failure_type in numbers:
            raise _bad(f"{where}.failure_type", f"{failure_type} is given twice")
        number = item["number_of_retries"]
        if not is_integer(number) or not 0 <= number <= MAX_RETRIES:
            raise _bad(f"{where}.number_of_retries", f"must be an integer between 0 and {MAX_RETRIES}")
        numbers[failure_type] = number
    if "ALL" in numbers and len(numbers) > 1:
        raise _bad("retry_config.criteria", "ALL cannot be combined with FAILED or TIMED_OUT")
    if sum(numbers.values()) > MAX_RETRIES:
        raise _bad("retry_config.criteria", f"at most {MAX_RETRIES} retries in all")
    if "ALL" in numbers:
        return Retry(any=numbers["ALL"])
    return Retry(failed=numbers.get("FAILED", 0), timed_out=numbers.get("TIMED_OUT", 0))


def parse_retry_for(document_type: str, config) -> Retry | None:
    """parse_retry, and no retries for a desired-state job: the platform runs it, its patch stays in the
    twin after a timeout (a retry would only wait again: that is a longer timeout)."""
    retry = parse_retry(config)
    if retry is not None and document_type == DESIRED_PATCH:
        raise _bad("retry_config", "does not apply to a desired-state job: its patch stays in the twin after a "
                   "timeout; give a longer in_progress_timeout_seconds to wait longer")  # fmt: skip
    return retry


def _bad(name: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{name} {problem}", code="invalid_retry")
