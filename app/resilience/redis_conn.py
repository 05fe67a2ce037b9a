"""What redis-py's pool checks when a connection is checked out, for the callers that keep their own
connections (the limiter's batcher, the budget's ScriptWire): a connection with unread data or at EOF
(Redis restarted since its last use) is dropped, so the next send connects afresh."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError


async def drop_if_stale(conn: aioredis.Connection) -> None:
    if not conn.is_connected:
        return
    try:
        stale = await conn.can_read()
    except (RedisConnectionError, OSError):
        stale = True
    if stale:
        await conn.disconnect()
