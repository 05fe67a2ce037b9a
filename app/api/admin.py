"""Operator endpoints: runtime flags for the whole fleet, answer-cache purges and per-org budgets,
behind IVY_ADMIN_TOKEN (off when unset)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.api.deps import IvyState
from app.api.errors import BadRequest, Conflict, NotFound, Unauthorized
from app.api.responses import FastJSONResponse
from app.api.schemas import ErrorResponse
from app.config.budget_limits import Limit
from app.observability.logging import get_logger
from app.resilience.ratelimit import normalise_id

_ERROR = {"model": ErrorResponse}
router = APIRouter(prefix="/admin", tags=["admin"], responses={
    401: {**_ERROR, "description": "Missing or wrong 'Authorization: Bearer <IVY_ADMIN_TOKEN>'"},
    404: {**_ERROR, "description": "Admin endpoints are off (IVY_ADMIN_TOKEN unset)"},
})
log = get_logger()
FLAG_NAMES = ("IVY_MODAL_HEURISTICS", "IVY_ORGANIC_ENABLED", "ACTIVE_MODEL")


def _not_null(schema: dict[str, Any]) -> None:
    """An omitted flag is left alone; an explicit null is refused (422), so the schema shows no null."""
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    schema.update(variants[0] if len(variants) == 1 else {"anyOf": variants})
    schema.pop("default", None)


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
    """At least one flag, and who sets it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [{"required": [n]} for n in FLAG_NAMES]})

    IVY_MODAL_HEURISTICS: StrictBool | None = Field(default=None, json_schema_extra=_not_null)
    IVY_ORGANIC_ENABLED: StrictBool | None = Field(default=None, json_schema_extra=_not_null)
    ACTIVE_MODEL: Literal["gemini", "openai"] | None = Field(default=None, json_schema_extra=_not_null)
    set_by: str = Field(min_length=1, max_length=100, description="Who is changing the flags (shown in health).")

    @field_validator(*FLAG_NAMES, mode="before")
    @classmethod
    def _no_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave a flag out rather than null")
        return value


@router.get("/flags", summary="The effective flags and who overrode them")
async def get_flags(state: IvyState, _: Admin) -> FastJSONResponse:
    return FastJSONResponse(state.flags.describe())


@router.put("/flags", summary="Override flags for every worker and host (within seconds, no restart)",
            responses={400: {**_ERROR, "description": "No flag named: only set_by"}})
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


class CachePurge(BaseModel):
    """Purge one org's answers (org_id, as sent in X-Org-ID or the token's org claim), or all of them."""

    model_config = ConfigDict(extra="forbid")

    org_id: str | None = Field(default=None, min_length=1, max_length=128,
                               description="The org whose answers go; omitted: every org's.")
    set_by: str = Field(min_length=1, max_length=100, description="Who purges (logged).")


async def _purge(state: IvyState, org_id: str | None, set_by: str) -> FastJSONResponse:
    org_key = normalise_id(org_id, kind="o") if org_id is not None else None
    if org_id is not None and org_key is None:
        raise BadRequest("org_id is blank")
    purged = await state.cache.purge(org_key)
    log.info("answer_cache_purge", org_id=org_id or "*", set_by=set_by[:100], entries=purged)
    return FastJSONResponse({"purged": purged, "org_id": org_id, "cache": await state.cache.snapshot()})


@router.get("/cache", summary="The answer cache: backend, entries, hit ratio, warm-up")
async def get_cache(state: IvyState, _: Admin) -> FastJSONResponse:
    return FastJSONResponse({**await state.cache.snapshot(), "warmup": state.warmer.snapshot()})


_BAD_PURGE: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "The body is not JSON, or org_id is blank"}}


@router.put("/cache", summary="Purge the answer cache: one org's answers (org_id) or all (every worker and host)",
            responses=_BAD_PURGE)
async def put_cache(body: CachePurge, state: IvyState, _: Admin) -> FastJSONResponse:
    return await _purge(state, body.org_id, body.set_by)


@router.delete("/cache", summary="Purge the answer cache: ?org_id= for one org, else all", responses=_BAD_PURGE)
async def delete_cache(state: IvyState, _: Admin, org_id: str | None = None, set_by: str = "unknown"
                       ) -> FastJSONResponse:
    return await _purge(state, org_id, set_by)


class BudgetUpdate(BaseModel):
    """One org's budget, replacing the default (IVY_BUDGET_DEFAULT) for that org."""

    model_config = ConfigDict(extra="forbid")

    org_id: str = Field(min_length=1, max_length=128, pattern=r"\S",
                        description="As sent in X-Org-ID or the token's org claim.")
    limit: float = Field(gt=0, le=1e12, description="USD (down to 1e-9; a finer fraction rounds up) or tokens "
                         "(a fraction rounds up).")
    unit: Literal["usd", "tokens"]
    period: Literal["day", "month"] = Field(description="Calendar day or month, UTC.")
    set_by: str = Field(min_length=1, max_length=100, description="Who sets it (logged, shown).")


def _org(state: IvyState, org_id: str) -> str:
    if state.budgets.store is None:
        error = Conflict("budgets are off: set IVY_BUDGET_DEFAULT (e.g. '50 usd/month', or 'none' for "
                         "per-org budgets only)")
        error.code = "budgets_off"
        raise error
    org_key = normalise_id(org_id, kind="o")
    if org_key is None:
        raise BadRequest("org_id is blank")
    return org_key


_BAD_BUDGET: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "org_id is blank once normalised"},
    409: {**_ERROR, "description": "Budgets are off (IVY_BUDGET_DEFAULT unset): budgets_off"}}


@router.get("/budgets", summary="Per-org budgets: limit, spend and reservations this period; the top spenders")
async def get_budgets(state: IvyState, _: Admin, top: int = 10) -> FastJSONResponse:
    return FastJSONResponse(await state.budgets.snapshot(top=min(max(top, 1), 100)))


@router.put("/budgets", summary="Set one org's budget (every worker and host at its next call)", responses=_BAD_BUDGET)
async def put_budget(body: BudgetUpdate, state: IvyState, _: Admin) -> FastJSONResponse:
    org_key = _org(state, body.org_id)
    try:
        limit = Limit.make(repr(body.limit), body.unit, body.period, round_up=True)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return FastJSONResponse(await state.budgets.set_override(org_key, body.org_id, limit, body.set_by))


@router.delete("/budgets", summary="Back to the default budget for one org", responses=_BAD_BUDGET)
async def delete_budget(state: IvyState, _: Admin,
                        org_id: Annotated[str, Query(min_length=1, max_length=128, pattern=r"\S")],
                        set_by: str = "unknown") -> FastJSONResponse:
    org_key = _org(state, org_id)
    deleted = await state.budgets.delete_override(org_key, org_id, set_by[:100])
    return FastJSONResponse({"deleted": deleted, "org_id": org_id})
