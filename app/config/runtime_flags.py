"""Feature flags that change at runtime, for every worker and host, without a restart.

The environment gives the defaults at start (the runbook's `export ...` + restart still works).
An operator overrides them through the admin endpoint; with REDIS_URL the override lives in one
Redis hash that every worker polls every couple of seconds, so the whole fleet follows within
seconds. Without Redis an override reaches only the process that received it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from app.config.settings import Settings
from app.observability.logging import get_logger
from app.vocabulary import RemoteProvider

log = get_logger()

FLAG_NAMES = ("IVY_MODAL_HEURISTICS", "IVY_ORGANIC_ENABLED", "ACTIVE_MODEL")
REDIS_KEY = "ivy:flags"
POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Flags:
    """What one request runs with."""

    modal_heuristics: bool
    organic: bool
    active_model: RemoteProvider


@dataclass(frozen=True, slots=True)
class Override:
    values: dict[str, str]  # flag name -> "true"/"false"/"gemini"/"openai"
    set_by: str
    set_at: float  # unix time


def _bool(value: str) -> bool:
    return value == "true"


class RuntimeFlags:
    def __init__(self, settings: Settings, redis: aioredis.Redis | None) -> None:
        self.settings = settings
        self.redis = redis
        self.override: Override | None = None
        self.current = self._compute()

    def _compute(self) -> Flags:
        s, values = self.settings, self.override.values if self.override else {}
        active = values.get("ACTIVE_MODEL", s.active_model)
        return Flags(
            modal_heuristics=_bool(values["IVY_MODAL_HEURISTICS"]) if "IVY_MODAL_HEURISTICS" in values
            else s.ivy_modal_heuristics,
            organic=_bool(values["IVY_ORGANIC_ENABLED"]) if "IVY_ORGANIC_ENABLED" in values else s.ivy_organic_enabled,
            active_model="openai" if active == "openai" else "gemini",
        )

    def _apply(self, override: Override | None, source: str) -> None:
        if override == self.override:
            return
        self.override = override
        before, self.current = self.current, self._compute()
        log.warning("runtime_flags_changed", source=source, set_by=override.set_by if override else None,
                    flags=self.describe()["effective"], previous=_as_env(before))

    async def set(self, values: dict[str, str], set_by: str) -> None:
        override = Override({**(self.override.values if self.override else {}), **values}, set_by, time.time())
        if self.redis is not None:
            mapping = {**override.values, "_set_by": set_by, "_set_at": str(override.set_at)}
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(REDIS_KEY)
                pipe.hset(REDIS_KEY, mapping=mapping)  # type: ignore[arg-type]
                await pipe.execute()
        self._apply(override, "admin")

    async def reset(self, set_by: str) -> None:
        if self.redis is not None:
            await self.redis.delete(REDIS_KEY)
        self._apply(None, "admin")
        log.warning("runtime_flags_reset", set_by=set_by)

    async def refresh(self) -> None:
        """Adopt what the fleet's Redis says (another worker or host may have changed it)."""
        if self.redis is None:
            return
        raw = await self.redis.hgetall(REDIS_KEY)
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        if not data:
            self._apply(None, "redis")
            return
        values = {k: v for k, v in data.items() if k in FLAG_NAMES}
        self._apply(Override(values, data.get("_set_by", "unknown"), float(data.get("_set_at", 0) or 0)), "redis")

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: keep the last known flags
                log.warning("runtime_flags_poll_failed", error=type(exc).__name__)

    def describe(self) -> dict[str, object]:
        return {
            "effective": _as_env(self.current),
            "overridden": sorted(self.override.values) if self.override else [],
            "set_by": self.override.set_by if self.override else None,
            "set_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.override.set_at)) if self.override
            else None,
            "scope": "fleet (redis)" if self.redis is not None else "this process",
        }


def _as_env(flags: Flags) -> dict[str, object]:
    return {"IVY_MODAL_HEURISTICS": flags.modal_heuristics, "IVY_ORGANIC_ENABLED": flags.organic,
            "ACTIVE_MODEL": flags.active_model}
