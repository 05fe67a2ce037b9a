"""A fake OpenAI + Gemini server on loopback, for tests, the benchmark and the local demo.

It speaks both real wire formats (response bodies, SSE framing, error bodies) closely enough
that the official SDKs parse its answers, and it can be told to misbehave.

Run it (from the repository's root)::

    python -m tools.fake_provider --port 9100 [--latency-ms 150] [--chunk-delay-ms 20]
    python -m tools.fake_provider --port 9100 --realistic [--seed 7] [--time-scale 0.1]
    # then OPENAI_BASE_URL=http://127.0.0.1:9100/v1  GEMINI_BASE_URL=http://127.0.0.1:9100

Realistic mode (``realism.py``) answers after the published providers' time to first token and
output speed, with lognormal answer lengths capped by the request's max output tokens and the
sampled counts in ``usage``; ``GET /_fake/stats`` gives the planned service times per provider.

Or in a test::

    async with FakeProviderServer(port=0) as fake:
        fake.base_url            # http://127.0.0.1:<port>  (Gemini base URL)
        fake.openai_base_url     # http://127.0.0.1:<port>/v1
        fake.set_fault("429", retry_after=2, times=1, provider="gemini")
        fake.requests            # [CapturedRequest(path, headers, json), ...]

Endpoints:

- ``POST /v1/chat/completions`` (OpenAI; ``"stream": true`` answers with SSE ending ``data: [DONE]``)
- ``POST /v1beta/models/{model}:generateContent`` (Gemini; also under ``/v1/models/``, the
  google-genai 3.x default)
- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (Gemini SSE, CRLF framing, no sentinel)
- admin, never captured: ``GET /_fake/health``, ``POST|DELETE /_fake/fault``, ``POST /_fake/answer``,
  ``GET|DELETE /_fake/requests``, ``POST /_fake/reset``, ``POST /_fake/realism``, ``GET /_fake/stats``

Faults come from the ``X-Fake-Fault`` request header (that request only) or from a standing
setting (``set_fault()`` / ``POST /_fake/fault``), optionally scoped to one provider and
optionally limited to N uses. Header syntax: ``kind[; key=value ...]``, for example
``429; retry_after=2``, ``latency; ms=300``, ``stream_cut; after=3``, ``hang; seconds=5``,
``brownout; share=0.2; seconds=4``,
``malformed_json; variant=fenced``, ``503; latency_ms=200``. See ``FAULT_KINDS``.

``set_obedient()`` (or ``POST /_fake/answer {"obedient": true}``) answers as a model that obeys
every instruction in its prompt (``obedient.py``): the adversarial tests' worst case.

Modules: ``faults.py`` (fault kinds, header syntax, standing faults), ``answers.py`` (answer text,
JSON from a schema, tokens, stream deltas), ``openai.py`` and ``gemini.py`` (the wire formats),
``server.py`` (the aiohttp server), ``admin.py`` (``/_fake/*``), ``realism.py`` (published
timings), ``__main__.py`` (the command line).
"""

from tools.fake_provider.answers import build_json_answer
from tools.fake_provider.faults import FAULT_KINDS, FakeProvider, Fault, make_fault, parse_fault_header
from tools.fake_provider.realism import Realism
from tools.fake_provider.server import CapturedRequest, FakeProviderServer

__all__ = [
    "FAULT_KINDS",
    "CapturedRequest",
    "FakeProvider",
    "FakeProviderServer",
    "Fault",
    "Realism",
    "build_json_answer",
    "make_fault",
    "parse_fault_header",
]
