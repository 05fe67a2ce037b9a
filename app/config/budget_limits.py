"""What a budget is (an amount of USD or tokens per calendar day or month, UTC) and its periods."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Literal

from app.config.prices import NANO_PER_USD

Unit = Literal["usd", "tokens"]
Period = Literal["day", "month"]

_SPEC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(usd|tokens)\s*/\s*(day|month)\s*$", re.IGNORECASE)
MAX_AMOUNT = Decimal(10**12)  # USD or tokens: more is a typo


@dataclass(frozen=True, slots=True)
class Limit:
    """``amount`` in the unit's integers: nano-USD or tokens."""

    amount: int
    unit: Unit
    period: Period

    @classmethod
    def make(cls, value: Decimal | float | int | str, unit: str, period: str, *, round_up: bool = False) -> Limit:
        """``round_up``: a fraction finer than the unit (a nano-dollar, a token) rounds up, else it is refused."""
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
        if unit not in ("usd", "tokens") or period not in ("day", "month"):
            raise ValueError("unit is usd or tokens, period is day or month")
        if not number.is_finite() or number <= 0 or number > MAX_AMOUNT:
            raise ValueError(f"{value} {unit} is out of range (above 0, at most 1e12)")
        scaled = number * NANO_PER_USD if unit == "usd" else number
        if scaled != scaled.to_integral_value() and not round_up:
            raise ValueError("a token budget is a whole number; a USD one has at most 9 decimals")
        amount = int(scaled.to_integral_value(rounding=ROUND_CEILING))
        return cls(amount, "usd" if unit == "usd" else "tokens", "day" if period == "day" else "month")

    @classmethod
    def parse(cls, spec: str) -> Limit:
        """``"50 usd/month"``, ``"2000000 tokens/day"``."""
        match = _SPEC.match(spec)
        if match is None:
            raise ValueError(f"{spec!r}: write '<amount> usd/month', '<amount> tokens/day' (usd|tokens, day|month)")
        return cls.make(match[1], match[2].lower(), match[3].lower())

    def shown(self, amount: int | None = None) -> float | int:
        """An amount of this unit as people read it (USD, or tokens)."""
        value = self.amount if amount is None else amount
        return round(value / NANO_PER_USD, 9) if self.unit == "usd" else value

    def describe(self) -> dict[str, object]:
        return {"limit": self.shown(), "unit": self.unit, "period": self.period}


def period_id(period: Period, now: float | None = None) -> str:
    """The calendar day (2026-12-02) or month (2026-12) that ``now`` is in, UTC."""
    t = time.gmtime(time.time() if now is None else now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}" if period == "day" else f"{t.tm_year:04d}-{t.tm_mon:02d}"


def seconds_left(period: Period, now: float | None = None) -> float:
    """Seconds until the period's end (UTC midnight, or the first of next month)."""
    now = time.time() if now is None else now
    t = time.gmtime(now)
    start_of_day = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    if period == "day":
        return start_of_day + 86_400 - now
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now
