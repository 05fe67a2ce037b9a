"""The names every layer shares, defined once: which providers, intents, modals and cache
results exist. A bottom layer (like app.config): anything may import it, it imports nothing."""

from __future__ import annotations

from typing import Literal

RemoteProvider = Literal["gemini", "openai"]
ProviderName = Literal["gemini", "openai", "local"]
Intent = Literal["conversational", "rag", "modal"]
ModalType = Literal["email_composer", "lead_insights"]
# hit: served from the answer cache; miss: generated (and stored if cacheable); bypass: not used.
CacheStatus = Literal["hit", "miss", "bypass"]
# Each remote provider's `gen_ai.provider.name` (OpenTelemetry GenAI semantic conventions; Gemini's
# AI Studio API, generativelanguage.googleapis.com, is "gcp.gemini").
GEN_AI_PROVIDER: dict[str, str] = {"gemini": "gcp.gemini", "openai": "openai"}
