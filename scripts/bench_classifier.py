"""How fast is the intent classifier? Prints per-query latency percentiles (µs); not a test.

    python scripts/bench_classifier.py [--rounds 200]

Every eval query (with its context and flags) goes through `classify` `--rounds` times, each
call timed on its own with `perf_counter_ns`; the first round is a warm-up and not counted.
Timing figures belong here, not in the unit tests, where a busy CI machine would make them flaky.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `cd scripts && python bench_classifier.py` must find `app`
    sys.path.insert(0, str(ROOT))

from app.intent.classifier import classify  # noqa: E402

CASES = ROOT / "scripts" / "eval_data"  # every *.jsonl in it


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="timed calls per query (default 200)")
    parser.add_argument("--cases", type=Path, default=CASES, help="a JSON-lines file or a folder of them")
    args = parser.parse_args(argv)

    files = sorted(args.cases.glob("*.jsonl")) if args.cases.is_dir() else [args.cases]
    cases = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    inputs = [
        (c["query"], c.get("context") or {}, bool((c.get("flags") or {}).get("IVY_MODAL_HEURISTICS", True)))
        for c in cases
    ]
    for query, context, flag in inputs:  # warm-up: imports, caches, branch predictors
        classify(query, context, modal_heuristics=flag)

    samples: list[float] = []
    per_query_p99: list[float] = []
    clock = time.perf_counter_ns
    for query, context, flag in inputs:
        mine: list[float] = []
        for _ in range(args.rounds):
            start = clock()
            classify(query, context, modal_heuristics=flag)
            mine.append((clock() - start) / 1000)
        mine.sort()
        per_query_p99.append(_percentile(mine, 0.99))
        samples.extend(mine)
    samples.sort()
    slowest = max(range(len(inputs)), key=lambda i: per_query_p99[i])

    print(f"classifier latency over {len(inputs)} eval queries x {args.rounds} rounds ({len(samples)} calls)")
    print(f"  p50  {_percentile(samples, 0.50):8.1f} µs")
    print(f"  p90  {_percentile(samples, 0.90):8.1f} µs")
    print(f"  p99  {_percentile(samples, 0.99):8.1f} µs")
    print(f"  max  {samples[-1]:8.1f} µs")
    print(f"  mean {statistics.fmean(samples):8.1f} µs")
    print(f"  slowest query by its own p99: {per_query_p99[slowest]:.1f} µs  {inputs[slowest][0]!r}")
    print(f"  budget: p99 <= 200 µs -> {'OK' if _percentile(samples, 0.99) <= 200 else 'OVER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
