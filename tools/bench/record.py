"""The run's data: the plans, the targets, and what the record derives from them (the latency over
(a), the ratios, the targets' checks) and the JSON file it is written to."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.bench import ROOT, fmt
from tools.bench.servers import Server
from tools.bench.wrk import WrkResult


@dataclass(frozen=True)
class Plan:
    """Durations and load levels of one mode."""

    point_seconds: int  # each measured wrk run
    warmup_seconds: int  # unrecorded wrk run before a target's points
    levels: tuple[int, ...]  # throughput levels besides c=1
    slow_seconds: int  # the 300 ms / 500 connection point
    soak_seconds: int
    soak_interval: float  # seconds between /proc samples
    litellm_point_seconds: int  # LiteLLM answers ~tens of req/s: a few seconds per point is enough
    repeats: int = 1  # c=1, c=10, c=50: this many runs of point_seconds/repeats, the median (by req/s) kept
    slow_paced: bool = True  # the 300 ms case again with paced connections (informative; not in --quick)


QUICK = Plan(point_seconds=2, warmup_seconds=1, levels=(50,), slow_seconds=2, soak_seconds=15, soak_interval=1.0,
             litellm_point_seconds=2, slow_paced=False)
FULL = Plan(point_seconds=15, warmup_seconds=3, levels=(10, 50), slow_seconds=30, soak_seconds=600,
            soak_interval=5.0, litellm_point_seconds=10, repeats=3)


@dataclass
class Target:
    key: str
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    server: Server | None = None
    points: dict[str, WrkResult] = field(default_factory=dict)
    status: str = "pending"  # measured | not measured
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def saturation(self) -> float | None:
        values = [p.rps for k, p in self.points.items() if k.startswith("c") and k != "c1"]
        return max(values) if values else None

    def errors(self) -> int:
        return sum(p.errors_total for p in self.points.values()) + int(self.extra.get("hidden_errors", 0))


def overhead(t: Target, a: Target) -> dict[str, float | None]:
    def diff(point: str, q: str) -> float | None:
        tp, ap = t.points.get(point), a.points.get(point)
        x = getattr(tp, q) if tp else None
        y = getattr(ap, q) if ap else None
        return None if x is None or y is None else round(x - y, 3)

    return {"c1_p50": diff("c1", "p50_ms"), "c1_p99": diff("c1", "p99_ms"),
            "moderate_p50": diff("moderate", "p50_ms"), "moderate_p99": diff("moderate", "p99_ms")}


def point_rps(targets: dict[str, Target], key: str, point: str = "c50") -> float | None:
    t = targets.get(key)
    if t is None or t.status != "measured" or point not in t.points or not t.points[point].requests:
        return None
    return t.points[point].rps


def ratios(targets: dict[str, Target]) -> dict[str, float | None]:
    b, c, d, a = (point_rps(targets, k) for k in "bcda")

    def sat(key: str) -> float | None:
        t = targets.get(key)
        return t.saturation() if t is not None and t.status == "measured" else None

    bs, cs, ds = sat("b"), sat("c"), sat("d")
    return {
        "c_over_b_c50": round(c / b, 3) if b and c else None,
        "c_over_d_c50": round(c / d, 2) if c and d else None,
        "a_over_b_c50": round(a / b, 2) if a and b else None,
        "c_over_b_saturation": round(cs / bs, 3) if bs and cs else None,
        "c_over_d_saturation": round(cs / ds, 2) if cs and ds else None,
    }


# A leak grows with the requests; a connection pool that reaches a new high-water mark in a rare
# burst of the Poisson load adds a few fds, bounded by the concurrency. At 200 requests/s, one fd
# leaked per 1,000 requests is 12 a minute: far above these limits.
FD_SECOND_HALF_GROWTH_MAX = 5
FD_SLOPE_MAX_PER_MIN = 1.0
RSS_SLOPE_MAX_MB_PER_MIN = 0.5


def checks(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured values, from a record alone (so a saved run can be
    re-evaluated). Informative: never changes the exit code."""
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: str, ok: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": measured,
                    "status": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    r = rec["ratios"]
    cb, cd = r.get("c_over_b_c50"), r.get("c_over_d_c50")
    add("throughput c/b at c=50", ">= 0.5", fmt(cb, 3), None if cb is None else cb >= 0.5)
    add("throughput c/d at c=50", ">= 10", fmt(cd, 1), None if cd is None else cd >= 10)
    over = rec["targets"].get("c", {}).get("over_a_ms") or {}
    p50, p99 = over.get("c1_p50"), over.get("c1_p99")
    add("c=1 latency (c)-(a) p50", "<= 0.8 ms", f"{fmt(p50, 3)} ms", None if p50 is None else p50 <= 0.8)
    add("c=1 latency (c)-(a) p99", "<= 2 ms", f"{fmt(p99, 3)} ms", None if p99 is None else p99 <= 2.0)
    slow = rec.get("slow_upstream")
    if slow:
        routed = slow["router"]
        errs = routed["errors_total"] + slow["hidden_errors"]
        add(f"300 ms upstream, {slow['connections']} conns: errors", "0", str(errs),
            errs == 0 and routed["requests"] > 0)
        p99 = routed["p99_ms"]
        add(f"300 ms upstream, {slow['connections']} conns: p99", "< 320 ms", f"{fmt(p99, 1)} ms",
            None if p99 is None else p99 < 320)
    else:
        add("300 ms upstream, 500 conns", "0 errors, p99 < 320 ms", "not measured", None)
    soak = rec.get("soak")
    if soak:
        label = f"soak {soak['seconds']} s" + (" (quick)" if soak["quick"] else "")
        rss, fds = soak["rss_mb"], soak["fds"]
        slope = rss.get("slope_per_min_second_half")
        add(f"{label}: RSS max", "< 250 MB", f"{fmt(rss.get('max'), 1)} MB",
            None if rss.get("max") is None else rss["max"] < 250)
        add(f"{label}: RSS slope (2nd half)", f"<= {RSS_SLOPE_MAX_MB_PER_MIN} MB/min (flat)",
            f"{fmt(slope, 3)} MB/min", None if slope is None else slope <= RSS_SLOPE_MAX_MB_PER_MIN)
        fd_slope, high1, high2 = fds.get("slope_per_min_second_half"), fds.get("max_first_half"), fds.get(
            "max_second_half")
        goal = f"2nd half: new high <= +{FD_SECOND_HALF_GROWTH_MAX}, slope <= {FD_SLOPE_MAX_PER_MIN:g}/min"
        add(f"{label}: fds", goal,
            f"{fmt(fds.get('first'), 0)} -> {fmt(fds.get('last'), 0)}, highs {fmt(high1, 0)}/{fmt(high2, 0)}, "
            f"slope {fmt(fd_slope, 2)}/min",
            None if fd_slope is None or high1 is None or high2 is None
            else fd_slope <= FD_SLOPE_MAX_PER_MIN and high2 - high1 <= FD_SECOND_HALF_GROWTH_MAX)
        errs = soak["load"]["errors_total"] + soak["hidden_errors"]
        add(f"{label}: errors", "0", str(errs), errs == 0)
    else:
        add("soak", "RSS flat < 250 MB, no fd growth", "not measured", None)
    return out


def write_json(path: Path, record: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def default_json_path(now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return ROOT / "bench-results" / f"bench-{stamp}.json"
