"""What the output checks did to one answer, for the response's `safety`, the log line and a metric.

    recipient_replaced      the draft's `to` was not one of the lead's own addresses
    link_removed            a link to a host outside the lead's record, the KB and IVY_ALLOWED_LINK_DOMAINS
    markup_removed          HTML in a draft field (the frontend renders them)
    prompt_leak             the answer held the canary or a long run of the system text: replaced by a refusal
    untrusted_instructions  outside text (notes, emails, activities, free text) tries to instruct the model
    secret_masked           a key-shaped or high-entropy token in the CRM data was masked before the prompt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Flag = Literal["recipient_replaced", "link_removed", "markup_removed", "prompt_leak", "untrusted_instructions",
               "secret_masked"]
FLAGS: tuple[Flag, ...] = ("recipient_replaced", "link_removed", "markup_removed", "prompt_leak",
                           "untrusted_instructions", "secret_masked")
# Flags that mean the model may have been steered: such an answer is never cached or warmed.
STEERED: frozenset[Flag] = frozenset({"recipient_replaced", "link_removed", "markup_removed", "prompt_leak",
                                      "untrusted_instructions"})


@dataclass(slots=True)
class SafetyReport:
    """Collected over one request; flags in the order they were first raised."""

    flags: list[Flag] = field(default_factory=list)
    secrets_masked: int = 0
    links_removed: int = 0

    def flag(self, flag: Flag) -> None:
        if flag not in self.flags:
            self.flags.append(flag)

    @property
    def steered(self) -> bool:
        return any(f in STEERED for f in self.flags)
