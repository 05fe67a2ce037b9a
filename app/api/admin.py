"""Operator endpoints: runtime flags for the whole fleet, behind IVY_ADMIN_TOKEN (off when unset)."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.api.deps import IvyState
from app.api.errors import BadRequest, NotFound, Unauthorized
from app.api.responses import FastJSONResponse

router = APIRouter(prefix="/admin", tags=["admin"])


async def require_admin(state: IvyState, authorization: Annotated[str | None, Header(max_length=512)] = None) -> str:
    """Check the bearer token; returns nothing useful, only refuses."""
    token = state.settings.ivy_admin_token
    if token is None:
        raise NotFound("admin endpoints are disabled: set IVY_ADMIN_TOKEN to enable them")
    scheme, _, supplied = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <IVY_ADMIN_TOKEN>'")
    return "ok"


Admin = Annotated[str, Depends(require_admin)]


class FlagsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    IVY_MODAL_HEURISTICS: StrictBool | None = None
    IVY_ORGANIC_ENABLED: StrictBool | None = None
    ACTIVE_MODEL: Literal["gemini", "openai"] | None = None
    set_by: str = Field(min_length=1, max_length=100, description="Who is changing the flags (shown in health).")


@router.get("/flags", summary="The effective flags and who overrode them")
async def get_flags(state: IvyState, _: Admin) -> FastJSONResponse:
    return FastJSONResponse(state.flags.describe())


@router.put("/flags", summary="Override flags for every worker and host (within seconds, no restart)")
async def put_flags(body: FlagsUpdate, state: IvyState, _: Admin) -> FastJSONResponse:
    values = {
        name: (str(value).lower() if isinstance(value, bool) else value)
        for name, value in body.model_dump(exclude={"set_by"}, exclude_none=True).items()
    }
    if not values:
        raise BadRequest("name at least one of IVY_MODAL_HEURISTICS, IVY_ORGANIC_ENABLED, ACTIVE_MODEL")
    await state.flags.set(values, body.set_by)
    return FastJSONResponse(state.flags.describe())


@router.delete("/flags", summary="Back to the environment's values")
async def reset_flags(state: IvyState, _: Admin, set_by: str = "unknown") -> FastJSONResponse:
    await state.flags.reset(set_by[:100])
    return FastJSONResponse(state.flags.describe())
