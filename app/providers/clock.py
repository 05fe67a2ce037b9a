"""Time for the chain and the race: a `Clock` (now, sleep, wait, a timeout) and one `Deadline`.

The chain and the race read time only through a `Clock`, so tests drive it (tests/providers/
fake_clock.py: time moves only when every task waits on it) instead of bounding wall-clock time
on a loaded machine. `Deadline` is the request's one hard end: made once by the pipeline,
passed unchanged to the chain, the race and each adapter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
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

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Call ``callback`` from the event loop at ``when`` (loop.call_at on this clock)."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


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

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), callback)


MONOTONIC = MonotonicClock()


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the request's remote calls must be over, on ``clock``'s scale; ``ceiling``: how far an
    answer still flowing at ``at`` may run on (the chain's `Pace`), None: not at all."""

    at: float
    clock: Clock = MONOTONIC
    ceiling: float | None = None

    @classmethod
    def after(cls, seconds: float, clock: Clock = MONOTONIC, ceiling: float | None = None) -> Deadline:
        """``ceiling``: seconds from now, as ``seconds`` (at least ``seconds``)."""
        now = clock.now()
        return cls(now + seconds, clock, None if ceiling is None else now + max(seconds, ceiling))

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


class Alarm:
    """One cut over a stream's many waits, at ``deadline`` (if any) or at `ring`: the task is
    cancelled only while it waits inside `wait` (between two waits it is elsewhere, at a yield,
    where a cancel would land in its consumer); rung between waits, the next wait ends before it
    starts. Either way `wait` raises TimeoutError, as asyncio.timeout does. At the deadline
    ``renew`` (if any) may put the ring off to a later time it returns (None: ring now), so a
    stream's pace is judged when the deadline comes, not on every chunk. One timer per stream:
    one per wait (`Deadline.timeout`) cost a timer handle, its heap push and its cancel per chunk.
    A stream is pulled by one task, so its waits are that task's: asked once (asyncio.current_task
    costs a getpid system call on Python 3.11), not per chunk. `close` when the stream is over."""

    __slots__ = ("_cutting", "_deadline", "_handle", "_owner", "_renew", "_task", "rung")

    def __init__(self, deadline: Deadline | None = None, renew: Callable[[], float | None] | None = None) -> None:
        self._deadline = deadline
        self._renew = renew
        self._handle: Cancellable | None = None
        self._task: asyncio.Task[object] | None = None  # the task inside `wait`, None between waits
        self._owner: asyncio.Task[object] | None = None  # the task that waits on it
        self._cutting = False  # this alarm cancelled it
        self.rung = False

    def ring(self) -> None:
        self.rung = True
        if self._task is not None and not self._cutting:
            self._cutting = True
            self._task.cancel()

    def _due(self) -> None:
        later = self._renew() if self._renew is not None else None
        if later is None or self._deadline is None:
            self.ring()
        else:
            self._handle = self._deadline.clock.call_at(later, self._due)

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """What ``awaitable`` gives, or TimeoutError once rung."""
        deadline = self._deadline
        if self._handle is None and deadline is not None and not self.rung:
            later: float | None = deadline.at
            if deadline.expired:
                later = self._renew() if self._renew is not None else None
                self.rung = later is None
            if later is not None:
                self._handle = deadline.clock.call_at(later, self._due)
        if self.rung:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # never awaited
            raise TimeoutError
        if self._owner is None:
            self._owner = asyncio.current_task()
        task = self._task = self._owner
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._cutting and task is not None:  # this alarm's cut, not the request's
                self._cutting = False
                if task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._task = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
