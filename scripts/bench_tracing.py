#!/usr/bin/env python3
"""What tracing costs: the router's CPU per request with tracing off and on (100% sampling,
exporting over OTLP/HTTP to a local receiver), at realistic latency.

    flock /tmp/ivy-bench.lock python scripts/bench_tracing.py [--runs 3] [--requests 400] [--time-scale 0.2]
    flock /tmp/ivy-bench.lock python scripts/bench_tracing.py --callgrind [--runs 1] [--requests 100]

The router (uvicorn, one worker, no Redis, answer cache off so every request reaches a provider)
runs in front of the fake provider in realistic mode (bench_realistic.py's mix: greetings, lead
and knowledge-base questions, drafts, insights; real answer lengths and speeds, scaled by
--time-scale). Modes, each a fresh router; a run measures base, off and on back to back, in the
reverse order every other run:

- `base`, with `--base-ref REF` only: the code at REF (before tracing), extracted with `git archive`
  and served by the same venv: what "off" is measured against. On main no commit is this code
  without tracing (issues 19-23 landed after tracing's first commit), so off's own cost is the
  in-process figure of the off helpers below;
- `off`: no OTLP endpoint;
- `on`: OTEL_EXPORTER_OTLP_ENDPOINT at a receiver in this process (it decodes every export with
  opentelemetry-proto and counts the spans), sampler parentbased_always_on.

CPU per request = the router process's CPU time (every thread's, /proc/PID/task/*/schedstat) over
the requests and the batch processor's export delay after them (so exporting is counted), less
what the same router spent idle over an equal window just before. Prints each mode's median and
on-minus-off, off-minus-base as the median of the differences within a run (the machine's drift
between runs cancels; a difference of medians does not cancel it). Also times, in this process,
the code the off path added per request (the log line's grep guard, the trace-id processor,
request-id drawing) and the span work of a traced request.

`--callgrind`: the router runs under valgrind's callgrind, instrumentation switched on
(`callgrind_control`) only over the idle and loaded windows, and the figure is instructions per
request instead of CPU time: repeatable whatever else the machine does (the client, the fake
provider and other jobs are not counted), ~50x slower, so fewer requests; no in-process timings.
Loopback only; bounded in count and time. A benchmark: it measures, it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for tools.*)
import aiohttp
import orjson
from aiohttp import web
from bench_realistic import fire, wait_up
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tools.bench.servers import Server, realistic_fake, wait_ready
from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
EXPORT_WAIT_SECONDS = 6.5  # past the batch span processor's 5 s schedule delay


class Receiver:
    """A minimal OTLP/HTTP traces receiver: decodes each export, counts its spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        self.spans += sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def start(self) -> web.AppRunner:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process (event loop, log writer, span exporter), in ns
    resolution (/proc/PID/task/*/schedstat; /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def base_tree(ref: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="ivy-bench-base-"))
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


async def one_run(mode: str, args: argparse.Namespace, fake_base: str, receiver: Receiver, base: Path,
                  session: aiohttp.ClientSession) -> dict[str, Any]:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix=f"ivy-bench-tracing-{mode}-"))
    env = {**os.environ, "GEMINI_API_KEY": "bench-gemini-key-000000", "OPENAI_API_KEY": "bench-openai-key-000000",
           "GEMINI_BASE_URL": fake_base, "OPENAI_BASE_URL": f"{fake_base}/v1", "AI_RATE_LIMIT_PER_MIN": "1000000",
           "AI_ORG_RATE_LIMIT_PER_MIN": "1000000", "IVY_LOG_FILE": str(logdir / "ai_router.log"),
           "IVY_CACHE_ENABLED": "false", "IVY_CACHE_WARMUP_PER_MIN": "0"}
    for name in [k for k in env if k.startswith("OTEL_") or k == "REDIS_URL"]:
        env.pop(name)
    if mode == "on":
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
                   OTEL_TRACES_SAMPLER="parentbased_always_on")
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning"]
    if args.callgrind:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={logdir / 'callgrind.out'}", *command]
    router = Server(f"router-{mode}", command, env=env, port=port, log=logdir / "uvicorn.log",
                    cwd=base if mode == "base" else ROOT).start()
    counter = Instructions(router.pid) if args.callgrind else Cpu(router.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, router, "GET", "/health", timeout=600 if args.callgrind else 30)
        await fire(session, url, 30, args.concurrency, False, seed=1)  # warm
        await asyncio.sleep(EXPORT_WAIT_SECONDS)  # the warm-up's spans exported before the count starts
        counter.start()
        # What the idle router spends (its background loops), to subtract from the loaded window.
        idle_from, idle_count = time.monotonic(), counter.read()
        await asyncio.sleep(EXPORT_WAIT_SECONDS)
        idle_rate = (counter.read() - idle_count) / (time.monotonic() - idle_from)
        spans_before, count_before, started = receiver.spans, counter.read(), time.monotonic()
        samples = await fire(session, url, args.requests, args.concurrency, False, seed=args.seed)
        wall = time.monotonic() - started
        await asyncio.sleep(EXPORT_WAIT_SECONDS)
        count = counter.read() - count_before - idle_rate * (time.monotonic() - started)
    finally:
        router.stop()
    ok = sum(s.status == 200 for s in samples)
    real = sum(s.provider in ("gemini", "openai") for s in samples)
    return {"mode": mode, "per_request": count / len(samples) * counter.scale, "ok": ok, "real": real,
            "wall": wall, "spans": receiver.spans - spans_before}


class Cpu:
    """The router's CPU time, every thread's (`cpu_seconds`); figures in us."""

    scale, unit = 1e6, "us"

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def start(self) -> None:
        pass

    def read(self) -> float:
        return cpu_seconds(self.pid)


class Instructions:
    """The instructions callgrind counted in the router (every thread), instrumentation on from
    `start`; figures in thousands of instructions."""

    scale, unit = 1e-3, "k instr"

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def start(self) -> None:
        subprocess.run(["callgrind_control", "-i", "on", str(self.pid)], capture_output=True, check=True, timeout=120)

    def read(self) -> float:
        out = subprocess.run(["callgrind_control", "-e", "Ir", str(self.pid)], capture_output=True, text=True,
                             check=True, timeout=120).stdout
        return float(sum(int(n.replace(",", "")) for n in re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", out, re.M)))


def report_runs(runs: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    unit, modes = "k instructions" if args.callgrind else "us CPU", tuple(runs[0])
    print(f"router {unit} per request, median of {len(runs)} runs ({args.requests} requests at {args.concurrency} "
          f"concurrent, realistic mode, time scale {args.time_scale}):")
    for mode in sorted(modes):
        values = [run[mode]["per_request"] for run in runs]
        print(f"  {mode:4}  {statistics.median(values):9.1f}   (runs: {', '.join(f'{v:.0f}' for v in values)})")
    for label, a, b in (("tracing on - off", "on", "off"), ("off - base", "off", "base")):
        if b not in modes:
            continue
        differences = [run[a]["per_request"] - run[b]["per_request"] for run in runs]
        print(f"  {label + ':':18} {statistics.median(differences):+9.1f} per request, median of in-run differences "
              f"(runs: {', '.join(f'{d:+.0f}' for d in differences)})")


def off_path_ns() -> dict[str, float]:
    """ns per call of what the off path added to a request, timed here (one request writes one line)."""
    from app.api.door import new_request_id
    from app.observability.greppable import guard
    from app.observability.tracing import add_trace_ids

    event = {"request_id": new_request_id(), "method": "POST", "path": "/ai/router/v2", "status": 200,
             "latency_ms": 812.44, "user_id": "rep-12", "org_id": "acme", "intent": "rag", "model_provider": "gemini",
             "model": "gemini-2.5-flash", "provider_ms": 790.1, "hedged": False, "provider_calls": 1,
             "usage": {"input": 611, "output": 87}, "cache": "miss", "event": "request", "level": "INFO",
             "ts": "2026-12-02T05:00:00.123456Z"}
    line = orjson.dumps(event).decode()
    n = 200_000
    return {
        "grep guard (a line without either token)": timeit.timeit(lambda: guard(event, line), number=n) / n * 1e9,
        "trace ids processor (tracing off)": timeit.timeit(lambda: add_trace_ids(None, "info", event),
                                                           number=n) / n * 1e9,
        "request id without 429": timeit.timeit(new_request_id, number=n) / n * 1e9,
        "request id, plain hex (before)": timeit.timeit(lambda: os.urandom(16).hex(), number=n) / n * 1e9,
    }


class Keep:
    """An exporter's `deliver` that keeps the encoded requests (nothing sent)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, body: bytes, timeout: float | None) -> None:
        self.bodies.append(body)


def proto_messages(spans: list[Any], resource: dict[str, Any]) -> bytes:
    """The alternative to app/observability/otlp.py's hand-written encoder, measured against it: the
    same ExportTraceServiceRequest built from opentelemetry-proto's messages, filled in place."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    def put(target: AnyValue, value: Any) -> None:
        if isinstance(value, str):
            target.string_value = value
        elif isinstance(value, bool):
            target.bool_value = value
        elif isinstance(value, int):
            target.int_value = value
        elif isinstance(value, float):
            target.double_value = value
        else:
            for item in value:
                put(target.array_value.values.add(), item)

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for key, value in resource.items():
        pair = resource_spans.resource.attributes.add()
        pair.key = key
        put(pair.value, value)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "ivy-router", "2.0.0"
    for span in spans:
        out = scope_spans.spans.add()
        out.trace_id, out.span_id = bytes.fromhex(span.trace.trace_id), bytes.fromhex(span.span_id)
        parent_id = span.trace.caller_id if span.parent is None else span.parent.span_id
        if parent_id is not None:
            out.parent_span_id = bytes.fromhex(parent_id)
        out.name, out.kind, out.start_time_unix_nano, out.end_time_unix_nano = (
            span.name, span.kind, span.start, span.end_ns)
        out.flags = 0x101 | (0x200 if span.parent is None and parent_id is not None else 0)
        if span.trace.trace_state:
            out.trace_state = span.trace.trace_state
        for key, value in span.attributes.items():
            pair = out.attributes.add()
            pair.key = key
            put(pair.value, value)
        for name, at, attributes in span.events or ():
            event = out.events.add()
            event.name, event.time_unix_nano = name, at
            for key, value in (attributes or {}).items():
                pair = event.attributes.add()
                pair.key = key
                put(pair.value, value)
        if span.error:
            out.status.code = 2
    return request.SerializeToString()


def on_path_us() -> dict[str, float]:
    """us of the span work, timed here: on the loop, the server span alone and every span of an
    answered request (`children`) through the recorder; in the exporter thread, OTLP encoding per
    span, by hand (the router's) and with opentelemetry-proto's messages; and, for reference, the
    OpenTelemetry SDK's bare span (what the router used before)."""
    from opentelemetry.sdk.trace import TracerProvider

    from app.config import Settings
    from app.observability.tracing import build_tracing

    keep = Keep()
    tracing = build_tracing(Settings(_env_file=None), keep, warn=lambda *_, **__: None)
    assert tracing is not None
    tracing.exporter.wake_at = -1  # nothing exported: the loop timed alone (the queue fills, then drops)
    headers = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    attributes: dict[str, Any] = {  # what app/api/middleware.py's _end_span sets on an answered request
        "ivy.intent": "rag", "ivy.provider": "gemini", "ivy.cache": "miss", "ivy.user_id": "rep-12",
        "ivy.org_id": "acme", "ivy.fallback": None, "ivy.bucket": None, "ivy.code": None, "ivy.outcome": None}

    def request() -> None:
        tracing.start_request("POST", "/ai/router/v2", headers).end(200, attributes)

    def answered() -> None:
        served = tracing.start_request("POST", "/ai/router/v2", headers)
        children()
        served.end(200, attributes)

    n = 20_000
    server_us = timeit.timeit(request, number=n) / n * 1e6
    all_us = timeit.timeit(answered, number=n) / n * 1e6
    spans = [span for batch in list(tracing.exporter.queue)[-64:] for span in batch][-512:]  # answered ones
    tracing.exporter.queue.clear()
    encoder = tracing.exporter.encoder
    resource = {"service.name": "ivy-router", "service.version": "2.0.0"}

    def decoded(body: bytes) -> Any:
        return ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans

    assert decoded(encoder.encode(spans)) == decoded(proto_messages(spans, resource))  # the same spans, both ways
    by_hand = timeit.timeit(lambda: encoder.encode(spans), number=20) / 20 / len(spans) * 1e6
    messages = timeit.timeit(lambda: proto_messages(spans, resource), number=20) / 20 / len(spans) * 1e6
    tracing.shutdown()
    sdk = TracerProvider(shutdown_on_exit=False).get_tracer("bench")
    sdk_us = timeit.timeit(lambda: sdk.start_span("bare").end(), number=n) / n * 1e6
    return {"loop: server span opened, attributed, ended": server_us,
            "loop: all 8 spans of an answered request": all_us,
            "export: OTLP encoding per span, by hand": by_hand,
            "export: OTLP encoding per span, proto messages": messages,
            "reference: the SDK's bare span (before)": sdk_us}


def children() -> None:
    """An answered, streamed rag request's stages and its one attempt, through the helpers as
    app/pipeline.py and race.py call them (attributes built only when `on()`)."""
    from app.observability import tracing as spans

    with spans.stage("rate_limit"):
        if spans.on():
            spans.annotate(**{"ivy.rate_limit": "allowed", "ivy.bucket": None})
    with spans.stage("classify"):
        if spans.on():
            spans.annotate(**{"ivy.intent": "rag", "ivy.confidence": 0.86, "ivy.modal": None})
    with spans.stage("retrieve"):
        if spans.on():
            spans.annotate(**{"ivy.passages": 3})
    with spans.stage("cache"):
        if spans.on():
            spans.annotate(**{"ivy.cache": "miss"})
    with spans.stage("generate", **{"ivy.streamed": True}):
        attempt = spans.start_span("chat gemini-2.5-flash", kind=spans.CLIENT, **{
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.request.max_tokens": 512,
            "ivy.attempt.role": "first"}) if spans.on() else spans.NO_SPAN
        if attempt.is_recording():
            attempt.add_event("ivy.first_token", {"ivy.first_token_ms": 331.2})
            attempt.set_attributes({"ivy.attempt.outcome": "won", "gen_ai.response.model": "gemini-2.5-flash",
                                    "gen_ai.response.finish_reasons": ("STOP",),
                                    "gen_ai.usage.input_tokens": 611, "gen_ai.usage.output_tokens": 87})
        attempt.end()
    with spans.stage("cache_store"):
        if spans.on():
            spans.annotate(**{"ivy.cache.stored": True})
    if spans.on():
        spans.annotate(**{"ivy.safety.flags": 0})


def off_helpers_us(n: int = 50_000) -> float:
    """us per request of the stage and attempt helpers with tracing off (no tracer in the context)."""
    return timeit.timeit(children, number=n) / n * 1e6


def traced_cpu_us(receiver_port: int, n: int = 2000) -> dict[str, float]:
    """CPU per request of the whole traced path in one process, every thread counted
    (time.process_time): the server span opened, one request log line written inside it (structlog,
    trace ids, the file writer), the span ended, and its batch exported over OTLP/HTTP to the
    receiver (another process), against the same loop without tracing. `all spans` adds what an
    answered request has under it, through the same helpers as app/pipeline.py and race.py: six
    stage spans with their outcome attributes and one attempt span (GenAI attributes, the
    first-token event, usage at its end)."""

    from app.config import Settings
    from app.observability.logging import configure_logging, get_logger, shutdown_logging
    from app.observability.tracing import build_tracing

    settings = Settings(_env_file=None, otel_exporter_otlp_endpoint=f"http://127.0.0.1:{receiver_port}")
    log_dir = Path(tempfile.mkdtemp(prefix="ivy-bench-tracing-log-"))
    console, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115  (the writer's console copy)
    configure_logging(log_dir / "ai_router.log", max_bytes=0, backups=0)
    log = get_logger()
    headers = [(b"content-type", b"application/json")]
    fields: dict[str, Any] = {"request_id": "5d2c0f4e1b7a4c6e9d8f0a1b2c3d4e5f", "method": "POST",
                              "path": "/ai/router/v2", "status": 200, "latency_ms": 812.44, "user_id": "rep-12",
                              "org_id": "acme", "intent": "rag", "model_provider": "gemini", "cache": "miss"}
    attributes: dict[str, Any] = {"ivy.intent": "rag", "ivy.provider": "gemini", "ivy.cache": "miss",
                                  "ivy.user_id": "rep-12", "ivy.org_id": "acme"}
    results = {}
    try:
        for mode in ("off", "on", "all", "off", "on", "all"):
            tracing = build_tracing(settings, warn=log.warning) if mode != "off" else None
            started = time.process_time()
            for _ in range(n):
                span = tracing.start_request("POST", "/ai/router/v2", headers) if tracing is not None else None
                if mode == "all":
                    children()
                log.info("request", **fields)
                if span is not None:
                    span.end(200, attributes)
            if tracing is not None:
                tracing.flush(60.0)  # every span encoded and sent before the clock stops
            cpu = (time.process_time() - started) / n * 1e6
            if tracing is not None:
                tracing.shutdown()
            results[mode] = min(results.get(mode, cpu), cpu)  # the quieter of two passes
    finally:
        shutdown_logging()
        sys.stderr.close()
        sys.stderr = console
    return {"request line, tracing off": results["off"], "request line, tracing on, exported": results["on"],
            "added by tracing, the server span": results["on"] - results["off"],
            "all spans (server, 6 stages, 1 attempt), exported": results["all"],
            "added by tracing, all spans": results["all"] - results["off"]}


def receive(port: int) -> None:
    """`--receive PORT`: run the OTLP receiver alone (the in-process measurement's, in its own process)."""
    async def serve() -> None:
        receiver = Receiver()
        receiver.port = port
        await receiver.start()
        await asyncio.sleep(3600)

    asyncio.run(serve())


async def main_async(args: argparse.Namespace) -> None:
    base = ROOT if args.base_ref is None else base_tree(args.base_ref)
    modes = ("off", "on") if args.base_ref is None else ("base", "off", "on")
    fake, fake_base = realistic_fake(args.seed, args.time_scale)
    receiver = Receiver()
    runner = await receiver.start()
    runs: list[dict[str, dict[str, Any]]] = []
    try:
        timeout = aiohttp.ClientTimeout(total=600 if args.callgrind else 60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=100)) as session:
            await wait_up(fake, "/_fake/health")
            for number in range(args.runs):
                run = {}
                for mode in modes if number % 2 == 0 else modes[::-1]:  # drift within a run cancels over two
                    result = run[mode] = await one_run(mode, args, fake_base, receiver, base, session)
                    print(f"run {number + 1} {mode}: {result['per_request']:.0f} per request, "
                          f"{result['ok']}/{args.requests} ok, {result['real']} from a model, "
                          f"{result['spans']} spans received, {result['wall']:.0f} s", file=sys.stderr, flush=True)
                runs.append(run)
    finally:
        fake.stop()
        await runner.cleanup()
    if runs:
        report_runs(runs, args)


def in_process_figures() -> None:
    print("what the off path added, per call (this process):")
    for what, ns in off_path_ns().items():
        print(f"  {what:45} {ns:7.0f} ns")
    print(f"  {'stage and attempt helpers of one request, off':45} {off_helpers_us() * 1000:7.0f} ns")
    print("the span work of one traced request (this process):")
    for what, us in on_path_us().items():
        print(f"  {what:45} {us:7.1f} us")
    port = free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--receive", str(port)], cwd=ROOT)
    try:
        time.sleep(2)
        print("the traced path in one process, every thread's CPU (receiver in another process):")
        for what, us in traced_cpu_us(port).items():
            print(f"  {what:45} {us:7.1f} us")
    finally:
        sink.terminate()
        sink.wait(10)
    reference = timeit.timeit(lambda: sum(range(1000)), number=20_000) / 20_000 * 1e6
    print(f"machine reference: sum(range(1000)) {reference:.1f} us (a current x86 core: ~8 us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--base-ref", default=None, help="git ref of code without tracing: adds the base mode")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per request under callgrind, not CPU time")
    parser.add_argument("--receive", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--micro-only", action="store_true", help="only the in-process measurements")
    args = parser.parse_args()
    if args.receive is not None:
        receive(args.receive)
        return
    if not args.micro_only:
        asyncio.run(main_async(args))
    if not args.callgrind:  # the in-process timings are CPU time, not instructions
        in_process_figures()


if __name__ == "__main__":
    main()
