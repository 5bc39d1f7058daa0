"""Time windows of routing rules: days of the week and hours, in a time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOUR = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")


@dataclass(frozen=True)
class TimeWindow:
    """When a rule applies: on ``days`` (0 = Monday) from ``start`` until ``end`` local time
    in ``timezone``. An ``end`` at or before ``start`` runs past midnight, and its day is the
    day it starts (``fri 22:00-06:00`` covers Saturday 03:00). ``24:00`` ends at midnight.

    Local time is what a wall clock in the zone shows, so the window follows daylight saving.
    """

    days: frozenset[int]
    start: time
    end: time | None  # None: 24:00
    timezone: str

    @classmethod
    def parse(cls, days: list[str], start: str, end: str, timezone: str) -> TimeWindow:
        """Build from the API's strings.

        Raises:
            ValueError: an unknown day or zone, or an hour that is not ``HH:MM``.
        """
        return cls(parse_days(days), _parse_hour(start, "start"), _parse_end(end), _zone(timezone))

    def contains(self, instant: datetime) -> bool:
        """Whether ``instant`` (timezone-aware) falls inside the window."""
        local = instant.astimezone(ZoneInfo(self.timezone))
        clock = local.time().replace(tzinfo=None)
        end = self.end
        if end is not None and end <= self.start:  # overnight
            if clock >= self.start:
                return local.weekday() in self.days
            yesterday = (local - timedelta(days=1)).weekday()
            return clock < end and yesterday in self.days
        if local.weekday() not in self.days:
            return False
        return clock >= self.start and (end is None or clock < end)

    def describe(self) -> str:
        """``Mon-Fri 09:00-17:00 America/New_York``."""
        end = "24:00" if self.end is None else self.end.strftime("%H:%M")
        return f"{describe_days(self.days)} {self.start.strftime('%H:%M')}-{end} {self.timezone}"

    def to_json(self) -> dict[str, object]:
        return {
            "days": [DAY_NAMES[day] for day in sorted(self.days)],
            "start": self.start.strftime("%H:%M"),
            "end": "24:00" if self.end is None else self.end.strftime("%H:%M"),
            "timeZone": self.timezone,
        }


def parse_days(values: list[str]) -> frozenset[int]:
    """Day names (``mon``…``sun`` or in full) and ranges (``mon-fri``, ``fri-mon``) as weekday
    numbers (0 = Monday)."""
    days: set[int] = set()
    for value in values:
        first, dash, last = value.partition("-")
        try:
            day = _day(first)
            finish = _day(last) if dash else day
        except ValueError:
            raise ValueError(
                f"{value!r} is not a day or a range of days (mon … sun, mon-fri)"
            ) from None
        days.add(day)
        while day != finish:
            day = (day + 1) % 7
            days.add(day)
    if not days:
        raise ValueError("a time window needs at least one day")
    return frozenset(days)


_FULL_NAMES: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(text: str) -> int:
    name = text.strip().lower()
    for number, names in enumerate(zip(DAY_NAMES, _FULL_NAMES, strict=True)):
        if name in names:
            return number
    raise ValueError(name)


def describe_days(days: frozenset[int]) -> str:
    """``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri``."""
    names = [name.capitalize() for name in DAY_NAMES]
    runs: list[str] = []
    ordered = sorted(days)
    index = 0
    while index < len(ordered):
        first = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == ordered[index] + 1:
            index += 1
        last = ordered[index]
        if last - first >= 2:
            runs.append(f"{names[first]}-{names[last]}")
        else:
            runs.extend(names[day] for day in range(first, last + 1))
        index += 1
    return ",".join(runs)


def _parse_hour(value: str, field: str) -> time:
    match = _HOUR.fullmatch(value.strip())
    if match is None or value.strip() == "24:00":
        raise ValueError(f"{field} {value!r} is not an hour HH:MM (00:00-23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def _parse_end(value: str) -> time | None:
    if value.strip() == "24:00":
        return None
    return _parse_hour(value, "end")


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not a known time zone (IANA name, e.g. Europe/Paris)"
        ) from None
    return name
