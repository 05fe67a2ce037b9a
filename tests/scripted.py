"""A clock tests drive and a provider that follows a script, for deterministic races.

`FakeClock` implements app.providers.clock.Clock. Time moves only when every task is parked on
the clock (no task ran for `settle` turns of the event loop): then it jumps to the earliest
sleeper. So a race's timeline is exact (a hedge at 0.1 s fires at 0.1 s) and nothing depends
on how loaded the machine is. Not for code that waits on real I/O.

`ScriptedProvider` is a remote provider (app.providers.base.Provider) whose calls follow
`Call` scripts on that clock: a time to the first chunk (None: hang), an error instead, chunks
with gaps, a cut after N chunks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from app.providers.base import GenerationRequest, ProviderError, ProviderUnavailable, Usage
from app.providers.clock import Deadline
from app.vocabulary import ProviderName

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: float = 1000.0, settle: int = 64) -> None:
        self._now = start
        self.settle = settle
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._live: set[int] = set()
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None
        self._added = asyncio.Event()

    def now(self) -> float:
        return self._now

    def _at(self, when: float, fire: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (when, seq, fire))
        self._live.add(seq)
        self._added.set()
        if self._driver is None:
            self._driver = asyncio.ensure_future(self._drive())
        return seq

    def _forget(self, seq: int) -> None:
        self._live.discard(seq)

    async def _drive(self) -> None:
        while True:
            for _ in range(self.settle):
                await asyncio.sleep(0)
            while self._heap and self._heap[0][1] not in self._live:
                heapq.heappop(self._heap)
            if not self._heap:
                self._added.clear()
                await self._added.wait()
                continue
            when, seq, fire = heapq.heappop(self._heap)
            self._live.discard(seq)
            self._now = max(self._now, when)
            fire()

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seq = self._at(self._now + seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            self._forget(seq)

    async def wait(self, tasks: Collection[asyncio.Task[T]], until: float) -> set[asyncio.Task[T]]:
        if until <= self._now:
            return {t for t in tasks if t.done()}
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seq = self._at(until, lambda: timer.done() or timer.set_result(None))
        try:
            await asyncio.wait({*tasks, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._forget(seq)
            timer.cancel()
        return {t for t in tasks if t.done()}

    def timeout_at(self, when: float) -> _FakeTimeout:
        return _FakeTimeout(self, when)

    def call_at(self, when: float, callback: Callable[[], None]) -> _FakeHandle:
        return _FakeHandle(self, self._at(when, callback))

    def close(self) -> None:
        if self._driver is not None:
            self._driver.cancel()


@dataclass
class _FakeHandle:
    clock: FakeClock
    seq: int

    def cancel(self) -> None:
        self.clock._forget(self.seq)


class _FakeTimeout:
    """asyncio.timeout on the fake clock: asyncio's own Timeout, expired when fake time gets there."""

    def __init__(self, clock: FakeClock, when: float) -> None:
        self.clock, self.when = clock, when
        self._timeout = asyncio.timeout(None)
        self._seq: int | None = None

    def _expire(self) -> None:
        self._timeout.reschedule(asyncio.get_running_loop().time())

    async def __aenter__(self) -> _FakeTimeout:
        await self._timeout.__aenter__()
        if self.when <= self.clock.now():
            self._expire()
        else:
            self._seq = self.clock._at(self.when, self._expire)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        if self._seq is not None:
            self.clock._forget(self._seq)
        return await self._timeout.__aexit__(kind, exc, tb)


@dataclass(frozen=True)
class Call:
    """One scripted call: ``ttft`` seconds to the first chunk (None: it never comes), then
    ``chunks`` ``gap`` seconds apart (or ``gaps``: the wait before each chunk after the first);
    ``error`` is raised instead of the first chunk, and a cut after ``cut_after`` chunks raises
    ProviderUnavailable."""

    ttft: float | None = 0.05
    chunks: tuple[str, ...] = ("Hello", " from", " the model")
    gap: float = 0.0
    gaps: tuple[float, ...] = ()
    error: ProviderError | None = None
    cut_after: int | None = None


@dataclass
class ScriptedProvider:
    name: ProviderName
    clock: FakeClock
    script: list[Call] = field(default_factory=list)  # consumed in order; then `usual`
    usual: Call = field(default_factory=Call)
    model: str = "scripted-1"
    started: list[float] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    finished: int = 0  # calls that ran to their end
    stopped: int = 0  # calls cancelled or closed before their end

    def stream(self, request: GenerationRequest, *, deadline: Deadline, json_mode: bool = False,
               usage: Usage | None = None) -> AsyncIterator[str]:
        self.started.append(self.clock.now())
        self.deadlines.append(deadline)
        return self._run(self.script.pop(0) if self.script else self.usual, usage)

    async def _run(self, call: Call, usage: Usage | None) -> AsyncIterator[str]:
        ended = False
        try:
            await self.clock.sleep(1e9 if call.ttft is None else call.ttft)
            if call.error is not None:
                ended = True
                raise call.error
            for i, chunk in enumerate(call.chunks):
                wait = (call.gaps[i - 1] if call.gaps else call.gap) if i else 0.0
                if wait:
                    await self.clock.sleep(wait)
                if call.cut_after is not None and i == call.cut_after:
                    ended = True
                    raise ProviderUnavailable(self.name, "stream cut mid-answer")
                yield chunk
            if usage is not None:
                usage.input_tokens, usage.output_tokens = 10, len(call.chunks)
            ended = True
            self.finished += 1
        finally:
            if not ended:
                self.stopped += 1
