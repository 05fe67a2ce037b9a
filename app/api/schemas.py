"""Request and response bodies of the public endpoints (these are what /openapi.json shows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

# The answer's models are the core's (the pipeline builds them); the API documents and sends them.
from app.domain import Citation, Fallback, IntentInfo, Modal, RouterResponse
from app.vocabulary import ProviderName

__all__ = ["Citation", "ErrorResponse", "Fallback", "IntentInfo", "Modal", "RouterRequest", "RouterResponse",
           "V1Response"]

MAX_QUERY_CHARS = 8000
# Blank means ASCII whitespace only, so that the code and the documented pattern (which every JSON
# Schema regex engine reads alike) agree on every string.
_BLANK = " \t\n\r\f\v"
NOT_BLANK_PATTERN = r"[^ \t\n\r\f\v]"


class RouterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str = Field(
        description=f"What the rep typed: 1..{MAX_QUERY_CHARS} characters, not blank (at least one character "
                    "other than space, tab, CR, LF, FF, VT); surrounding whitespace is trimmed.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": NOT_BLANK_PATTERN},
    )
    context: dict[str, Any] = Field(default_factory=dict, description="CRM context: lead, activities, emails.")
    stream: StrictBool = Field(default=False, description="Answer as server-sent events.")

    @field_validator("query", mode="after")
    @classmethod
    def _trim(cls, value: str) -> str:
        if len(value) > MAX_QUERY_CHARS:
            raise ValueError(f"query must be at most {MAX_QUERY_CHARS} characters")
        value = value.strip(_BLANK)
        if not value:
            raise ValueError("query must not be empty or blank")
        return value



class V1Response(BaseModel):
    request_id: str
    response: str
    intent: Literal["conversational", "rag"]
    provider: ProviderName
    model: str


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
