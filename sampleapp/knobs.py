"""Query-string knobs: parsing and range checks, with errors that name the knob and the value.

Unknown parameters are ignored, so clients may add cache busters or tags of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

GIB = 1 << 30
MAX_BODY_BYTES = 2 * GIB
MAX_DELAY_MS = 600_000.0  # ten minutes: longer than any proxy timeout worth testing

_T = TypeVar("_T")


class KnobError(ValueError):
    """A knob has a value outside its range; the message is the 400 body."""

    def __init__(self, knob: str, value: str, expected: str) -> None:
        super().__init__(f"bad {knob}={value!r}: expected {expected}")


def int_knob(query: Mapping[str, str], knob: str, low: int, high: int) -> int | None:
    raw = query.get(knob)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise KnobError(knob, raw, f"an integer in {low}..{high}")
    return value


def float_knob(query: Mapping[str, str], knob: str, low: float, high: float) -> float | None:
    raw = query.get(knob)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also rejects nan
        raise KnobError(knob, raw, f"a number in {low:g}..{high:g}")
    return value


def bool_knob(query: Mapping[str, str], knob: str) -> bool:
    raw = query.get(knob)
    if raw is None:
        return False
    if raw in ("1", "true"):
        return True
    if raw in ("0", "false"):
        return False
    raise KnobError(knob, raw, "0, 1, true or false")


@dataclass(frozen=True)
class GreetingKnobs:
    """The knobs of `GET /`, applied in field order: work first, then the outcome."""

    bloat_mib: int = 0  # allocate and touch this much memory for the request's lifetime
    prime: int | None = None  # find the largest prime <= this, by trial division
    sleep_ms: float = 0.0
    fail: float = 0.0  # probability of answering 500 instead
    seed: int | None = None  # makes `fail` replayable
    reset: bool = False  # abort the connection instead of answering
    status: int = 200
    bytes: int | None = None  # a pattern body of this size instead of the greeting
    drop_after: int | None = None  # with `bytes`: abort after sending this much of the body

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> GreetingKnobs:
        return cls(
            bloat_mib=int_knob(query, "bloat", 0, 1024) or 0,
            prime=int_knob(query, "prime", 1, 10_000_000),
            sleep_ms=float_knob(query, "sleep", 0.0, MAX_DELAY_MS) or 0.0,
            fail=float_knob(query, "fail", 0.0, 1.0) or 0.0,
            seed=int_knob(query, "seed", 0, 2**63 - 1),
            reset=bool_knob(query, "reset"),
            # 1xx are interim responses: a handler cannot end an exchange with one.
            status=int_knob(query, "status", 200, 599) or 200,
            bytes=int_knob(query, "bytes", 0, MAX_BODY_BYTES),
            drop_after=int_knob(query, "drop_after", 0, MAX_BODY_BYTES),
        )


@dataclass(frozen=True)
class DownloadKnobs:
    bytes: int
    chunked: bool = False  # leave out Content-Length
    drop_after: int | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> DownloadKnobs:
        size = int_knob(query, "bytes", 0, MAX_BODY_BYTES)
        if size is None:
            raise KnobError("bytes", "", f"an integer in 0..{MAX_BODY_BYTES} (it is required)")
        return cls(
            bytes=size,
            chunked=bool_knob(query, "chunked"),
            drop_after=int_knob(query, "drop_after", 0, MAX_BODY_BYTES),
        )


@dataclass(frozen=True)
class StreamKnobs:
    """`/stream` and `/sse`: `count` pieces with `interval_ms` between them."""

    count: int
    interval_ms: float
    size: int | None = None  # /stream only: chunks of this many pattern bytes, not text lines

    @classmethod
    def parse_stream(cls, query: Mapping[str, str]) -> StreamKnobs:
        return cls(
            count=_or(int_knob(query, "chunks", 0, 100_000), 5),
            interval_ms=_or(float_knob(query, "interval", 0.0, MAX_DELAY_MS), 100.0),
            size=int_knob(query, "size", 1, 16 << 20),
        )

    @classmethod
    def parse_sse(cls, query: Mapping[str, str]) -> StreamKnobs:
        return cls(
            count=_or(int_knob(query, "events", 0, 100_000), 5),
            interval_ms=_or(float_knob(query, "interval", 0.0, MAX_DELAY_MS), 100.0),
        )


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value
