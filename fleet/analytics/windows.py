"""Time windows and scopes: which records fall in the last 1 h / 24 h / 30 days, per device, per release, fleet-wide."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import ConfigError

WINDOWS: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "30d": timedelta(days=30)}
FLEET = "*"  # scope key of fleet-wide figures; not a valid device id, so it cannot collide with one


class Stamped(Protocol):
    device: str
    created_at: str


class Versioned(Stamped, Protocol):
    release: str
    revision: int


R = TypeVar("R", bound=Stamped)
V = TypeVar("V", bound=Versioned)


def parse_ts(value: str | datetime) -> datetime:
    """An ISO-8601 time as an aware UTC datetime; a naive time is taken as UTC (devices write UTC)."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError(f"not an ISO-8601 time: {value!r}") from err
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


class Window(BaseModel):
    """A half-open time interval [start, end)."""

    model_config = ConfigDict(extra="forbid")
    start: datetime = Field(description="inclusive, UTC")
    end: datetime = Field(description="exclusive, UTC")

    @classmethod
    def last(cls, name_or_span: str | timedelta, end: datetime | str | None = None) -> Window:
        """The window of the named length ('1h', '24h', '30d') or timedelta ending at `end` (default: now)."""
        if isinstance(name_or_span, str):
            if name_or_span not in WINDOWS:
                raise ConfigError(f"unknown window {name_or_span!r}; known: {', '.join(WINDOWS)}")
            span = WINDOWS[name_or_span]
        else:
            span = name_or_span
        stop = parse_ts(end) if end is not None else datetime.now(timezone.utc)
        return cls(start=stop - span, end=stop)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def contains(self, ts: str | datetime) -> bool:
        t = parse_ts(ts)
        return self.start <= t < self.end


class Scope(BaseModel):
    """Which records count: one device or all (FLEET), optionally one release (name or name@revision)."""

    model_config = ConfigDict(extra="forbid")
    device: str = Field(FLEET, description="device id, or '*' for the whole fleet")
    release: str | None = Field(None, description="release name or name@revision; None for every release")

    def matches(self, record: Stamped) -> bool:
        if self.device != FLEET and record.device != self.device:
            return False
        if self.release is None:
            return True
        name, _, rev = self.release.partition("@")
        rel = getattr(record, "release", None)
        if rel != name:
            return False
        return not rev or str(getattr(record, "revision", "")) == rev

    @property
    def key(self) -> str:
        return self.device if self.release is None else f"{self.device}|{self.release}"


def select(records: Iterable[R], window: Window | None = None, scope: Scope | None = None) -> list[R]:
    """The records inside `window` and `scope` (either may be None for no limit), in time order."""
    out = [r for r in records
           if (window is None or window.contains(r.created_at)) and (scope is None or scope.matches(r))]
    out.sort(key=lambda r: parse_ts(r.created_at))
    return out


def group_by(records: Iterable[V], by: Literal["device", "release", "revision"]) -> dict[str, list[V]]:
    """Records grouped per device, per release name, or per release ref (name@revision)."""
    groups: dict[str, list[V]] = defaultdict(list)
    for r in records:
        if by == "device":
            key = r.device
        elif by == "release":
            key = r.release
        else:
            key = f"{r.release}@{r.revision}"
        groups[key].append(r)
    return dict(groups)


def days(window: Window) -> Iterator[Window]:
    """Consecutive whole-day windows (UTC midnight to midnight) covering `window`: the buckets of a trend chart."""
    day = window.start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < window.end:
        nxt = day + timedelta(days=1)
        yield Window(start=max(day, window.start), end=min(nxt, window.end))
        day = nxt
