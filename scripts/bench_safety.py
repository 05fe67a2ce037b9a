"""What the output checks and the CRM view cost per request, measured, never asserted.

For every case of the eval set (scripts/eval_data) and for worst-case 64 KiB contexts, times the
safety work a request does: reading the context (`CrmRecord.read`: classing, masking secrets),
scanning outside text for injected instructions, and the output checks over a realistic answer
(~110 tokens, with two links) and each citation's snippet. The baseline, measured in the same run
and interleaved case by case, is the same request's work without the checks (normalise,
classify, retrieve, render the prompt, as `pipeline.plan` does); "added" is, per request, the time
with the checks less the time without, its p50 over the eval set. CPU time
(time.process_time_ns), each figure the median of --repeat runs.

    flock /tmp/ivy-bench.lock python scripts/bench_safety.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import _repo_root

from app.config import Settings
from app.crm import CrmRecord
from app.intent.classifier import classify
from app.intent.normalise import read
from app.pipeline import build_generation_request
from app.providers import prompts
from app.providers.base import Passage
from app.retrieval.retriever import KnowledgeBase, retrieve
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


class Work:
    """One request's work as `pipeline.plan` and the output checks do it, with or without the checks."""

    def __init__(self) -> None:
        self.kb = KnowledgeBase.from_folder(Settings(_env_file=None).ivy_knowledge_dir)
        self.policy = OutputPolicy.build(allowed_domains=["ivycrm.com"], kb_hosts=[],
                                         leak=LeakCheck(prompts.system_texts(), CANARY))

    def plain(self, query: str, context: dict[str, Any], lead: dict[str, Any]) -> list[Passage]:
        question = read(query)
        c = classify(query, context, normalised=question)
        passages = retrieve(query, context, self.kb, tokens=question.tokens) if c.intent == "rag" else []
        build_generation_request(CANARY, query, lead, c, passages)
        return passages

    def without_checks(self, case: dict[str, Any]) -> None:
        context = case["context"]
        self.plain(case["query"], context, context.get("lead") if isinstance(context.get("lead"), dict) else {})

    def with_checks(self, case: dict[str, Any]) -> None:
        record, guard = read_checks(self.policy, case["context"])
        output_checks(guard, self.plain(case["query"], record.context, record.lead))

    def checks_only(self, case: dict[str, Any]) -> None:
        checks(self.policy, case["context"])


CANARY = "ivy-canary-0123456789abcdef"
SNIPPET = [Passage("lead.notes[0]", ANSWER[:300])]


def read_checks(policy: OutputPolicy, context: dict[str, Any]) -> tuple[CrmRecord, AnswerGuard]:
    """The checks before the model: the record (classing, secrets) and the injection scan."""
    record = CrmRecord.read(context)
    report = SafetyReport()
    injected(text for _, text in record.outside)
    return record, AnswerGuard(policy, addresses=record.addresses, primary=record.primary, hosts=record.hosts,
                               correspondents=record.correspondents, report=report)


def output_checks(guard: AnswerGuard, passages: list[Passage]) -> None:
    """The checks after: the answer and each citation's snippet."""
    guard.text(ANSWER)
    for passage in passages:
        guard.snippet(passage.text[:300])


def checks(policy: OutputPolicy, context: dict[str, Any]) -> None:
    output_checks(read_checks(policy, context)[1], SNIPPET)


def cpu_us(fn: Callable[[], object]) -> float:
    start = time.process_time_ns()
    fn()
    return (time.process_time_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Work()
    policy = work.policy
    ordinary = cases()
    for case in ordinary[:50]:  # warm-up: imports, caches
        work.with_checks(case)
        work.without_checks(case)
    alone, alone99, base, checked, added = [], [], [], [], []
    for _ in range(args.repeat):
        plain_us, checked_us, diff = [], [], []
        for case in ordinary:
            a = cpu_us(lambda c=case: work.without_checks(c))
            b = cpu_us(lambda c=case: work.with_checks(c))
            plain_us.append(a)
            checked_us.append(b)
            diff.append(b - a)
        times = sorted(cpu_us(lambda c=c: work.checks_only(c)) for c in ordinary)
        alone.append(times[len(times) // 2])
        alone99.append(times[int(len(times) * 0.99)])
        base.append(statistics.median(plain_us))
        checked.append(statistics.median(checked_us))
        added.append(statistics.median(diff))
    m = statistics.median
    print(f"ordinary requests ({len(ordinary)}), median of {args.repeat} runs, us of CPU per request:")
    print(f"  without checks p50 {m(base):.0f}; with checks p50 {m(checked):.0f}; added p50 {m(added):.0f}"
          f" (paired, per request)")
    print(f"  the checks alone: p50 {m(alone):.0f}, p99 {m(alone99):.0f}")
    draft_us = statistics.median(
        cpu_us(lambda: AnswerGuard(policy, addresses=frozenset({"dana@northwind.io"}), primary="dana@northwind.io",
                                   hosts=frozenset(), report=SafetyReport()).draft(DRAFT))
        for _ in range(200))
    print(f"a draft's checks: {draft_us:.0f} us")
    for name, context in hostile().items():
        size = len(json.dumps(context))
        worst = statistics.median(cpu_us(lambda c=context: checks(policy, c))
                                  for _ in range(args.repeat))
        print(f"hostile {name:<22} ({size // 1024} KiB): checks {worst / 1000:.2f} ms")


if __name__ == "__main__":
    main()
