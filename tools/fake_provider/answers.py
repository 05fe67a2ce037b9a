"""What a call asks for and the answer it gets: the text or JSON document, its tokens and stream deltas.

The JSON answer is a small valid instance of the request's schema (JSON Schema, or Gemini's
Schema with upper-case types), an email for to/subject/body schemas; a fixed text or document
(``FakeProviderServer.set_answer``) replaces it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from tools.fake_provider.faults import FakeProvider, Fault, break_json
from tools.fake_provider.obedient import obey


@dataclass(slots=True)
class Call:
    """What one provider request asks for, in provider-neutral terms."""

    provider: FakeProvider
    model: str
    prompt: str
    streaming: bool
    json_mode: bool
    schema: dict[str, Any] | None
    include_usage: bool = False
    fault: Fault | None = None
    max_tokens: int | None = None
    stall: float = 0.0  # brownout seconds, before time scale
    output_tokens: int | None = None  # realistic mode: the planned answer length
    system: str = ""  # the system text (OpenAI's system message, Gemini's systemInstruction)


def answer_text(call: Call, fault: Fault | None, *, text: str | None, json_answer: Any,
                obedient: bool = False) -> str:
    """The call's answer: ``text`` / ``json_answer`` when fixed, what an obedient model would say
    (``obedient.py``), else made up from the prompt or schema."""
    if obedient and text is None and json_answer is None:
        obeyed = obey(call.system, call.prompt, json_mode=call.json_mode)
        text, json_answer = (obeyed, None) if isinstance(obeyed, str) else (None, obeyed)
    if call.json_mode:
        doc = json_answer
        if doc is None:
            doc = build_json_answer(call.schema, call.prompt)
        # A str is the model's raw text (e.g. prose instead of JSON); anything else is serialised.
        answer = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
        if fault is not None and fault.kind == "malformed_json":
            answer = break_json(answer, fault.variant)
    else:
        answer = text if text is not None else f"Fake answer to: {call.prompt[:80]}"
    if fault is not None and fault.kind == "empty":
        answer = ""
    return answer


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def out_tokens(call: Call, text: str) -> int:
    return call.output_tokens if call.output_tokens is not None else estimate_tokens(text)


def positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def chunks(text: str) -> list[str]:
    """Split an answer into stream deltas: words for prose, short slices for compact JSON."""
    words = re.findall(r"\S+\s*", text)
    if len(words) >= 4 and "".join(words) == text:
        return words
    size = max(1, min(16, len(text) // 4 or 1))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def regroup(pieces: list[str], size: int) -> list[str]:
    """Join consecutive deltas up to ``size`` characters each."""
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + len(piece) <= size:
            out[-1] += piece
        else:
            out.append(piece)
    return out


_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


class _SchemaFiller:
    """Builds a small valid instance of a JSON Schema (or Gemini Schema, whose types are upper case)."""

    def __init__(self, root: dict[str, Any], prompt: str) -> None:
        self.root = root
        self.prompt = prompt
        # The question, as a model would answer it (not the data block the router puts first).
        self.summary = (prompt.rpartition("Question: ")[2] or prompt)[:80]

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in schema and seen < 20:
            ref = str(schema["$ref"])
            node: Any = self.root
            for part in ref.removeprefix("#/").split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            schema = node if isinstance(node, dict) else {}
            seen += 1
        return schema

    def build(self, schema: Any, name: str = "", depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 12:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = [s for s in schema.get(key) or [] if self._type_of(s) != "null"]
            if options:
                return self.build(options[0], name, depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.build(part, name, depth + 1) or {})
            return merged
        kind = self._type_of(schema)
        if kind == "object" or (kind is None and "properties" in schema):
            props: dict[str, Any] = schema.get("properties") or {}
            declared = list(schema.get("propertyOrdering") or schema.get("property_ordering") or [])
            order = declared + [k for k in props if k not in declared]
            return {key: self.build(props[key], key, depth + 1) for key in order if key in props}
        if kind == "array":
            count = max(1, int(schema.get("minItems", 1)))
            count = min(count, int(schema.get("maxItems", count)))
            singular = name[:-1] if name.endswith("s") else name
            return [self.build(schema.get("items") or {"type": "string"}, singular, depth + 1)
                    for _ in range(count)]
        if kind in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
            value = max(0, low) if isinstance(low, int | float) else 0
            if "exclusiveMinimum" in schema:
                value += 1
            maximum = schema.get("maximum")
            if isinstance(maximum, int | float) and value > maximum:
                value = maximum
            return int(value) if kind == "integer" else float(value)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, name)

    @staticmethod
    def _type_of(schema: Any) -> str | None:
        if not isinstance(schema, dict):
            return None
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        return str(kind).lower() if kind else None

    def _string(self, schema: dict[str, Any], name: str) -> str:
        key = name.lower()
        fmt = str(schema.get("format", "")).lower()
        emails = _EMAIL_RE.findall(self.prompt)
        if fmt == "email" or key in ("to", "email", "recipient", "cc", "from"):
            value = emails[0] if emails else ""  # no address in the prompt: a model leaves it to the sender
        elif fmt == "date-time":
            value = "2025-01-15T09:30:00Z"
        elif fmt == "date":
            value = "2025-01-15"
        elif fmt in ("uri", "url") or key in ("url", "link"):
            value = "https://example.com/"
        elif key == "subject":
            value = "Following up on our conversation"
        elif key == "body":
            value = (f"Hi Jordan,\n\nThanks for your time earlier. Fake answer to: {self.summary}\n\n"
                     "Would Thursday at 10am work for a short call?\n\nBest regards,\nAlex")
        elif key in ("summary", "answer", "text", "content", "reasoning", "explanation"):
            value = f"Fake answer to: {self.summary}"
        else:
            value = f"fake {name or 'value'}"
        min_len = int(schema.get("minLength", 0))
        if len(value) < min_len:
            value = value + "x" * (min_len - len(value))
        max_len = schema.get("maxLength")
        if isinstance(max_len, int):
            value = value[:max_len]
        return value


def build_json_answer(schema: dict[str, Any] | None, prompt: str) -> Any:
    """A deterministic instance of ``schema`` (an email for to/subject/body schemas)."""
    if not schema:
        return {"answer": f"Fake answer to: {prompt[:80]}"}
    return _SchemaFiller(schema, prompt).build(schema)

