"""Small getters over `request.state`, as Annotated dependencies the routes declare."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Request

from app.config.runtime_flags import Flags
from app.observability.logging import get_logger
from app.pipeline import Caller
from app.resilience.ratelimit import normalise_id
from app.state import State

log = get_logger()


def get_state(request: Request) -> State:
    state: State = request.state.ivy
    return state


IvyState = Annotated[State, Depends(get_state)]


def get_caller(
    request: Request,
    state: IvyState,
    x_user_id: Annotated[str | None, Header(max_length=1024, description="The rep's user id (rate-limit key).")]
    = None,
    x_org_id: Annotated[str | None, Header(max_length=1024, description="The rep's org (org-level limit).")]
    = None,
) -> Caller:
    user_key = normalise_id(x_user_id, kind="u")
    org_key = normalise_id(x_org_id, kind="o")
    user_id = x_user_id.strip()[:128] if x_user_id and user_key else None
    org_id = x_org_id.strip()[:128] if x_org_id and org_key else None
    if user_key is None:
        client = request.client.host if request.client else "unknown"
        user_key = normalise_id(client, kind="ip") or "ip:unknown"
        if state.missing_user_warned.should_warn(user_key, time.monotonic()):
            log.warning("missing_user_id", client=client, path=request.url.path,
                        message="X-User-ID not set: rate limiting by client address")
    request.state.user_id = user_id
    request.state.org_id = org_id
    return Caller(request.state.request_id, user_key, org_key, user_id, org_id)


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def get_flags(state: IvyState) -> Flags:
    return state.flags.current


CurrentFlags = Annotated[Flags, Depends(get_flags)]
