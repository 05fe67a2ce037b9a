"""One warning per window in a storm: the one throttle every repeated warning goes through (the
limiter's and the answer cache's outages, one line per 10 s with the count; a missing X-User-ID,
once a minute per address). Bounded: at most ``max_keys`` keys, the oldest forgotten first."""

from __future__ import annotations

from collections import OrderedDict

STORM_WARNING_SECONDS = 10.0  # a backend outage is logged once per this long, with the count so far


class Throttle:
    def __init__(self, window_seconds: float, max_keys: int = 10_000) -> None:
        self.window = window_seconds
        self.max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    def ready(self, now: float, key: str = "") -> bool:
        """True (and the window restarts) when ``key`` was not warned about in the last window."""
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return True
