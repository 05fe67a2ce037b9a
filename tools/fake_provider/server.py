"""The fake provider's aiohttp server: both wire formats on one port, faults applied, answers paced.

Use it as an async context manager (``async with FakeProviderServer(port=0) as fake``; the
package's docstring shows more). A request's fault comes from its ``X-Fake-Fault`` header or
from the standing faults (``faults.py``); its answer from ``answers.py``, framed by ``openai.py``
or ``gemini.py``, timed by ``realism.py`` in realistic mode. The admin endpoints are in
``admin.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from types import TracebackType
from typing import Any, NamedTuple, Self

import orjson
from aiohttp import web

from tools.fake_provider import gemini, openai
from tools.fake_provider.admin import Admin
from tools.fake_provider.answers import Call, answer_text, chunks, estimate_tokens, out_tokens, regroup
from tools.fake_provider.faults import (
    DEFAULT_CHANCE,
    STREAM_FAULTS,
    FakeProvider,
    Fault,
    StandingFaults,
    make_fault,
    parse_fault_header,
)
from tools.fake_provider.realism import Realism, pad_to_tokens


class CapturedRequest(NamedTuple):
    """One provider request as the fake received it. ``path`` includes the query string."""

    path: str
    headers: dict[str, str]  # names lowercased
    json: Any  # parsed body, or None when it was not JSON


class FakeProviderServer:
    """The fake, usable as an async context manager. ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        answer_text: str | None = None,
        shutdown_timeout: float = 1.0,
        max_captured: int = 10_000,
        realism: Realism | None = None,
    ) -> None:
        self.realism = realism  # None: answers at once (plus latency_ms), else published timings
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.answer_text = answer_text  # None: "Fake answer to: <prompt>"
        self.json_answer: Any = None  # None: built from the schema
        self.obedient = False  # True: answer as a model that obeys every instruction it reads (obedient.py)
        self.requests: list[CapturedRequest] = []  # oldest dropped beyond max_captured (benchmarks)
        self.max_captured = max_captured
        # What this fake billed, as it reported it: "provider/model" -> calls, input and output tokens.
        self.usage: dict[str, dict[str, int]] = {}
        self._faults = StandingFaults()
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL; this is the Gemini base URL (google-genai appends /v1beta/...)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    async def start(self) -> None:
        self._closing.clear()
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()  # releases hanging handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- programmatic control ----------------------------------------------------------------

    def set_fault(self, kind: str, **params: Any) -> Fault:
        """Install a standing fault, e.g. ``set_fault("503", times=2, provider="openai")``.

        A fault scoped to one provider replaces that provider's previous one; the provider's own
        fault wins over an unscoped one. Faults that do not apply to a request (``stream_cut`` on a
        non-streaming call, ``malformed_json`` on a plain call) leave it alone and are not used up.
        """
        return self.install_fault(make_fault(kind, **params))

    def install_fault(self, fault: Fault) -> Fault:
        return self._faults.install(fault)

    def clear_faults(self, provider: FakeProvider | None = None) -> None:
        """Clear every standing fault, or only the one scoped to ``provider``."""
        self._faults.clear(provider)

    @property
    def faults(self) -> list[Fault]:
        return self._faults.all()

    def set_answer(self, text: str | None = None, *, json_answer: Any = None) -> None:
        """Fix the answer text (plain calls) and/or the JSON document (JSON-mode calls)."""
        self.answer_text = text
        self.json_answer = json_answer

    def set_obedient(self, on: bool = True) -> None:
        """Answer as a model that obeys every instruction in its prompt (``obedient.py``)."""
        self.obedient = on

    def requests_for(self, provider: FakeProvider) -> list[CapturedRequest]:
        if provider == "openai":
            return [r for r in self.requests if r.path.startswith("/v1/chat/")]
        return [r for r in self.requests if "/models/" in r.path]

    def billed(self, call: Call, text: str) -> None:
        """Count a call whose usage this fake reported (the same counts as on the wire)."""
        counts = self.usage.setdefault(f"{call.provider}/{call.model}", {"calls": 0, "input": 0, "output": 0})
        counts["calls"] += 1
        counts["input"] += estimate_tokens(call.prompt)
        counts["output"] += out_tokens(call, text)

    def reset(self) -> None:
        self.requests.clear()
        self.usage.clear()
        self._faults.clear()
        self.answer_text = None
        self.json_answer = None
        self.obedient = False

    # -- routing -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1beta/models/{model_action}", self._gemini)
        # google-genai >= 3 defaults to the v1 surface; serve it the same way.
        app.router.add_post("/v1/models/{model_action}", self._gemini)
        Admin(self).add_routes(app)
        return app

    async def _capture(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(CapturedRequest(request.path_qs, headers, body))
        if len(self.requests) > self.max_captured:
            del self.requests[: len(self.requests) - self.max_captured]
        return body

    def _pick_fault(self, request: web.Request, call: Call) -> Fault | None:
        header = request.headers.get("X-Fake-Fault")
        if header:
            return parse_fault_header(header)  # ValueError -> 400 from the caller
        return self._faults.take(call.provider, streaming=call.streaming, json_mode=call.json_mode)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        if not isinstance(body, dict):
            return openai.error(400, message="We could not parse the JSON body of your request.")
        call = openai.read_call(body)
        early = await self._apply_fault(request, call)
        if early is not None:
            return early
        refused = openai.refusal(request, call, body)
        return refused if refused is not None else await self._answer(request, call)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        model, _, action = request.match_info["model_action"].partition(":")
        if action not in gemini.ACTIONS:
            return gemini.error(404, message=f"Method not found: {action or '(none)'}.")
        if not isinstance(body, dict):
            return gemini.error(400, message="Invalid JSON payload received.")
        call = gemini.read_call(model, action, body)
        early = await self._apply_fault(request, call)
        if early is not None:
            return early
        refused = gemini.refusal(request, call, body)
        return refused if refused is not None else await self._answer(request, call)

    # -- faults ------------------------------------------------------------------------------

    async def _apply_fault(self, request: web.Request, call: Call) -> web.StreamResponse | None:
        """Sleep the latency, and answer right away for faults that replace the answer."""
        try:
            fault = self._pick_fault(request, call)
        except ValueError as exc:
            return self._error(call.provider, 400, message=f"bad X-Fake-Fault header: {exc}")
        call.fault = fault
        delay = self.latency_ms + (fault.latency_ms if fault else 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if fault is None:
            return None
        if fault.kind == "rate_limit":
            shown = f"{fault.retry_after:g}"
            return openai.rate_limited(call, shown) if call.provider == "openai" else gemini.rate_limited(shown)
        if fault.kind == "http_error":
            assert fault.status is not None
            return self._error(call.provider, fault.status, message=fault.message)
        if fault.kind == "bad_key":
            return openai.bad_key(request) if call.provider == "openai" else gemini.bad_key(request)
        if fault.kind == "brownout":
            rng = self.realism or DEFAULT_CHANCE
            if rng.chance(fault.share):
                call.stall = fault.seconds
            return None
        if fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            return None  # a very slow provider eventually answers
        if fault.kind == "reset":
            _abort_connection(request, rst=True)
            return web.Response(status=500)  # never reaches the client
        if fault.kind == "malformed_body":
            return web.Response(
                status=200, body=b'{"id": "broken", "choices": [', content_type="application/json"
            )
        return None

    def _error(self, provider: FakeProvider, status: int, *, message: str | None = None) -> web.Response:
        if provider == "openai":
            return openai.error(status, message=message)
        return gemini.error(status, message=message)

    # -- answering ---------------------------------------------------------------------------

    async def _answer(self, request: web.Request, call: Call) -> web.StreamResponse:
        fault = call.fault
        text = answer_text(call, fault, text=self.answer_text, json_answer=self.json_answer,
                           obedient=self.obedient)
        writing = 0.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        plan = None
        if self.realism is not None:
            scale = self.realism.time_scale
            plan = self.realism.plan(call.provider, json_mode=call.json_mode, max_tokens=call.max_tokens,
                                     stall=call.stall)
            call.output_tokens = plan.tokens
            if not call.json_mode and text and self.answer_text is None:
                text = pad_to_tokens(text, plan.tokens)
            writing = plan.writing * scale
            await self._sleep((plan.total if not call.streaming else plan.ttft) * scale)
        elif call.stall:
            await self._sleep(call.stall)
        if not call.streaming:
            payload = (openai.completion(call, text, self._ids) if call.provider == "openai"
                       else gemini.response(call, text, self._ids))
            response = web.Response(body=orjson.dumps(payload), content_type="application/json")
            self.billed(call, text)
            if plan is not None and self.realism is not None:
                took = loop.time() - began
                self.realism.measured(plan, first_byte=took, finished=took)
            return response

        deltas = chunks(text) if text else []
        if self.realism is not None and len(deltas) > 8:
            # Providers send a few tokens a chunk; about 8 tokens (32 characters) keeps the fake cheap.
            deltas = regroup(deltas, 32)
        events = (openai.stream_events(call, deltas, self._ids) if call.provider == "openai"
                  else gemini.stream_events(call, deltas, self._ids))
        kind = fault.kind if fault is not None else None
        split = len(events)
        if fault is not None and kind in STREAM_FAULTS:
            # Stop after `after` deltas, never after the last one (that would be a whole answer).
            stop_at = min(fault.after, max(len(deltas) - 1, 0))
            split = stop_at + (1 if call.provider == "openai" else 0)  # OpenAI leads with a role chunk
        head, tail = events[:split], events[split:]

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        pace = writing / max(1, len(events) - 1)  # the first chunk is out at ttft, the rest at speed
        if plan is not None and self.realism is not None:
            self.realism.measured(plan, first_byte=loop.time() - began)
        await self._write_events(resp, head, pace)
        if kind == "stream_cut":
            # The chunks already written reach the client, then the connection drops without the
            # terminating zero-length chunk: the client sees an incomplete payload.
            _abort_connection(request, rst=False)
            return resp
        if kind == "stream_error":
            status = fault.status if fault is not None and fault.status else 500
            await resp.write(openai.stream_error_event(status) if call.provider == "openai"
                             else gemini.stream_error_event(status))
        elif kind == "stream_stall":
            assert fault is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            await self._write_events(resp, tail, pace)
        elif kind != "stream_truncate":
            await self._write_events(resp, tail, pace)
        if kind not in STREAM_FAULTS and (call.include_usage or call.provider == "gemini"):
            self.billed(call, "".join(deltas))  # the usage went out with the last event
        await resp.write_eof()
        if plan is not None and self.realism is not None:
            self.realism.measured(plan, finished=loop.time() - began)
        return resp

    async def _write_events(self, resp: web.StreamResponse, events: list[bytes], pace: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        step = self.chunk_delay_ms / 1000 + pace
        start = loop.time()
        for i, event in enumerate(events):
            await resp.write(event)
            if step:
                # Absolute times, so the overhead of each write does not add up over a long answer.
                await asyncio.sleep(max(0.0, start + (i + 1) * step - loop.time()))

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops (a stalled answer must not block shutdown)."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)


def _abort_connection(request: web.Request, *, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()  # flushes what was written, then FIN
