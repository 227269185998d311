"""A job's schedule, as AWS IoT Jobs' SchedulingConfig: pure rules, no database.

`{"start_time": ISO 8601, "end_time": ISO 8601, "end_behavior": "STOP_ROLLOUT" | "CANCEL" |
"FORCE_CANCEL", "maintenance_windows": [{"cron": "0 2 * * *", "duration_minutes": 120}],
"timezone": "Europe/Paris"}`, every field optional:
- before start_time the job is SCHEDULED and releases nothing;
- at end_time: STOP_ROLLOUT cancels what is not released yet (released executions run on),
  CANCEL cancels the job, FORCE_CANCEL cancels it with its in-progress executions;
- with maintenance windows, executions are released only inside one: each starts at an occurrence
  of its cron expression (minute hour day month weekday, in `timezone`, UTC by default) and lasts
  duration_minutes. A rollout's allowance does not accrue outside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.utils.dateparse import parse_datetime

from iotcloud.errors import InvalidInput
from iotcloud.rules import is_integer

END_BEHAVIORS = ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL")
UTC_ZONE = ZoneInfo("UTC")
MAX_WINDOWS = 10
MAX_WINDOW_MINUTES = 7 * 24 * 60  # a week


@dataclass(frozen=True)
class Window:
    cron: str
    duration: timedelta

    def contains(self, moment: datetime, zone: ZoneInfo) -> bool:
        local = moment.astimezone(zone)
        # The latest start at or before `moment` (a start exactly now counts: croniter's get_prev is strict).
        last = croniter(self.cron, local + timedelta(seconds=1)).get_prev(datetime)
        return local < last + self.duration


@dataclass(frozen=True)
class Schedule:
    start: datetime | None = None
    end: datetime | None = None
    end_behavior: str = "STOP_ROLLOUT"
    windows: tuple[Window, ...] = ()
    zone: ZoneInfo = UTC_ZONE

    def started(self, now: datetime) -> bool:
        return self.start is None or now >= self.start

    def ended(self, now: datetime) -> bool:
        return self.end is not None and now >= self.end

    def open(self, now: datetime) -> bool:
        """May executions be released now (started, not ended, inside a maintenance window if any)?"""
        if not self.started(now) or self.ended(now):
            return False
        return not self.windows or any(w.contains(now, self.zone) for w in self.windows)


def parse_schedule(config, *, now: datetime | None = None) -> Schedule | None:
    """The job's `scheduling` field (None or {}: none); InvalidInput naming the field otherwise. With
    `now` (a job being created), start and end must not be in the past."""
    if config is None or config == {}:
        return None
    if not isinstance(config, dict):
        raise _bad("scheduling", "must be an object")
    unknown = sorted(config.keys() - {"start_time", "end_time", "end_behavior", "maintenance_windows", "timezone"})
    if unknown:
        raise _bad("scheduling", f"unknown field(s) {', '.join(map(repr, unknown))}")
    zone = _zone(config.get("timezone", "UTC"))
    start, end = _moment(config, "start_time"), _moment(config, "end_time")
    if start is not None and end is not None and end <= start:
        raise _bad("scheduling.end_time", "must be after scheduling.start_time")
    if now is not None and end is not None and end <= now:
        raise _bad("scheduling.end_time", "must be in the future")
    end_behavior = config.get("end_behavior", "STOP_ROLLOUT")
    if end_behavior not in END_BEHAVIORS:
        raise _bad("scheduling.end_behavior", f"must be one of {', '.join(END_BEHAVIORS)}")
    if "end_behavior" in config and end is None:
        raise _bad("scheduling.end_behavior", "needs scheduling.end_time")
    items = config.get("maintenance_windows", [])
    if not isinstance(items, list) or len(items) > MAX_WINDOWS:
        raise _bad("scheduling.maintenance_windows", f"must be a list of at most {MAX_WINDOWS} windows")
    windows = []
    for index, item in enumerate(items):
        where = f"scheduling.maintenance_windows[{index}]"
        if not isinstance(item, dict) or item.keys() != {"cron", "duration_minutes"}:
            raise _bad(where, 'must be an object with "cron" and "duration_minutes"')
        cron = item["cron"]
        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            problem = 'must be a 5-field cron expression (minute hour day month weekday), e.g. "0 2 * * *"'
            raise _bad(f"{where}.cron", problem)
        minutes = item["duration_minutes"]
        if not is_integer(minutes) or not 1 <= minutes <= MAX_WINDOW_MINUTES:
            raise _bad(f"{where}.duration_minutes", f"must be an integer between 1 and {MAX_WINDOW_MINUTES}")
        windows.append(Window(cron, timedelta(minutes=minutes)))
    return Schedule(start, end, end_behavior, tuple(windows), zone)


def _moment(config: dict, name: str) -> datetime | None:
    value = config.get(name)
    if value is None:
        return None
    moment = parse_datetime(value) if isinstance(value, str) else None
    if moment is None:
        raise _bad(f"scheduling.{name}", 'must be an ISO 8601 date and time, e.g. "2030-01-01T02:00:00Z"')
    if moment.tzinfo is None:
        raise _bad(f"scheduling.{name}", "needs a time zone offset (e.g. Z or +01:00)")
    return moment.astimezone(UTC)


def _zone(name) -> ZoneInfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise _bad("scheduling.timezone", 'must be an IANA time zone name, e.g. "Europe/Paris"')


def _bad(name: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{name} {problem}", code="invalid_scheduling")
