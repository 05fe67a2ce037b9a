"""The price table: USD per million tokens per model (input, cached input, output), each with the
date it applies from, the page it is published on and when it was last checked. Shipped as package data (prices.json);
IVY_PRICE_FILE replaces it with a file of the same shape.

Costs are integers of nano-USD (1e-9 USD): every listed price has at most three decimals per
million tokens, so a token costs a whole number of nano-USD and sums are exact (no float drift
between a reservation, its settlement and the spend Redis adds up).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import orjson

NANO_PER_USD = 1_000_000_000


class PriceFileError(ValueError):
    """The price file is not the table's shape (raised at start, naming the model and field)."""


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input: int  # nano-USD per token
    cached_input: int
    output: int
    as_of: str
    source: str
    checked: str = ""  # when the price was last checked against public pricing (prices.json: checked_against)

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """nano-USD of one call; ``cached_tokens`` are the part of ``input_tokens`` the provider's cache served."""
        cached = min(max(cached_tokens, 0), input_tokens)
        return (input_tokens - cached) * self.input + cached * self.cached_input + output_tokens * self.output

    def describe(self) -> dict[str, object]:
        per_m = NANO_PER_USD // 1_000_000
        return {"input": self.input / per_m, "cached_input": self.cached_input / per_m, "output": self.output / per_m,
                "as_of": self.as_of, "source": self.source, "checked": self.checked}


def _per_token(model: str, field: str, raw: object) -> int:
    """USD per million tokens (a string or number) as nano-USD per token, refused if not exact."""
    try:
        value = Decimal(str(raw)) * 1000
    except InvalidOperation:
        raise PriceFileError(f"{model}.{field}={raw!r} is not a number") from None
    if value < 0 or value != value.to_integral_value():
        raise PriceFileError(f"{model}.{field}={raw!r}: need a non-negative price with at most 3 decimals")
    return int(value)


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    @classmethod
    def parse(cls, raw: bytes) -> PriceTable:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PriceFileError(f"not JSON: {exc}") from None
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, dict) or not models:
            raise PriceFileError('need {"models": {"<model>": {"input", "cached_input", "output", "as_of", "source"}}}')
        prices = {}
        for model, entry in models.items():
            if not isinstance(entry, dict):
                raise PriceFileError(f"{model}: not an object")
            missing = [f for f in ("input", "output", "as_of", "source") if not entry.get(f)]
            if missing:
                raise PriceFileError(f"{model}: missing {', '.join(missing)}")
            prices[model] = Price(model, _per_token(model, "input", entry["input"]),
                                  _per_token(model, "cached_input", entry.get("cached_input", entry["input"])),
                                  _per_token(model, "output", entry["output"]), str(entry["as_of"]),
                                  str(entry["source"]), str(entry.get("checked", "")))
        return cls(prices)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The shipped table, or the file at ``path`` (IVY_PRICE_FILE)."""
        if path is None:
            return cls.parse(resources.files(__package__).joinpath("prices.json").read_bytes())
        return cls.parse(path.read_bytes())

    def get(self, model: str) -> Price | None:
        """A model's price; a dated snapshot name (``gpt-4.1-mini-2025-04-14``) falls back to its family."""
        found = self.prices.get(model.removeprefix("models/"))
        if found is None:
            family = max((m for m in self.prices if model.startswith(m + "-")), key=len, default=None)
            found = self.prices.get(family) if family else None
        return found
