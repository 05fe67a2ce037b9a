"""The email JSON tool: validate the model's draft, repair near-JSON, or fall back to ours.

`_make_email_json_fallback` is named in the on-call runbook ("Test fallback"); keep the name.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from json_repair import repair_json
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DraftCheck = Literal["valid", "repaired", "json_parse_error", "schema"]  # what parse_email found


class EmailDraft(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    to: str = Field(default="", max_length=320)
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)


_NAME_LIKE = re.compile(r"^[^\W\d_][\w'&\- ]*(?:\.|,? (?:Inc|Ltd|LLC|GmbH|S\.A)\.?)?$")


def _name_like(value: Any, max_words: int) -> str:
    """A record field only when it reads as a name (letters, a few separators, at most
    ``max_words`` words, no dots inside): anything else a prospect typed there is left out."""
    text = " ".join(str(value or "").split())
    if not text or len(text) > 80 or len(text.split()) > max_words or not _NAME_LIKE.match(text):
        return ""
    return text


def _first_name(lead: dict[str, Any]) -> str:
    name = _name_like(lead.get("name"), 5)
    return name.split()[0] if name else "there"


def _make_email_json_fallback(lead: dict[str, Any], query: str) -> dict[str, str]:
    """A deterministic, sendable draft built from the lead's own data. It quotes no outside text:
    the lead's name and company when they read as names, and the computed stage; never a note or
    an email (a prospect wrote those)."""
    company = _name_like(lead.get("company"), 6)
    stage = str(lead.get("stage") or "").strip().lower()
    q = query.lower()
    if "follow" in q or stage in ("proposal", "negotiation", "demo"):
        subject = f"Following up{' with ' + company if company else ''}"
        opener = "I wanted to follow up on our last conversation"
    elif "thank" in q:
        subject = "Thank you for your time"
        opener = "Thank you for taking the time to speak with me"
    else:
        subject = f"Ivy CRM for {company}" if company else "Quick question"
        opener = "I'm reaching out to see how we can help"
    context_line = f" and see where things stand for {company}" if company else ""
    body = (
        f"Hi {_first_name(lead)},\n\n{opener}{context_line}.\n\n"
        "Would you have 20 minutes this week for a quick call? I'm happy to work around your schedule.\n\n"
        "Best regards"
    )
    return {"to": str(lead.get("email") or ""), "subject": subject, "body": body}



# The public name the pipeline and the offline provider use; the runbook names the one above.
make_email_json_fallback = _make_email_json_fallback

def parse_email(raw: str) -> tuple[EmailDraft | None, DraftCheck]:
    """Validate the model's text as an EmailDraft: as is, else after repairing near-JSON."""
    repaired = False
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            data = repair_json(raw, return_objects=True)
        except Exception:  # json-repair raises assorted errors on hopeless input
            return None, "json_parse_error"
        repaired = True
        if not isinstance(data, dict) or not data:
            return None, "json_parse_error"
    if not isinstance(data, dict):
        return None, "schema"
    try:
        draft = EmailDraft.model_validate(data)
    except ValidationError:
        return None, "schema"
    return draft, "repaired" if repaired else "valid"
