"""The output checks every answer passes before it leaves, and what they flag (flags.py).

- recipient.py: a draft goes to one of the lead's own addresses;
- links.py: links only to hosts the lead's record, the knowledge base or IVY_ALLOWED_LINK_DOMAINS name;
- markup.py: no HTML in draft fields;
- leak.py: the canary and the system text never leave;
- guard.py: all of it over a whole answer, a stream (word by word) or a draft;
- injection.py: injected instructions in outside text, flagged (never cached, never warmed).
"""

from app.safety.flags import FLAGS, Flag, SafetyReport
from app.safety.guard import AnswerGuard, OutputPolicy, TextFilter
from app.safety.injection import injected
from app.safety.leak import REFUSAL, LeakCheck, new_canary

__all__ = ["FLAGS", "REFUSAL", "AnswerGuard", "Flag", "LeakCheck", "OutputPolicy", "SafetyReport", "TextFilter",
           "injected", "new_canary"]
