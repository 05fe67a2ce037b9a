"""Provider timing as published, for the fake provider's realistic mode.

A call's plan: a time to first token (lognormal around the provider's median), an answer length
(lognormal, capped by the request's max output tokens) and an output speed. A non-streamed
answer arrives after ``ttft + tokens / speed``; a stream sends its first chunk at ``ttft`` and
the rest at ``speed``. The figures are the defaults of ``shared/reference/provider-latency.md``
(gemini-2.5-flash with thinking off, gpt-4.1-mini); every sleep is multiplied by ``time_scale``
so tests can run the same shapes in a tenth of the time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from app.providers.hedging import percentile


@dataclass(frozen=True, slots=True)
class Profile:
    ttft_median: float  # seconds
    speed_min: float  # output tokens per second
    speed_max: float
    ttft_sigma: float = 0.35
    answer_median: float = 110.0  # output tokens
    json_median: float = 160.0  # an email draft
    answer_sigma: float = 0.5


PROFILES: dict[str, Profile] = {
    "gemini": Profile(ttft_median=0.33, speed_min=217.0, speed_max=275.0),
    "openai": Profile(ttft_median=0.6, speed_min=77.0, speed_max=92.0),
}


@dataclass(frozen=True, slots=True)
class Plan:
    provider: str
    ttft: float  # seconds, before time_scale, stall included
    tokens: int
    speed: float
    stall: float = 0.0
    index: int = -1  # its place in Realism.plans

    @property
    def writing(self) -> float:
        return self.tokens / self.speed

    @property
    def total(self) -> float:
        return self.ttft + self.writing


@dataclass(slots=True)
class Realism:
    """Seeded plans per call, and a record of every plan for the benchmark's reference figures."""

    seed: int = 0
    time_scale: float = 1.0
    profiles: dict[str, Profile] = field(default_factory=lambda: dict(PROFILES))
    plans: list[Plan] = field(default_factory=list)
    # What the fake really took, by plan index: its own scheduling adds to the plan under load,
    # and the benchmark's reference must be the provider as the router met it.
    first_bytes: dict[int, float] = field(default_factory=dict)
    finishes: dict[int, float] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def plan(self, provider: str, *, json_mode: bool, max_tokens: int | None, stall: float = 0.0) -> Plan:
        p = self.profiles[provider]
        rng = self._rng
        ttft = p.ttft_median * rng.lognormvariate(0.0, p.ttft_sigma)
        median = p.json_median if json_mode else p.answer_median
        tokens = max(1, round(median * rng.lognormvariate(0.0, p.answer_sigma)))
        if max_tokens:
            tokens = min(tokens, max_tokens)
        if len(self.plans) >= 100_000:
            self.plans.clear()
            self.first_bytes.clear()
            self.finishes.clear()
        planned = Plan(provider, ttft + stall, tokens, rng.uniform(p.speed_min, p.speed_max), stall,
                       len(self.plans))
        self.plans.append(planned)
        return planned

    def measured(self, plan: Plan, *, first_byte: float | None = None, finished: float | None = None) -> None:
        """Seconds (in simulated time) the call really took to its first byte and to its end."""
        index = plan.index
        if first_byte is not None:
            self.first_bytes[index] = first_byte / self.time_scale
        if finished is not None:
            self.finishes[index] = finished / self.time_scale

    def chance(self, share: float) -> bool:
        return self._rng.random() < share

    def stats(self) -> dict[str, dict[str, float | int]]:
        """Per provider: how many calls were planned and their service and first-token percentiles."""
        out: dict[str, dict[str, float | int]] = {}
        for provider in sorted({p.provider for p in self.plans}):
            indexed = [(i, p) for i, p in enumerate(self.plans) if p.provider == provider]
            plans = [p for _, p in indexed]
            # Cancelled calls never finished: their plan stands for them.
            totals = sorted(self.finishes.get(i, p.total) for i, p in indexed)
            firsts = sorted(self.first_bytes.get(i, p.ttft) for i, p in indexed)
            out[provider] = {
                "calls": len(plans), "stalled": sum(1 for p in plans if p.stall),
                "service_p50_ms": _ms(totals, 50), "service_p95_ms": _ms(totals, 95),
                "service_p99_ms": _ms(totals, 99),
                "ttft_p50_ms": _ms(firsts, 50), "ttft_p95_ms": _ms(firsts, 95),
                "output_tokens_p50": sorted(p.tokens for p in plans)[len(plans) // 2],
            }
        return out


def _ms(sorted_values: list[float], q: float) -> float:
    return round(percentile(sorted_values, q) * 1000, 1)


FILLER = ("pipeline", "renewal", "pricing", "security", "onboarding", "timeline", "budget", "champion",
          "integration", "proposal", "stakeholder", "follow-up")


def pad_to_tokens(text: str, tokens: int) -> str:
    """``text`` lengthened with filler words to about ``tokens`` tokens (4 characters a token)."""
    words = [text]
    length = len(text)
    i = 0
    while length < tokens * 4:
        word = FILLER[i % len(FILLER)]
        words.append(word)
        length += len(word) + 1
        i += 1
    return " ".join(words)
