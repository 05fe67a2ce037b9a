"""Time for the chain and the race: a `Clock` (now, sleep, wait, a timeout) and one `Deadline`.

The chain and the race read time only through a `Clock`, so tests drive it (tests/providers/
fake_clock.py: time moves only when every task waits on it) instead of bounding wall-clock time
on a loaded machine. `Deadline` is the request's one hard end: made once by the pipeline,
passed unchanged to the chain, the race and each adapter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, tasks: Collection[asyncio.Task[T]], until: float) -> set[asyncio.Task[T]]:
        """The tasks done once the first of them is, or none when ``until`` came first."""
        ...

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        """Cancel the block at ``when`` and raise TimeoutError (asyncio.timeout_at on this clock)."""
        ...


class MonotonicClock:
    """The real clock: time.monotonic and asyncio's own waits."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, tasks: Collection[asyncio.Task[T]], until: float) -> set[asyncio.Task[T]]:
        done, _ = await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        return done

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        # Relative, not asyncio.timeout_at: the loop's clock need not be time.monotonic (uvloop's is not).
        return asyncio.timeout(max(0.0, when - time.monotonic()))


MONOTONIC = MonotonicClock()


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the request's remote calls must be over, on ``clock``'s scale."""

    at: float
    clock: Clock = MONOTONIC

    @classmethod
    def after(cls, seconds: float, clock: Clock = MONOTONIC) -> Deadline:
        return cls(clock.now() + seconds, clock)

    @property
    def seconds(self) -> float:
        """Seconds left (0 once passed)."""
        return max(0.0, self.at - self.clock.now())

    @property
    def expired(self) -> bool:
        return self.clock.now() >= self.at

    def timeout(self) -> AbstractAsyncContextManager[object]:
        """Cancel the block at the deadline (TimeoutError)."""
        return self.clock.timeout_at(self.at)
