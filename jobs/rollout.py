"""Rollout and abort configuration of a job, as AWS IoT Jobs has them: pure rules, no database.

A rollout releases a job's executions (makes them visible to their devices: pending lists,
notify, notify-next) at a pace instead of all at once:
- constant: `{"maximum_per_minute": n}`;
- exponential: `{"exponential": {"base_rate_per_minute": n, "increment_factor": f,
  "rate_increase_criteria": {"number_of_notified_things": k} | {"number_of_succeeded_things": k}}}`:
  the rate starts at n and is multiplied by f each time another k devices were notified (released)
  or succeeded (k, 2k, 3k, ...), capped at MAX_RATE_PER_MINUTE; `maximum_per_minute` beside it caps it.
The scheduler keeps an allowance (a token bucket: the rate accrues it every tick, each release
spends one, at most BURST_SECONDS' worth saved up), so the achieved rate follows the configured one
whatever the tick's jitter, and a scheduler that was away does not release a burst.

Abort criteria: `[{"failure_type": "FAILED" | "REJECTED" | "TIMED_OUT" | "ALL",
"threshold_percentage": p, "min_executed": m}]`, plus `"force"` beside them in the job's
`abort_config`: once at least m executions were released and p% or more of the released ones
ended in that failure type, the job is canceled (queued and unreleased executions canceled;
in-progress ones too with force).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iotcloud.errors import InvalidInput
from iotcloud.rules import is_integer

MAX_RATE_PER_MINUTE = 1_000_000  # AWS: 1 to 1,000 per minute; a self-hosted fleet goes further
MAX_INCREMENT_FACTOR = 5.0  # AWS: 1.1 to 5
BURST_SECONDS = 5.0  # an allowance never saves up more than this many seconds' worth
FAILURE_TYPES = ("FAILED", "REJECTED", "TIMED_OUT", "ALL")
CRITERIA = ("number_of_notified_things", "number_of_succeeded_things")


@dataclass(frozen=True)
class Rollout:
    base_per_minute: float
    factor: float = 1.0  # 1: constant
    criterion: str | None = None  # CRITERIA, exponential only
    every: int = 0  # the criterion's count per step
    maximum_per_minute: float | None = None

    def rate_per_minute(self, *, notified: int, succeeded: int) -> float:
        """The rate now: the base, stepped up once per `every` devices notified / succeeded."""
        rate = self.base_per_minute
        if self.criterion is not None and self.every > 0:
            count = notified if self.criterion == "number_of_notified_things" else succeeded
            steps = count // self.every
            rate = self.base_per_minute * self.factor ** min(steps, 200)  # 200 steps overflow nothing
        cap = self.maximum_per_minute if self.maximum_per_minute is not None else MAX_RATE_PER_MINUTE
        return min(rate, cap, MAX_RATE_PER_MINUTE)

    def accrue(self, allowance: float, seconds: float, *, notified: int, succeeded: int) -> float:
        """The allowance after `seconds` more of the rollout (the caller spends what it releases)."""
        rate = self.rate_per_minute(notified=notified, succeeded=succeeded) / 60.0
        return min(allowance + rate * max(0.0, seconds), max(1.0, rate * BURST_SECONDS))


def parse_rollout(config) -> Rollout | None:
    """The job's `rollout` field (None or {}: every execution released at once); InvalidInput naming
    the field otherwise."""
    if config is None or config == {}:
        return None
    if not isinstance(config, dict):
        raise _bad("rollout", "must be an object")
    unknown = sorted(config.keys() - {"maximum_per_minute", "exponential"})
    if unknown:
        raise _bad("rollout", f"unknown field(s) {', '.join(map(repr, unknown))}")
    maximum = None
    if "maximum_per_minute" in config:
        maximum = _integer(config["maximum_per_minute"], "rollout.maximum_per_minute", 1, MAX_RATE_PER_MINUTE)
    exponential = config.get("exponential")
    if exponential is None:
        if maximum is None:
            raise _bad("rollout", 'needs "maximum_per_minute" or "exponential"')
        return Rollout(base_per_minute=maximum, maximum_per_minute=maximum)
    if not isinstance(exponential, dict):
        raise _bad("rollout.exponential", "must be an object")
    unknown = sorted(exponential.keys() - {"base_rate_per_minute", "increment_factor", "rate_increase_criteria"})
    if unknown:
        raise _bad("rollout.exponential", f"unknown field(s) {', '.join(map(repr, unknown))}")
    for name in ("base_rate_per_minute", "increment_factor", "rate_increase_criteria"):
        if name not in exponential:
            raise _bad(f"rollout.exponential.{name}", "is required")
    base = _integer(exponential["base_rate_per_minute"], "rollout.exponential.base_rate_per_minute", 1,
                    MAX_RATE_PER_MINUTE)  # fmt: skip
    factor = exponential["increment_factor"]
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise _bad("rollout.exponential.increment_factor", "must be a number")
    if not 1.1 <= factor <= MAX_INCREMENT_FACTOR:
        raise _bad("rollout.exponential.increment_factor", f"must be between 1.1 and {MAX_INCREMENT_FACTOR:g}")
    criteria = exponential["rate_increase_criteria"]
    if not isinstance(criteria, dict) or len(criteria) != 1 or next(iter(criteria)) not in CRITERIA:
        raise _bad(
            "rollout.exponential.rate_increase_criteria",
            f"must be an object with exactly one of {', '.join(CRITERIA)}",
        )
    ((criterion, every),) = criteria.items()
    every = _integer(every, f"rollout.exponential.rate_increase_criteria.{criterion}", 1, 1_000_000_000)
    if maximum is not None and maximum < base:
        raise _bad("rollout.maximum_per_minute", "must not be below exponential.base_rate_per_minute")
    return Rollout(base_per_minute=base, factor=float(factor), criterion=criterion, every=every,
                   maximum_per_minute=maximum)  # fmt: skip


@dataclass(frozen=True)
class AbortCriterion:
    failure_type: str
    threshold_percentage: float
    min_executed: int

    def trips(self, *, released: int, failures: dict[str, int]) -> bool:
        if released < max(1, self.min_executed):
            return False
        types = ("FAILED", "REJECTED", "TIMED_OUT") if self.failure_type == "ALL" else (self.failure_type,)
        failed = sum(failures.get(t, 0) for t in types)
        return failed * 100.0 >= self.threshold_percentage * released

    def describe(self, *, released: int, failures: dict[str, int]) -> str:
        types = ("FAILED", "REJECTED", "TIMED_OUT") if self.failure_type == "ALL" else (self.failure_type,)
        failed = sum(failures.get(t, 0) for t in types)
        return (
            f"abort criterion tripped: {failed} of {released} released executions "
            f"{'failed (FAILED, REJECTED or TIMED_OUT)' if self.failure_type == 'ALL' else self.failure_type} "
            f"({failed * 100.0 / released:.1f}% >= {self.threshold_percentage:g}%, at least {self.min_executed} "
            f"executed)"
        )


@dataclass(frozen=True)
class Abort:
    criteria: tuple[AbortCriterion, ...]
    force: bool = False

    def tripped(self, *, released: int, failures: dict[str, int]) -> AbortCriterion | None:
        return next((c for c in self.criteria if c.trips(released=released, failures=failures)), None)


def parse_abort(config) -> Abort | None:
    """The job's `abort_config`: {"criteria": [...], "force": bool} (None or {}: no abort)."""
    if config is None or config == {}:
        return None
    if not isinstance(config, dict):
        raise _bad("abort_config", "must be an object")
    unknown = sorted(config.keys() - {"criteria", "force"})
    if unknown:
        raise _bad("abort_config", f"unknown field(s) {', '.join(map(repr, unknown))}")
    force = config.get("force", False)
    if not isinstance(force, bool):
        raise _bad("abort_config.force", "must be true or false")
    items = config.get("criteria")
    if not isinstance(items, list) or not 1 <= len(items) <= len(FAILURE_TYPES):
        raise _bad("abort_config.criteria", f"must be a list of 1 to {len(FAILURE_TYPES)} criteria")
    criteria, seen = [], set()
    for index, item in enumerate(items):
        where = f"abort_config.criteria[{index}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        unknown = sorted(item.keys() - {"failure_type", "threshold_percentage", "min_executed"})
        if unknown:
            raise _bad(where, f"unknown field(s) {', '.join(map(repr, unknown))}")
        failure_type = item.get("failure_type")
        if failure_type not in FAILURE_TYPES:
            raise _bad(f"{where}.failure_type", f"must be one of {', '.join(FAILURE_TYPES)}")
        if failure_type in seen:
            raise _bad(f"{where}.failure_type", f"{failure_type} is given twice")
        seen.add(failure_type)
        threshold = item.get("threshold_percentage")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise _bad(f"{where}.threshold_percentage", "must be a number")
        if not 0 < threshold <= 100:
            raise _bad(f"{where}.threshold_percentage", "must be above 0 and at most 100")
        min_executed = _integer(item.get("min_executed"), f"{where}.min_executed", 1, 1_000_000_000)
        criteria.append(AbortCriterion(failure_type, float(threshold), min_executed))
    return Abort(tuple(criteria), force=force)


def _integer(value, name: str, low: int, high: int) -> int:
    if not is_integer(value):
        raise _bad(name, "must be an integer")
    if not low <= value <= high:
        raise _bad(name, f"must be between {low:,} and {high:,}")
    return value


def _bad(name: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{name} {problem}", code="invalid_rollout" if name.startswith("rollout") else "invalid_abort")
