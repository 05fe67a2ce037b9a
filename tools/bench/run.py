"""The orchestrator: start every server at once, check each answers as it should, measure the
targets in order on a quiet server CPU, then the slow case and the soak; the record and the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tools.bench import ROOT, SCRIPTS, fmt, say
from tools.bench.litellm import ensure_litellm, litellm_config, litellm_version
from tools.bench.measure import Meter
from tools.bench.record import FULL, QUICK, Plan, Target, checks, overhead, ratios
from tools.bench.render import render_report
from tools.bench.sampler import cpu_busy, loaded_impls, machine_info
from tools.bench.servers import (
    CHAT_BODY,
    Server,
    check_chat,
    child_env,
    http,
    raise_fd_limit,
    redis_cleanup,
    redis_ping,
    wait_ready,
)
from tools.bench.wrk import Wrk, ensure_wrk, pin, wrk_version
from tools.ports import free_port

ROUTER_BODY = {"query": "hello there", "context": {}}
HUGE_LIMIT = "100000000"  # AI_RATE_LIMIT_*: never refuse during the bench

TARGET_NAMES = {
    "a": "(a) upstream direct",
    "b": "(b) minimal FastAPI proxy",
    "c": "(c) /ai/router/v2",
    "d": "(d) LiteLLM proxy",
}


class Bench:
    def __init__(self, args: argparse.Namespace, json_out: Path) -> None:
        self.args = args
        self.json_out = json_out
        self.plan = QUICK if args.quick else FULL
        if args.point_seconds:
            self.plan = Plan(**{**asdict(self.plan), "point_seconds": args.point_seconds})
        if args.soak_seconds is not None:
            self.plan = Plan(**{**asdict(self.plan), "soak_seconds": args.soak_seconds})
        self.work = Path(tempfile.mkdtemp(prefix="ivy-bench-"))
        self.run_id = f"bench-{os.getpid()}-{int(time.time())}"
        self.record: dict[str, Any] = {}
        self.targets: dict[str, Target] = {}
        cores = len(os.sched_getaffinity(0))
        can_pin = not args.no_pin and shutil.which("taskset") is not None and cores >= 2
        self.load_cpu: int | None = 0 if can_pin else None
        self.sut_cpu: int | None = 1 if can_pin else None
        self.wrk: Wrk | None = None
        self.phases: dict[str, float] = {}
        self._last_mark = time.monotonic()

    def mark(self, phase: str) -> None:
        """Record how long the phase that just ended took (rec["meta"]["phases"])."""
        now = time.monotonic()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last_mark, 1)
        self._last_mark = now

    # -- servers -------------------------------------------------------------------------------

    def start_upstream(self, kind: str, latency_ms: int) -> Server:
        port = free_port()
        if kind == "fake":
            cmd = [sys.executable, "-m", "tools.fake_provider", "--port", str(port),
                   "--latency-ms", str(latency_ms)]
        else:
            cmd = [sys.executable, str(SCRIPTS / "bench_upstream.py"), "--port", str(port),
                   "--latency-ms", str(latency_ms)]
        name = f"upstream-{kind}-{latency_ms}ms"
        return Server(name, pin(cmd, self.load_cpu), env=child_env(), port=port,
                      log=self.work / f"{name}.log").start()

    def uvicorn_cmd(self, app: str, port: int, app_dir: Path | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--no-access-log"]
        if app_dir is not None:
            cmd += ["--app-dir", str(app_dir)]
        return pin(cmd, self.sut_cpu)

    def start_proxy(self, upstream: Server, name: str = "proxy") -> Server:
        port = free_port()
        env = child_env(BENCH_UPSTREAM_URL=f"http://127.0.0.1:{upstream.port}/v1/chat/completions")
        return Server(name, self.uvicorn_cmd("bench_proxy:app", port, SCRIPTS), env=env, port=port,
                      log=self.work / f"{name}.log").start()

    def start_router(self, upstream: Server, name: str) -> Server:
        port = free_port()
        env = child_env(
            ACTIVE_MODEL="openai", OPENAI_API_KEY="sk-bench", GEMINI_API_KEY="",
            OPENAI_BASE_URL=f"http://127.0.0.1:{upstream.port}/v1", REDIS_URL=self.args.redis_url,
            IVY_LOG_FILE=str(self.work / f"{name}-ai_router.log"), IVY_LOG_LEVEL="INFO",
            AI_RATE_LIMIT_PER_MIN=HUGE_LIMIT, AI_RATE_LIMIT_BURST=HUGE_LIMIT, AI_ORG_RATE_LIMIT_PER_MIN=HUGE_LIMIT,
            **dict(getattr(self.args, "router_env", [])),
        )
        return Server(name, self.uvicorn_cmd("app.main:app", port), env=env, port=port,
                      log=self.work / f"{name}.stderr.log").start()

    def start_litellm(self, binary: Path, upstream: Server) -> Server:
        port = free_port()
        config = self.work / "litellm.yaml"
        config.write_text(litellm_config(upstream.port))
        # LITELLM_LOCAL_MODEL_COST_MAP: use the bundled cost map instead of fetching it (loopback only).
        env = child_env(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True")
        cmd = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        # cwd: the temp dir, so LiteLLM loads no .env of ours.
        return Server("litellm", pin(cmd, self.sut_cpu), env=env, port=port, log=self.work / "litellm.log",
                      cwd=self.work).start()

    def check_router(self, server: Server) -> dict[str, Any]:
        wait_ready(server, "GET", "/health", timeout=self.args.start_timeout)
        status, data = http("POST", f"http://127.0.0.1:{server.port}/ai/router/v2", ROUTER_BODY,
                            {"X-User-ID": self.run_id}, timeout=10)
        if status != 200:
            raise RuntimeError(f"{server.name}: POST /ai/router/v2 answered {status}: {data[:300]!r}")
        payload = json.loads(data)
        problems = []
        if payload.get("provider") != "openai":
            problems.append(f"provider is {payload.get('provider')!r}, not 'openai'")
        if (payload.get("fallback") or {}).get("used"):
            problems.append(f"fallback used: {payload.get('fallback')}")
        if problems:
            raise RuntimeError(f"{server.name} is misconfigured ({'; '.join(problems)}): numbers would be "
                               f"meaningless.\n{server.log_tail()}")
        return {"intent": payload.get("intent"), "provider": payload.get("provider"),
                "impl": loaded_impls(server.pid)}

    # -- orchestration ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args, plan = self.args, self.plan
        t0 = self._last_mark = time.monotonic()
        rec = self.record
        rec["meta"] = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": "quick" if args.quick else "full",
            "command": " ".join([_shown_executable(), *sys.argv]), "machine": machine_info(),
            "plan": asdict(plan), "moderate": {"rps": args.moderate_rps, "connections": args.moderate_connections},
            "pinning": ({"load_generator_and_upstreams_cpu": self.load_cpu, "server_under_test_cpu": self.sut_cpu}
                        if self.sut_cpu is not None else "none"),
            "redis_url": args.redis_url, "fd_limit": raise_fd_limit(), "json_out": str(self.json_out),
        }
        wrk_bin = ensure_wrk(not args.no_install)
        if wrk_bin is None:
            raise SystemExit(2)
        self.wrk = Wrk(wrk_bin, self.load_cpu, self.work)
        meter = Meter(self.wrk, plan, args, self.work)
        rec["meta"]["load_generator"] = wrk_version(wrk_bin)
        m = rec["meta"]["machine"]
        say(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, Python {m['python']}; "
            f"{rec['meta']['load_generator']}; pinning: "
            + (f"wrk + upstreams on CPU {self.load_cpu}, server under test on CPU {self.sut_cpu}"
               if self.sut_cpu is not None else "none"))
        rec["meta"]["background"] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()],
                                     "cpu_busy_before": cpu_busy(0.5)}
        say(f"background load before the run: loadavg {rec['meta']['background']['loadavg_before']}, "
            f"CPU busy over 0.5 s {rec['meta']['background']['cpu_busy_before']} (other processes: noise)")
        redis_problem = redis_ping(args.redis_url)
        rec["meta"]["redis"] = "ok" if redis_problem is None else redis_problem
        if redis_problem:
            say(f"WARNING: Redis at {args.redis_url} does not answer ({redis_problem}): the limiter fails open; "
                "(c) is then not measured as specified")

        wanted = set(args.targets.split(","))
        litellm_bin: Path | None = None
        if "d" in wanted:
            litellm_bin, why = ensure_litellm(install=not args.no_install, timeout=args.litellm_install_timeout,
                                              quick=args.quick)
            rec["litellm"] = {"status": "available" if litellm_bin else "not measured", "detail": why,
                              "version": litellm_version()}
            say(f"LiteLLM: {why}")

        # Start every server at once (start-up is not measured), then wait for each.
        say("starting servers ...")
        fake = self.start_upstream("fake", 0)
        fast = self.start_upstream("fast", 0)
        upstream, other = (fast, fake) if args.upstream == "fast" else (fake, fast)
        slow_upstream = self.start_upstream(args.upstream, 300) if not args.no_slow and "c" in wanted else None
        proxy = self.start_proxy(upstream) if "b" in wanted else None
        router = self.start_router(upstream, "router") if "c" in wanted else None
        slow_router = self.start_router(slow_upstream, "router-300ms") if slow_upstream is not None else None
        # (b) on the same 300 ms upstream: the floor of that case for any Python router.
        slow_proxy = (self.start_proxy(slow_upstream, "proxy-300ms")
                      if slow_upstream is not None and "b" in wanted else None)
        litellm = self.start_litellm(litellm_bin, upstream) if litellm_bin is not None else None

        chat_headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        chat_body = json.dumps(CHAT_BODY).encode()
        router_headers = {"Content-Type": "application/json", "X-User-ID": self.run_id}
        router_body = json.dumps(ROUTER_BODY).encode()
        upstream_label = "bench_upstream" if upstream is fast else "fake provider"
        self.targets["a"] = Target("a", f"{TARGET_NAMES['a']} ({upstream_label})",
                                   f"http://127.0.0.1:{upstream.port}/v1/chat/completions", chat_body, chat_headers,
                                   upstream)
        if proxy is not None:
            self.targets["b"] = Target("b", TARGET_NAMES["b"], f"http://127.0.0.1:{proxy.port}/v1/chat/completions",
                                       chat_body, chat_headers, proxy)
        if router is not None:
            self.targets["c"] = Target("c", TARGET_NAMES["c"], f"http://127.0.0.1:{router.port}/ai/router/v2",
                                       router_body, router_headers, router)
        if "d" in wanted:
            self.targets["d"] = Target("d", TARGET_NAMES["d"],
                                       f"http://127.0.0.1:{litellm.port}/v1/chat/completions" if litellm else "",
                                       chat_body, chat_headers, litellm)
            if litellm is None:
                self.targets["d"].status, self.targets["d"].why = "not measured", rec["litellm"]["detail"]

        for server in (fake, fast):
            check_chat(server, args.start_timeout)
        # The servers under test take seconds to import (LiteLLM ~10 s). --quick measures the upstream
        # check and (a), which load only the load generator's CPU, while they start on the server CPU,
        # and waits for them before (b); the full run waits for every server first.
        overlap = bool(args.quick and self.sut_cpu is not None)
        if overlap:
            rec["meta"]["servers_started_during"] = "upstream checks and (a) (--quick; those use CPU 0 only)"
        else:
            slow_router = self.wait_servers(slow_router)
        rec["meta"]["startup_seconds"] = round(time.monotonic() - t0, 1)
        self.mark("setup_and_startup")

        say(f"upstream check: {other.name.removesuffix('-0ms')} at c=50 ({plan.point_seconds} s)"
            + ("; the servers under test are still starting on the other CPU" if overlap else ""))
        other_url = f"http://127.0.0.1:{other.port}/v1/chat/completions"
        other_point = self.wrk.run(other_url, self.wrk.script(chat_body, chat_headers), 50, plan.point_seconds)
        other.stop()
        say(f"  {other_point.rps:9.0f} req/s  p50 {fmt(other_point.p50_ms)} ms  errors {other_point.errors_total}")
        slow_direct = meter.slow_direct(slow_upstream, chat_body, chat_headers) if slow_upstream is not None else None
        self.mark("upstream_checks")

        say("targets:")
        for key in ("a", "b", "c", "d"):
            target = self.targets.get(key)
            if key == "b" and overlap:  # (b) onwards load the server CPU
                slow_router = self.wait_servers(slow_router)
                self.mark("wait_servers")
            if target is None or target.status != "pending":
                continue
            seconds = plan.litellm_point_seconds if key == "d" else plan.point_seconds
            # bench_upstream needs no warm-up (no caches, no pools) and was just started: skip it in --quick.
            meter.measure(target, seconds=seconds, warmup=not (key == "a" and args.quick))
            if key in ("b", "d") and target.server is not None:
                target.server.stop()  # free the server CPU for the next target
            self.mark(key)
        a = self.targets["a"]
        rec["upstreams"] = {
            "used": args.upstream,
            ("fast" if upstream is fast else "fake"): {"name": upstream_label, "c50": a.points["c50"].as_dict()},
            ("fake" if upstream is fast else "fast"): {
                "name": "fake provider" if upstream is fast else "bench_upstream", "c50": other_point.as_dict()},
        }

        if slow_router is not None and slow_upstream is not None and slow_direct is not None:
            rec["slow_upstream"] = meter.slow_case(slow_upstream, slow_router, slow_direct, router_body, router_headers,
                                                  slow_proxy, chat_body, chat_headers)
            slow_router.stop()
            self.mark("slow_upstream")
        if router is not None and self.targets["c"].status == "measured" and plan.soak_seconds > 0:
            rec["soak"] = meter.soak(self.targets["c"])
            self.mark("soak")
        Server.stop_all()
        self.mark("teardown")
        rec["meta"]["phases"] = self.phases
        rec["meta"]["background"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        rec["meta"]["elapsed_seconds"] = round(time.monotonic() - t0, 1)
        rec["meta"]["redis_keys_deleted"] = redis_cleanup(args.redis_url, self.run_id)
        self.finish()
        return rec

    def wait_servers(self, slow_router: Server | None) -> Server | None:
        for key in ("b", "c", "d"):
            self.ready(key)
        if slow_router is not None:
            try:
                self.check_router(slow_router)
            except (RuntimeError, OSError, ValueError) as exc:
                say(f"  router-300ms: NOT MEASURED: {str(exc).splitlines()[0]}")
                slow_router.stop()
                return None
        return slow_router

    def ready(self, key: str) -> None:
        """Wait for a target's server and check its answer; on failure mark it not measured."""
        target = self.targets.get(key)
        if target is None or target.server is None or target.status != "pending":
            return
        try:
            if key == "c":
                target.extra.update(self.check_router(target.server))
                impl = target.extra["impl"]
                say(f"  (c) ready in {target.server.ready_after} s: intent {target.extra['intent']}, provider "
                    f"openai, fallback unused; uvicorn loop={impl['loop']} http={impl['http']} "
                    f"(from /proc/{target.server.pid}/maps)")
                return
            check_chat(target.server, self.args.start_timeout)
            extra = ""
            if key == "b":
                target.extra["impl"] = impl = loaded_impls(target.server.pid)
                extra = f"; uvicorn loop={impl['loop']} http={impl['http']}"
            say(f"  {target.name} ready in {target.server.ready_after} s{extra}")
        except (RuntimeError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            target.status, target.why = "not measured", str(exc).splitlines()[0][:300]
            say(f"  {target.name}: NOT MEASURED: {exc}")
            target.server.stop()

    # -- report ----------------------------------------------------------------------------------

    def finish(self) -> None:
        rec = self.record
        a = self.targets.get("a")
        rec["targets"] = {}
        for key, t in self.targets.items():
            entry: dict[str, Any] = {"name": t.name, "url": t.url, "status": t.status, "why": t.why,
                                     "points": {k: p.as_dict() for k, p in t.points.items()},
                                     "saturation_rps": t.saturation(), "errors": t.errors(), **t.extra}
            if a is not None and key != "a" and t.status == "measured" and a.status == "measured":
                entry["over_a_ms"] = overhead(t, a)
            rec["targets"][key] = entry
        rec["ratios"] = ratios(self.targets)
        rec["checks"] = checks(rec)
        say("")
        say(render_report(rec, self.targets))


def _shown_executable() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(ROOT))
    return str(exe)
