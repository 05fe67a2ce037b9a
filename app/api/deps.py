"""Small getters over `request.state`, as Annotated dependencies the routes declare, and the
caller's identity (shared with the router endpoints, which read it from the ASGI scope)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from app.api.auth import Identity, check_headers_agree
from app.api.context import context_of
from app.api.errors import ValidationFailed
from app.api.services import services_of
from app.domain import Caller
from app.observability.logging import get_logger
from app.observability.redaction import printable
from app.resilience.ratelimit import normalise_id
from app.state import State

log = get_logger()


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread
# pool, and those hops cost more than everything else a request does.


async def get_state(request: Request) -> State:
    state: State = request.state.ivy
    return state


IvyState = Annotated[State, Depends(get_state)]


MAX_HEADER_CHARS = 1024


def _identity_headers(scope: Scope) -> tuple[str | None, str | None]:
    """X-User-ID and X-Org-ID in one pass over the raw headers (Headers.get rescans them per call)."""
    user = org = None
    for key, value in scope["headers"]:
        if key == b"x-user-id":
            user = value
        elif key == b"x-org-id":
            org = value
    found = []
    for name, raw in (("X-User-ID", user), ("X-Org-ID", org)):
        if raw is not None and len(raw) > MAX_HEADER_CHARS:
            raise ValidationFailed(f"{name}: at most {MAX_HEADER_CHARS} characters",
                                   fields=[{"field": name, "message": "too long"}])
        found.append(None if raw is None else raw.decode("latin-1"))
    return found[0], found[1]


def caller_from(scope: Scope, state: State, identity: Identity | None = None) -> Caller:
    """Who is asking: the verified identity when there is one (X-User-ID / X-Org-ID must then agree
    with it, or 403), else the rate-limit keys from X-User-ID / X-Org-ID (or the client address).

    Records user_id and org_id (non-printable characters escaped) on the request's context for its
    log line."""
    x_user_id, x_org_id = _identity_headers(scope)
    if identity is not None:
        check_headers_agree(identity, x_user_id, x_org_id)
        x_user_id, x_org_id = identity.user_id, identity.org_id
    user_key = normalise_id(x_user_id, kind="u")
    org_key = normalise_id(x_org_id, kind="o")
    user_id = printable(x_user_id.strip()[:128]) if x_user_id and user_key else None
    org_id = printable(x_org_id.strip()[:128]) if x_org_id and org_key else None
    if user_key is None:
        client = services_of(scope).peers.of(scope).address or "unknown"
        user_key = normalise_id(client, kind="ip") or "ip:unknown"
        if state.missing_user_warned.ready(time.monotonic(), user_key):
            log.warning("missing_user_id", client=client, path=scope["path"],
                        message="X-User-ID not set: rate limiting by client address")
    ctx = context_of(scope)
    ctx.user_id, ctx.org_id = user_id, org_id
    return Caller(ctx.request_id, user_key, org_key, user_id, org_id)
