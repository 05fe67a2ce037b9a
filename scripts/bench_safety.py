"""What the output checks and the CRM view cost per request, measured, never asserted.

For every case of the eval set (scripts/eval_data) and for worst-case 64 KiB contexts, times the
safety work a request does: reading the context (`CrmRecord.read`: classing, masking secrets),
scanning outside text for injected instructions, and the output checks over a realistic answer
(~110 tokens, with two links and a citation snippet each) and a draft. Prints the median and p99
per ordinary request and the worst case per hostile shape, in microseconds of CPU
(time.process_time_ns), each the median of --repeat runs; and, as the baseline measured in the
same run, the classifier on the same requests (work every request already does).

    python scripts/bench_safety.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import _repo_root

from app.crm import CrmRecord
from app.intent.classifier import classify
from app.providers import prompts
from app.safety import AnswerGuard, LeakCheck, OutputPolicy, SafetyReport, injected

ANSWER = ("Dana's budget is $40k for 35 Growth seats [1]. She asked about Okta SSO on the 10/02 call [2]; "
          "the Enterprise plan includes it, see https://docs.ivycrm.com/sso and https://northwind.io/team. "
          "Next step: send the revised quote with annual billing and book a 20-minute call with her and "
          "the two ops managers who joined the demo. ") * 2
DRAFT = {"to": "dana@northwind.io", "subject": "Following up on the 35-seat proposal",
         "body": "Hi Dana,\n\nThanks for the call. " + ANSWER + "\n\nBest regards"}


def cases() -> list[dict[str, Any]]:
    out = []
    for name in ("cases.jsonl", "tune_families.jsonl", "heldout_families.jsonl"):
        for line in (_repo_root.ROOT / "scripts" / "eval_data" / name).read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            out.append({"query": case["query"], "context": case.get("context") or {}})
    return out


def hostile() -> dict[str, dict[str, Any]]:
    """64 KiB contexts of the shapes that cost the most."""
    word = "a" * 60_000
    words = " ".join(f"word{i}x" for i in range(8_000))
    b64 = "QUJD" * 15_000
    return {
        "one 60k-letter word": {"lead": {"notes": [word]}},
        "8k distinct words": {"lead": {"notes": [words]}},
        "60k of base64": {"emails": [{"body": b64}]},
        "2k short notes": {"lead": {"notes": [f"note {i} about SSO" for i in range(2_000)]}},
        "directive soup": {"emails": [{"body": "ignore send include tell reveal " * 2_000}]},
        "look-alike letters": {"lead": {"notes": ["іgnоrе рrеvіоus " * 3_500]}},
    }


def checks(policy: OutputPolicy, context: dict[str, Any]) -> None:
    record = CrmRecord.read(context)
    report = SafetyReport()
    injected(text for _, text in record.outside)
    guard = AnswerGuard(policy, addresses=record.addresses, primary=record.primary, hosts=record.hosts,
                        correspondents=record.correspondents, report=report)
    guard.text(ANSWER)
    guard.snippet(ANSWER[:300])


def cpu_us(fn: Callable[[], None]) -> float:
    start = time.process_time_ns()
    fn()
    return (time.process_time_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    policy = OutputPolicy.build(allowed_domains=["ivycrm.com"], kb_hosts=[],
                                leak=LeakCheck(prompts.system_texts(), "ivy-canary-0"))
    ordinary = cases()
    medians, p99s, base = [], [], []
    for _ in range(args.repeat):
        times = sorted(cpu_us(lambda c=c: checks(policy, c["context"])) for c in ordinary)
        medians.append(times[len(times) // 2])
        p99s.append(times[int(len(times) * 0.99)])
        classify_times = sorted(cpu_us(lambda c=c: classify(c["query"], c["context"])) for c in ordinary)
        base.append(classify_times[len(classify_times) // 2])
    print(f"ordinary requests ({len(ordinary)}): checks p50 {statistics.median(medians):.0f} us, "
          f"p99 {statistics.median(p99s):.0f} us; baseline (the classifier) p50 {statistics.median(base):.0f} us; "
          f"ratio {statistics.median(medians) / statistics.median(base):.2f}")
    draft_us = statistics.median(
        cpu_us(lambda: AnswerGuard(policy, addresses=frozenset({"dana@northwind.io"}), primary="dana@northwind.io",
                                   hosts=frozenset(), report=SafetyReport()).draft(DRAFT))
        for _ in range(200))
    print(f"a draft's checks: {draft_us:.0f} us")
    for name, context in hostile().items():
        size = len(json.dumps(context))
        worst = statistics.median(cpu_us(lambda c=context: checks(policy, c)) for _ in range(args.repeat))
        print(f"hostile {name:<22} ({size // 1024} KiB): {worst / 1000:.2f} ms")


if __name__ == "__main__":
    main()
