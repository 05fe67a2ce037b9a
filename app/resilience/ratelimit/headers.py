"""Rate-limit response headers, formatted in one place: the RateLimit fields and Retry-After."""

from __future__ import annotations

import math

from app.resilience.ratelimit.bucket import Decision


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers, structured form) plus X-RateLimit-*."""
    reset = max(0, int(decision.reset_after + 0.999))
    return {
        "RateLimit-Policy": f'"user";q={decision.limit};w=60',
        "RateLimit": f'"user";r={decision.remaining};t={reset}',
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
    }


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, never 0 (a client told 0 would hammer us)."""
    return str(max(1, math.ceil(seconds - 1e-9)))
