"""wrk runs against the targets: c=1 and the throughput levels (the median of repeats), the moderate
paced load, the 300 ms upstream case (closed loop and paced), and the soak with /proc samples."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from tools.bench import fmt, say
from tools.bench.record import Plan, Target
from tools.bench.sampler import proc_sample, summarise_series
from tools.bench.servers import Server, check_chat, not_openai, router_counters, warm_up
from tools.bench.wrk import Wrk, WrkResult, parse_wrk_output

# The 300 ms case again, each connection waiting an exponential think time of this mean between
# answer and next request: 500 connections then offer ~1,250 requests/s as independent streams,
# where the closed loop (no think time) keeps them in lock-step bursts. Informative, not a target.
SLOW_THINK_MS = 100


class Meter:
    """Measures with one wrk, one plan and the command line's loads."""

    def __init__(self, wrk: Wrk, plan: Plan, args: argparse.Namespace, work: Path) -> None:
        self.wrk = wrk
        self.plan = plan
        self.args = args
        self.work = work
        self.slow_paced: dict[str, dict[str, Any]] = {}  # the slow case's paced points, by target

    def measure(self, target: Target, *, seconds: int | None = None, warmup: bool = True) -> None:
        plan, args = self.plan, self.args
        seconds = seconds or plan.point_seconds
        script = self.wrk.script(target.body, target.headers)
        conns = args.moderate_connections
        delay_ms = max(1, round(1000 * conns / args.moderate_rps))
        paced = self.wrk.script(target.body, target.headers, delay_ms=delay_ms)
        quick_warm = warmup and args.quick
        warm_text = ("warm-up 100 requests, then " if quick_warm else
                     f"warm-up {plan.warmup_seconds} s, then " if warmup else "")
        say(f"  {target.name}: {warm_text}c=1, " + ", ".join(f"c={n}" for n in plan.levels)
            + f", moderate ({args.moderate_rps}/s), {seconds} s each")
        if quick_warm:
            warm_up(target.url, target.body, target.headers, requests=100, seconds=2.0)
        elif warmup:
            self.wrk.run(target.url, script, 10, plan.warmup_seconds)
        before = router_counters(target.server.port) if target.key == "c" and target.server else {}
        target.points["c1"] = self.median_run(target.url, script, 1, seconds)
        for n in plan.levels:
            target.points[f"c{n}"] = self.median_run(target.url, script, n, seconds)
        best = max((p.rps for k, p in target.points.items() if k != "c1"), default=0.0)
        if best < args.moderate_rps:
            # A closed loop cannot offer more than the target carries: that point would be one more
            # saturation point, not latency at a moderate load.
            target.extra["moderate_skipped"] = (f"saturates at {best:.0f} req/s, below the moderate load "
                                                f"({args.moderate_rps}/s)")
        else:
            target.points["moderate"] = self.wrk.run(target.url, paced, conns, seconds,
                                                     target_rps=round(conns * 1000 / delay_ms, 1))
        if target.key == "c" and target.server:
            hidden = not_openai(before, router_counters(target.server.port))
            target.extra["hidden_errors"] = hidden
            if hidden:
                say(f"  WARNING: {hidden} router answers did not come from openai (fallback): counted as errors")
        if target.server is not None:
            sample = proc_sample(target.server.pid)
            if sample:
                target.extra["rss_mb_after"] = round(sample[0], 1)
                target.extra["fds_after"] = sample[1]
        for key, point in target.points.items():
            if point.note:
                say(f"    {key}: {point.note}")
        target.status = "measured"

    def median_run(self, url: str, script: Path, connections: int, seconds: int) -> WrkResult:
        """`plan.repeats` runs sharing `seconds`; the one with the median req/s (all of them in `runs_rps`).

        The machine is shared: a burst of someone else's work in one short run moves that run, not the
        median of three.
        """
        repeats = max(1, self.plan.repeats)
        each = max(1, seconds // repeats)
        runs = [self.wrk.run(url, script, connections, each) for _ in range(repeats)]
        chosen = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
        if repeats > 1:
            chosen.runs_rps = [r.rps for r in runs]
            chosen.errors = {k: sum(r.errors.get(k, 0) for r in runs) for k in chosen.errors}  # all runs' errors
        return chosen

    def soak(self, target: Target) -> dict[str, Any]:
        assert target.server is not None
        args, plan = self.args, self.plan
        seconds = plan.soak_seconds
        conns = args.moderate_connections
        delay_ms = max(1, round(1000 * conns / args.moderate_rps))
        script = self.wrk.script(target.body, target.headers, delay_ms=delay_ms)
        cmd = self.wrk.command(target.url, script, conns, seconds)
        say(f"  soak: {seconds} s at {args.moderate_rps}/s over {conns} connections against {target.name}, "
            f"sampling VmRSS and fds of pid {target.server.pid} every {plan.soak_interval:g} s"
            + (f" (--quick: a {seconds} s version of the 10-minute soak)" if args.quick else ""))
        rss: list[tuple[float, float]] = []
        fds: list[tuple[float, float]] = []
        before = router_counters(target.server.port)
        started = time.monotonic()
        out_path = self.work / "soak-wrk.out"
        with out_path.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = started + seconds + 60
            while True:
                if proc.poll() is not None:  # only samples taken while the load runs
                    break
                sample = proc_sample(target.server.pid)
                now = time.monotonic() - started
                if sample:
                    rss.append((now, sample[0]))
                    fds.append((now, float(sample[1])))
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(plan.soak_interval)
        result = parse_wrk_output(out_path.read_text(), connections=conns, seconds=seconds)
        hidden = not_openai(before, router_counters(target.server.port))
        ramp = max(2 * plan.soak_interval, 0.05 * seconds)  # 30 s of 600, 2 s of 15
        return {
            "seconds": seconds, "interval_s": plan.soak_interval, "quick": bool(args.quick), "ramp_s": ramp,
            "load": result.as_dict(), "hidden_errors": hidden,
            "rss_mb": summarise_series(rss, skip_before=ramp), "fds": summarise_series(fds, skip_before=ramp),
            "samples": [{"t": round(t, 1), "rss_mb": round(r, 2), "fds": int(f)} for (t, r), (_, f) in zip(rss, fds,
                                                                                                          strict=True)],
        }

    def slow_direct(self, upstream: Server, chat_body: bytes, chat_headers: dict[str, str]) -> WrkResult:
        """The 300 ms upstream alone at the slow case's connections: its own p99 is the floor of (c)'s."""
        seconds, conns = self.plan.slow_seconds, self.args.slow_connections
        url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
        script = self.wrk.script(chat_body, chat_headers)
        if not self.args.quick:
            self.wrk.run(url, script, conns, self.plan.warmup_seconds)
        direct = self.wrk.run(url, script, conns, seconds)
        say(f"300 ms upstream direct, {conns} connections, {seconds} s: {direct.rps:.0f} req/s  p50 "
            f"{fmt(direct.p50_ms)}  p99 {fmt(direct.p99_ms)} ms  errors {direct.errors_total}"
            + (f"  {direct.note}" if direct.note else ""))
        if self.plan.slow_paced:
            self.slow_paced["direct"] = self.paced_point(url, chat_body, chat_headers, "direct")
        return direct

    def paced_point(self, url: str, body: bytes, headers: dict[str, str], label: str) -> dict[str, Any]:
        """The slow case with SLOW_THINK_MS think times (the connections are already open and warm)."""
        seconds, conns = self.plan.slow_seconds, self.args.slow_connections
        point = self.wrk.run(url, self.wrk.script(body, headers, delay_ms=SLOW_THINK_MS), conns, seconds)
        say(f"  paced ({SLOW_THINK_MS} ms mean think time), {label}: {point.rps:.0f} req/s  p50 "
            f"{fmt(point.p50_ms)}  p99 {fmt(point.p99_ms)} ms  errors {point.errors_total}"
            + (f"  {point.note}" if point.note else ""))
        return point.as_dict()

    def slow_case(self, upstream: Server, router: Server, direct: WrkResult, router_body: bytes,
                  router_headers: dict[str, str], proxy: Server | None, chat_body: bytes,
                  chat_headers: dict[str, str]) -> dict[str, Any]:
        seconds, conns = self.plan.slow_seconds, self.args.slow_connections
        floor: WrkResult | None = None
        if proxy is not None:
            try:
                check_chat(proxy, self.args.start_timeout)
                proxy_url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
                proxy_script = self.wrk.script(chat_body, chat_headers)
                self.wrk.run(proxy_url, proxy_script, conns, self.plan.warmup_seconds)
                floor = self.wrk.run(proxy_url, proxy_script, conns, seconds)
                say(f"300 ms upstream through (b), {conns} connections, {seconds} s: {floor.rps:.0f} req/s  p50 "
                    f"{fmt(floor.p50_ms)}  p99 {fmt(floor.p99_ms)} ms  errors {floor.errors_total}")
                if self.plan.slow_paced:
                    self.slow_paced["proxy"] = self.paced_point(proxy_url, chat_body, chat_headers, "(b)")
            except (RuntimeError, OSError, ValueError) as exc:
                say(f"  proxy-300ms: NOT MEASURED: {str(exc).splitlines()[0]}")
            proxy.stop()
        url = f"http://127.0.0.1:{router.port}/ai/router/v2"
        script = self.wrk.script(router_body, router_headers)
        self.wrk.run(url, script, conns, self.plan.warmup_seconds)  # opens the router's upstream connections
        before = router_counters(router.port)
        routed = self.wrk.run(url, script, conns, seconds)
        hidden = not_openai(before, router_counters(router.port))
        say(f"300 ms upstream through (c), {conns} connections, {seconds} s: {routed.rps:.0f} req/s  p50 "
            f"{fmt(routed.p50_ms)}  p99 {fmt(routed.p99_ms)} ms  errors {routed.errors_total}"
            + (f"  {routed.note}" if routed.note else ""))
        if hidden:
            say(f"  WARNING: {hidden} router answers did not come from openai: counted as errors")
        if self.plan.slow_paced:
            before = router_counters(router.port)
            self.slow_paced["router"] = self.paced_point(url, router_body, router_headers, "(c)")
            self.slow_paced["router"]["hidden_errors"] = not_openai(before, router_counters(router.port))
        return {"upstream": upstream.name, "latency_ms": 300, "connections": conns, "direct": direct.as_dict(),
                "proxy": floor.as_dict() if floor is not None else None, "router": routed.as_dict(),
                "hidden_errors": hidden,
                "paced": {"think_ms": SLOW_THINK_MS, **self.slow_paced} if self.slow_paced else None}
