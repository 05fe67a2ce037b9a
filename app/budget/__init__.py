"""What each org spends: the price table (prices.json), token estimates without a network call,
per-org budgets (limits.py) kept in Redis or this process (store.py, budget.lua), and each call's
reservation and bill (ledger.py). Built from Settings by `build_budgets`."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.budget.ledger import Bill, Budgets, Hold, Refusal, Tab
from app.budget.store import BudgetStore, MemoryBudgetStore, Override, RedisBudgetStore
from app.config import Settings
from app.config.budget_limits import Limit, period_id, seconds_left
from app.config.prices import NANO_PER_USD, Price, PriceTable
from app.observability.logging import get_logger
from app.observability.metrics import Metrics

log = get_logger()

__all__ = ["NANO_PER_USD", "Bill", "BudgetStore", "Budgets", "Hold", "Limit", "MemoryBudgetStore", "Override",
           "Price", "PriceTable", "RedisBudgetStore", "Refusal", "Tab", "build_budgets", "period_id",
           "seconds_left"]


def build_budgets(settings: Settings, redis: aioredis.Redis | None, metrics: Metrics) -> Budgets:
    prices = PriceTable.load(settings.ivy_price_file)
    enabled = settings.budgets_enabled
    store: BudgetStore | None = None
    if enabled:
        store = MemoryBudgetStore() if redis is None else RedisBudgetStore(redis)
        if redis is None:
            log.warning("budgets_not_shared", message="no REDIS_URL: each process keeps its own budgets, so N "
                        "workers or hosts allow N times each org's budget")
    for model in {settings.gemini_model, settings.openai_model}:
        if prices.get(model) is None:
            log.warning("price_unknown", model=model, message="configured model has no price: cost unknown")
    return Budgets(prices, store, metrics, default=settings.budget_default, enabled=enabled,
                   exhausted=settings.ivy_budget_exhausted, soft_threshold=settings.ivy_budget_soft_threshold,
                   fail_open=settings.ai_rate_limit_fail_open,
                   hold_seconds=settings.ivy_request_deadline_max_seconds + 60)
