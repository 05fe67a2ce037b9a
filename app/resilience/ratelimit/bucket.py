"""The token-bucket arithmetic, written once in Python, and the types it speaks (Limits, Decision).

A bucket holds up to ``capacity`` tokens and refills continuously at ``rate`` tokens per second;
a request needs one token from the user bucket and one from the org bucket, and a refused request
takes none. The in-memory limiter runs these functions. The Redis limiter runs the same rules in
``bucket.lua`` (it must decide atomically, next to the data) and turns the script's token counts
into a Decision with ``decision`` below; a test holds the two backends to the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Bucket = Literal["user", "org", "burst"]


@dataclass(frozen=True, slots=True)
class Limits:
    user_per_min: int
    user_capacity: int
    org_per_min: int
    org_capacity: int
    # A user bucket emptied within this long of being full is a burst (a script, a retry loop, a
    # frontend bug) rather than sustained use over the per-minute rate: on-call treats them differently.
    burst_window: float = 10.0

    @property
    def user_rate(self) -> float:
        return self.user_per_min / 60.0

    @property
    def org_rate(self) -> float:
        return self.org_per_min / 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the user bucket's capacity
    remaining: int  # whole tokens left in the user bucket after this request
    reset_after: float  # seconds until the user bucket is full again
    retry_after: float = 0.0  # seconds until the refusing bucket holds a token
    bucket: Bucket | None = None  # which bucket refused


def refill(tokens: float, at: float, full_at: float, now: float, rate: float,
           capacity: float) -> tuple[float, float]:
    """A bucket that held ``tokens`` at time ``at``, as of ``now``: its tokens and when it was last full."""
    tokens = min(capacity, tokens + max(0.0, now - at) * rate)
    return tokens, now if tokens >= capacity else full_at


def refusing_bucket(user: float, user_full_at: float, org: float | None, now: float,
                    limits: Limits) -> Bucket | None:
    """Which bucket refuses a request, given both buckets refilled to ``now`` (None: both hold a token).

    When both are short, the one that takes longer to hold a token again (the user's on a tie); a user
    bucket emptied within ``burst_window`` of being full refuses as ``burst``.
    """
    if user < 1:
        if org is not None and org < 1 and (1 - org) / limits.org_rate > (1 - user) / limits.user_rate:
            return "org"
        return "burst" if now - user_full_at < limits.burst_window else "user"
    return "org" if org is not None and org < 1 else None


def decision(user: float, org: float | None, refused: Bucket | None, limits: Limits) -> Decision:
    """What the caller is told, from the token counts after the check (the user's less one if admitted)."""
    capacity, rate = limits.user_capacity, limits.user_rate
    reset_after = (capacity - user) / rate
    if refused is None:
        return Decision(True, capacity, int(user), reset_after)
    if refused == "org" and org is not None:
        return Decision(False, capacity, int(user), reset_after, (1 - org) / limits.org_rate, refused)
    return Decision(False, capacity, int(user), reset_after, (1 - user) / rate, refused)
