"""What every limiter backend offers (the RateLimiter protocol), for the app to hold either one."""

from __future__ import annotations

from typing import Literal, Protocol

from app.resilience.ratelimit.bucket import Decision

BackendName = Literal["redis", "memory"]


class RateLimiter(Protocol):
    backend: BackendName

    async def check(self, user_key: str, org_key: str | None) -> Decision: ...

    async def ping(self) -> float:
        """Round-trip time to the backend in ms; raises if it is unreachable."""
        ...

    async def warm(self) -> None:
        """Prepare for traffic (connect, load scripts); raises if the backend is unreachable."""
        ...

    async def aclose(self) -> None:
        """Close what the limiter opened itself (not the client it was given)."""
        ...
