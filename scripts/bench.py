#!/usr/bin/env python3
"""End-to-end HTTP benchmark of the router against its floor and against LiteLLM. Measures; never judges.

    .venv/bin/python scripts/bench.py            # full run (~17 min, includes a 10-minute soak)
    .venv/bin/python scripts/bench.py --quick    # ~1 min smoke version (15 s soak)

On one machine, in one run, it starts a fast OpenAI-compatible upstream on loopback and drives
load with wrk (installed with apt-get when missing) against:

  (a) the upstream directly                                    (scripts/bench_upstream.py)
  (b) a minimal FastAPI proxy: same uvicorn, same event loop, one aiohttp session, nothing else
                                                               (scripts/bench_proxy.py)
  (c) our POST /ai/router/v2 (conversational query, provider openai at the upstream, Redis limiter
      on with limits that never refuse, logs at INFO to a temp file, metrics on)
  (d) LiteLLM's proxy (litellm[proxy] in its own venv under ~/.cache/ivy-bench, no DB, retries 0)

Per target: requests/s at 1, 10 (full only) and 50 connections (saturation = the best of them),
p50/p95/p99 at one connection and at a fixed moderate load (default 200 requests/s over 40
connections paced by exponential think times in a Lua delay() hook), errors, and the latency over
(a); then the ratios c/b and c/d, the 300 ms-upstream / 500-connection case for (c) (closed loop,
as the target states, and again with each connection paced by exponential think times), a soak of
(c) (10 min; 15 s with --quick) sampling VmRSS and the fd count. Prints the targets with PASS/MISS
(informative) and writes the same as JSON to bench-results/bench-YYYYMMDD-HHMMSS.json. Exit code 0
whatever the numbers; 2 only when no load generator can be found or installed.

CPU layout (2 cores): wrk and the upstreams on CPU 0, the server under test on CPU 1 (taskset).
Redis (127.0.0.1:6379, database 14) is left where the OS puts it. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CACHE = Path(os.environ.get("IVY_BENCH_CACHE") or Path.home() / ".cache" / "ivy-bench")
LITELLM_VENV = CACHE / "litellm-venv"
LITELLM_MARKER = LITELLM_VENV / ".ivy-bench-installed"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"

CHAT_BODY = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hello there"}]}
ROUTER_BODY = {"query": "hello there", "context": {}}
HUGE_LIMIT = "100000000"  # AI_RATE_LIMIT_*: never refuse during the bench
# The 300 ms case again, each connection waiting an exponential think time of this mean between
# answer and next request: 500 connections then offer ~1,250 requests/s as independent streams,
# where the closed loop (no think time) keeps them in lock-step bursts. Informative, not a target.
SLOW_THINK_MS = 100

TARGET_NAMES = {
    "a": "(a) upstream direct",
    "b": "(b) minimal FastAPI proxy",
    "c": "(c) /ai/router/v2",
    "d": "(d) LiteLLM proxy",
}
# Environment the servers must not inherit from the caller's shell (the bench sets what it needs).
_SCRUBBED_PREFIXES = ("IVY_", "AI_", "REDIS_", "GEMINI_", "OPENAI_", "LITELLM_", "PROMETHEUS_MULTIPROC")
_SCRUBBED_NAMES = ("ACTIVE_MODEL", "prometheus_multiproc_dir")


@dataclass(frozen=True)
class Plan:
    """Durations and load levels of one mode."""

    point_seconds: int  # each measured wrk run
    warmup_seconds: int  # unrecorded wrk run before a target's points
    levels: tuple[int, ...]  # throughput levels besides c=1
    slow_seconds: int  # the 300 ms / 500 connection point
    soak_seconds: int
    soak_interval: float  # seconds between /proc samples
    litellm_point_seconds: int  # LiteLLM answers ~tens of req/s: a few seconds per point is enough
    repeats: int = 1  # c=1, c=10, c=50: this many runs of point_seconds/repeats, the median (by req/s) kept
    slow_paced: bool = True  # the 300 ms case again with paced connections (informative; not in --quick)


QUICK = Plan(point_seconds=2, warmup_seconds=1, levels=(50,), slow_seconds=2, soak_seconds=15, soak_interval=1.0,
             litellm_point_seconds=2, slow_paced=False)
FULL = Plan(point_seconds=15, warmup_seconds=3, levels=(10, 50), slow_seconds=30, soak_seconds=600,
            soak_interval=5.0, litellm_point_seconds=10, repeats=3)


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------------------------
# wrk: Lua script, run, parse


@dataclass
class WrkResult:
    """One wrk run. Latencies in milliseconds; None when nothing completed."""

    connections: int
    seconds: float
    requests: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # connect/read/write/timeout/status
    target_rps: float | None = None  # paced (moderate) runs only
    runs_rps: list[float] | None = None  # repeated points: every run's req/s (this one is the median)
    note: str = ""

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors_total"] = self.errors_total
        return out


def _lua_string(value: str) -> str:
    if not all(32 <= ord(ch) < 127 for ch in value):
        raise ValueError(f"only printable ASCII goes into the wrk script: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(body: bytes, headers: dict[str, str], *, delay_ms: int = 0) -> str:
    """A wrk Lua script: POST `body` with `headers`; done() prints one BENCH_JSON line.

    The request is static (set once in wrk.*), so wrk calls no Lua per request unless paced:
    `delay_ms` > 0 defines delay(), which wrk calls before each request on a connection (latency
    is timed from the write, after the delay), returning exponential think times of that mean.
    Non-2xx answers are wrk's own `errors.status` count (status > 399), with no response() hook
    (that hook makes wrk buffer every body and call Lua per response).
    """
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(body.decode())}",
    ]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    if delay_ms > 0:
        # Exponential think times: each connection sends a Poisson stream, so arrivals do not
        # come in synchronised bursts of `connections` requests (a fixed delay would do that).
        lines += [
            "math.randomseed(os.time())",
            f"local mean_ms = {int(delay_ms)}",
            "function delay() return math.floor(-mean_ms * math.log(1 - math.random()) + 0.5) end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  local p = function(q) return latency:percentile(q) end",
        '  io.write(string.format("BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,'
        '\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,'
        '\\"min_us\\":%.1f,\\"mean_us\\":%.1f,\\"max_us\\":%.1f,'
        '\\"p50_us\\":%.1f,\\"p75_us\\":%.1f,\\"p90_us\\":%.1f,\\"p95_us\\":%.1f,\\"p99_us\\":%.1f}\\n",',
        "    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,",
        "    latency.min, latency.mean, latency.max, p(50), p(75), p(90), p(95), p(99)))",
        "end",
    ]
    return "\n".join(lines) + "\n"


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float | None:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else None


def parse_wrk_output(text: str, *, connections: int = 0, seconds: float = 0.0) -> WrkResult:
    """Parse wrk's output: the BENCH_JSON line from our done() hook when present, else wrk's own
    text (Requests/sec, the --latency distribution, Non-2xx and Socket errors lines; p95 is then
    interpolated between the 90% and 99% lines)."""
    result = WrkResult(connections=connections, seconds=seconds)
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            result.requests = int(data["requests"])
            duration_s = data["duration_us"] / 1e6
            result.seconds = round(duration_s, 3)
            result.rps = round(result.requests / duration_s, 1) if duration_s > 0 else 0.0
            result.errors = {k: int(data[k]) for k in ("connect", "read", "write", "timeout", "status")}
            if result.requests > 0:
                for q in (50, 75, 90, 95, 99):
                    setattr(result, f"p{q}_ms", round(data[f"p{q}_us"] / 1000, 3))
                result.max_ms = round(data["max_us"] / 1000, 3)
                result.mean_ms = round(data["mean_us"] / 1000, 3)
            return result
    # Fallback: wrk's text.
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    if match := re.search(r"Requests/sec:\s+([0-9.]+)", text):
        result.rps = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([0-9.]+\w+)", text):
        result.requests = int(match.group(1))
        seconds_ms = _duration_ms(match.group(2))
        if seconds_ms:
            result.seconds = round(seconds_ms / 1000, 3)
    for q, value in re.findall(r"^\s+(50|75|90|99)%\s+([0-9.]+\w+)\s*$", text, flags=re.M):
        setattr(result, f"p{q}_ms", _duration_ms(value))
    if result.p90_ms is not None and result.p99_ms is not None:
        result.p95_ms = round(result.p90_ms + (result.p99_ms - result.p90_ms) * 5 / 9, 3)
    if match := re.search(r"Latency\s+\S+\s+\S+\s+([0-9.]+\w+)", text):
        result.max_ms = _duration_ms(match.group(1))
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        errors["status"] = int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors.update(connect=int(match.group(1)), read=int(match.group(2)), write=int(match.group(3)),
                      timeout=int(match.group(4)))
    result.errors = errors
    return result


class Wrk:
    def __init__(self, binary: str, cpu: int | None, workdir: Path) -> None:
        self.binary = binary
        self.cpu = cpu
        self.workdir = workdir
        self._scripts: dict[str, Path] = {}

    def script(self, body: bytes, headers: dict[str, str], delay_ms: int = 0) -> Path:
        text = wrk_script(body, headers, delay_ms=delay_ms)
        path = self._scripts.get(text)
        if path is None:
            path = self.workdir / f"wrk-{len(self._scripts)}.lua"
            path.write_text(text)
            self._scripts[text] = path
        return path

    def command(self, url: str, script: Path, connections: int, seconds: int, timeout_s: int = 10) -> list[str]:
        cmd = [self.binary, "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency",
               "--timeout", f"{timeout_s}s", "-s", str(script), url]
        return pin(cmd, self.cpu)

    def run(self, url: str, script: Path, connections: int, seconds: int, *, target_rps: float | None = None
            ) -> WrkResult:
        cmd = self.command(url, script, connections, seconds)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        except subprocess.TimeoutExpired:
            return WrkResult(connections=connections, seconds=seconds, note="wrk did not finish in time")
        result = parse_wrk_output(proc.stdout, connections=connections, seconds=seconds)
        result.target_rps = target_rps
        if proc.returncode != 0 or (result.requests == 0 and proc.stderr.strip()):
            result.note = f"wrk exit {proc.returncode}: {proc.stderr.strip()[:200]}"
        return result


def pin(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


# --------------------------------------------------------------------------------------------
# Soak: /proc sampling and the slope


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(VmRSS in MB, open fds) of a live process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, flags=re.M)
    return (int(match.group(1)) / 1024, fds) if match else None


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) pairs, in value per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def summarise_series(points: list[tuple[float, float]], *, skip_before: float = 0.0) -> dict[str, Any]:
    """first/last/max and least-squares slopes of (seconds, value) samples taken under load.

    Samples before `skip_before` seconds (connections opening, pools filling) are left out. A leak
    is a trend: the slope over the second half, and whether the second half sets a new high
    (`max_second_half` over `max_first_half`); a pool that grew once and stays flat does neither.
    """
    points = [p for p in points if p[0] >= skip_before]
    if not points:
        return {"samples": 0}
    values = [v for _, v in points]
    middle = (points[0][0] + points[-1][0]) / 2
    first_half = [v for t, v in points if t < middle]
    second = [p for p in points if p[0] >= middle]
    slope, slope_half = slope_per_minute(points), slope_per_minute(second)
    return {
        "samples": len(points), "from_s": round(points[0][0], 1), "first": round(values[0], 2),
        "last": round(values[-1], 2), "max": round(max(values), 2), "min": round(min(values), 2),
        "max_first_half": round(max(first_half), 2) if first_half else None,
        "max_second_half": round(max(v for _, v in second), 2),
        "slope_per_min": None if slope is None else round(slope, 4),
        "slope_per_min_second_half": None if slope_half is None else round(slope_half, 4),
    }


# --------------------------------------------------------------------------------------------
# Processes


class Server:
    """A server process in its own session (so it and its children stop together), output to a file."""

    registry: ClassVar[list[Server]] = []

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str], port: int, log: Path,
                 cwd: Path = ROOT) -> None:
        self.name, self.cmd, self.env, self.port, self.log_path, self.cwd = name, cmd, env, port, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after: float | None = None

    def start(self) -> Server:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        Server.registry.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this bench created for it
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    @classmethod
    def stop_all(cls) -> None:
        for server in reversed(cls.registry):
            with contextlib.suppress(Exception):
                server.stop()
        cls.registry.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 5.0
         ) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback only
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def warm_up(url: str, body: bytes, headers: dict[str, str], *, requests: int, seconds: float) -> None:
    """A few sequential requests (bounded in count and time): lazy imports, caches, upstream pools."""
    deadline = time.monotonic() + seconds
    for _ in range(requests):
        if time.monotonic() > deadline:
            return
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()


def wait_ready(server: Server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
               timeout: float = 60.0) -> tuple[int, bytes]:
    """Poll until the server answers 200 (returns it), dies, or the deadline passes (raises)."""
    url = f"http://127.0.0.1:{server.port}{path}"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited during start-up:\n{server.log_tail()}")
        try:
            status, data = http(method, url, body, headers, timeout=5.0)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                if server.ready_after is None:
                    server.ready_after = round(time.monotonic() - server.started_at, 2)
                return status, data
            last = f"HTTP {status}: {data[:200]!r}"
            if 400 <= status < 500:  # a refusal, not a server still starting: no point waiting
                raise RuntimeError(f"{server.name} answered {last}")
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}")


def loaded_impls(pid: int) -> dict[str, str]:
    """Which event loop and HTTP parser the uvicorn process really loaded (from /proc/<pid>/maps)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return {"loop": "unknown", "http": "unknown"}
    return {
        "loop": "uvloop" if "uvloop/loop." in maps else "asyncio",
        "http": "httptools" if "httptools/parser" in maps else "h11",
    }


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES}
    env.update(extra)
    return env


def raise_fd_limit(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # inherited by every child
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# Tools: wrk and LiteLLM


def ensure_wrk(allow_install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not allow_install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        say("wrk is missing and cannot be installed here (needs root and apt-get): apt-get install wrk")
        return None
    say("wrk is missing: apt-get install -y wrk ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "wrk"]):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(step, env=env, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def litellm_version() -> str | None:
    for dist in sorted(LITELLM_VENV.glob("lib/python*/site-packages/litellm-*.dist-info")):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None


def ensure_litellm(*, install: bool, timeout: float, quick: bool) -> tuple[Path | None, str]:
    """The litellm CLI in its own venv (created and installed when missing, time-boxed)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists() and LITELLM_MARKER.exists():
        return binary, f"reused {LITELLM_VENV} (litellm {litellm_version()})"
    if not install:
        return None, f"not installed at {LITELLM_VENV} and --no-install given"
    if quick:
        say(f"LiteLLM is not installed yet: installing it into {LITELLM_VENV} (up to {timeout:.0f} s; "
            "this --quick run will take longer than a minute; later runs reuse the venv)")
    else:
        say(f"installing litellm[proxy] into {LITELLM_VENV} (up to {timeout:.0f} s) ...")
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "litellm-install.log"
    started = time.monotonic()
    steps = [[sys.executable, "-m", "venv", str(LITELLM_VENV)],
             [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "litellm[proxy]"]]
    with log.open("w") as out:
        for step in steps:
            left = timeout - (time.monotonic() - started)
            try:
                proc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=max(left, 1), check=False)
            except subprocess.TimeoutExpired:
                return None, f"install did not finish in {timeout:.0f} s (log: {log})"
            if proc.returncode != 0:
                tail = [ln for ln in log.read_text().splitlines() if ln.strip() and "is ignored" not in ln][-3:]
                return None, f"install failed ({' '.join(step[:3])}...): {' | '.join(tail)[:300]} (log: {log})"
    if not binary.exists():
        return None, f"install finished but {binary} is missing (log: {log})"
    LITELLM_MARKER.write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return binary, f"installed in {time.monotonic() - started:.0f} s (litellm {litellm_version()})"


def litellm_config(upstream_port: int) -> str:
    return (
        "model_list:\n"
        "  - model_name: gpt-4.1-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4.1-mini\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  set_verbose: false\n"
        "  request_timeout: 30\n"
        "  telemetry: false\n"
        "general_settings:\n"
        "  # no database, no master key: LiteLLM refuses to start without one unless told this\n"
        "  dangerously_permit_weak_or_unset_master_key: true\n"
    )


# --------------------------------------------------------------------------------------------
# Machine, Redis


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    from importlib import metadata

    for dist in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "aiohttp", "pydantic"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "packages": versions,
    }


def cpu_busy(seconds: float = 1.0) -> dict[str, float]:
    """Share of each CPU that was busy over `seconds` (from /proc/stat): other load on the machine."""

    def read() -> dict[str, tuple[int, int]]:
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values]
                out[name] = (sum(ticks), ticks[3] + (ticks[4] if len(ticks) > 4 else 0))  # total, idle+iowait
        return out

    try:
        first = read()
        time.sleep(seconds)
        second = read()
    except (OSError, ValueError):
        return {}
    busy = {}
    for name, (total, idle) in second.items():
        d_total, d_idle = total - first[name][0], idle - first[name][1]
        busy[name] = round(1 - d_idle / d_total, 3) if d_total > 0 else 0.0
    return busy


def wrk_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5, check=False)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    return "unknown"


def redis_ping(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed"
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def redis_cleanup(url: str, marker: str) -> int:
    """Delete the limiter keys this run created (they carry the run's user id)."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2)
        keys = list(client.scan_iter(match=f"ivy:rl:*{marker}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    except Exception:
        return 0


def router_counters(port: int) -> dict[str, float]:
    """Answers per provider and fallbacks, from the router's /metrics."""
    try:
        status, data = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in data.decode().splitlines():
        if line.startswith("ivy_requests_total{"):
            provider = re.search(r'provider="([^"]*)"', line)
            key = f"requests_{provider.group(1) if provider else '?'}"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("ivy_fallbacks_total"):
            out["fallbacks"] = out.get("fallbacks", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def not_openai(before: dict[str, float], after: dict[str, float]) -> int:
    """Router answers (or fallbacks) in a window that did not come from openai: hidden errors."""
    keys = {k for k in (*before, *after) if (k.startswith("requests_") and k != "requests_openai") or k == "fallbacks"}
    return int(sum(after.get(k, 0.0) - before.get(k, 0.0) for k in keys))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Target:
    key: str
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    server: Server | None = None
    points: dict[str, WrkResult] = field(default_factory=dict)
    status: str = "pending"  # measured | not measured
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def saturation(self) -> float | None:
        values = [p.rps for k, p in self.points.items() if k.startswith("c") and k != "c1"]
        return max(values) if values else None

    def errors(self) -> int:
        return sum(p.errors_total for p in self.points.values()) + int(self.extra.get("hidden_errors", 0))


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
        self.slow_paced: dict[str, dict[str, Any]] = {}  # the slow case's paced points, by target
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

    # -- measuring ------------------------------------------------------------------------------

    def measure(self, target: Target, *, seconds: int | None = None, warmup: bool = True) -> None:
        assert self.wrk is not None
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
        assert self.wrk is not None
        repeats = max(1, self.plan.repeats)
        each = max(1, seconds // repeats)
        runs = [self.wrk.run(url, script, connections, each) for _ in range(repeats)]
        chosen = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
        if repeats > 1:
            chosen.runs_rps = [r.rps for r in runs]
            chosen.errors = {k: sum(r.errors.get(k, 0) for r in runs) for k in chosen.errors}  # all runs' errors
        return chosen

    def check_chat(self, server: Server, path: str = "/v1/chat/completions") -> None:
        _, data = wait_ready(server, "POST", path, CHAT_BODY, {"Authorization": "Bearer sk-bench"},
                             timeout=self.args.start_timeout)
        payload = json.loads(data)
        content = payload["choices"][0]["message"]["content"]
        if not content:
            raise RuntimeError(f"{server.name}: empty answer {data[:200]!r}")

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

    def soak(self, target: Target) -> dict[str, Any]:
        assert self.wrk is not None and target.server is not None
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
            self.check_chat(server)
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
        slow_direct = self.slow_direct(slow_upstream, chat_body, chat_headers) if slow_upstream is not None else None
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
            self.measure(target, seconds=seconds, warmup=not (key == "a" and args.quick))
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
            rec["slow_upstream"] = self.slow_case(slow_upstream, slow_router, slow_direct, router_body, router_headers,
                                                  slow_proxy, chat_body, chat_headers)
            slow_router.stop()
            self.mark("slow_upstream")
        if router is not None and self.targets["c"].status == "measured" and plan.soak_seconds > 0:
            rec["soak"] = self.soak(self.targets["c"])
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
            self.check_chat(target.server)
            extra = ""
            if key == "b":
                target.extra["impl"] = impl = loaded_impls(target.server.pid)
                extra = f"; uvicorn loop={impl['loop']} http={impl['http']}"
            say(f"  {target.name} ready in {target.server.ready_after} s{extra}")
        except (RuntimeError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            target.status, target.why = "not measured", str(exc).splitlines()[0][:300]
            say(f"  {target.name}: NOT MEASURED: {exc}")
            target.server.stop()

    def slow_direct(self, upstream: Server, chat_body: bytes, chat_headers: dict[str, str]) -> WrkResult:
        """The 300 ms upstream alone at the slow case's connections: its own p99 is the floor of (c)'s."""
        assert self.wrk is not None
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
        assert self.wrk is not None
        seconds, conns = self.plan.slow_seconds, self.args.slow_connections
        point = self.wrk.run(url, self.wrk.script(body, headers, delay_ms=SLOW_THINK_MS), conns, seconds)
        say(f"  paced ({SLOW_THINK_MS} ms mean think time), {label}: {point.rps:.0f} req/s  p50 "
            f"{fmt(point.p50_ms)}  p99 {fmt(point.p99_ms)} ms  errors {point.errors_total}"
            + (f"  {point.note}" if point.note else ""))
        return point.as_dict()

    def slow_case(self, upstream: Server, router: Server, direct: WrkResult, router_body: bytes,
                  router_headers: dict[str, str], proxy: Server | None, chat_body: bytes,
                  chat_headers: dict[str, str]) -> dict[str, Any]:
        assert self.wrk is not None
        seconds, conns = self.plan.slow_seconds, self.args.slow_connections
        floor: WrkResult | None = None
        if proxy is not None:
            try:
                self.check_chat(proxy)
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


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def overhead(t: Target, a: Target) -> dict[str, float | None]:
    def diff(point: str, q: str) -> float | None:
        tp, ap = t.points.get(point), a.points.get(point)
        x = getattr(tp, q) if tp else None
        y = getattr(ap, q) if ap else None
        return None if x is None or y is None else round(x - y, 3)

    return {"c1_p50": diff("c1", "p50_ms"), "c1_p99": diff("c1", "p99_ms"),
            "moderate_p50": diff("moderate", "p50_ms"), "moderate_p99": diff("moderate", "p99_ms")}


def _rps(targets: dict[str, Target], key: str, point: str = "c50") -> float | None:
    t = targets.get(key)
    if t is None or t.status != "measured" or point not in t.points or not t.points[point].requests:
        return None
    return t.points[point].rps


def ratios(targets: dict[str, Target]) -> dict[str, float | None]:
    b, c, d, a = (_rps(targets, k) for k in "bcda")

    def sat(key: str) -> float | None:
        t = targets.get(key)
        return t.saturation() if t is not None and t.status == "measured" else None

    bs, cs, ds = sat("b"), sat("c"), sat("d")
    return {
        "c_over_b_c50": round(c / b, 3) if b and c else None,
        "c_over_d_c50": round(c / d, 2) if c and d else None,
        "a_over_b_c50": round(a / b, 2) if a and b else None,
        "c_over_b_saturation": round(cs / bs, 3) if bs and cs else None,
        "c_over_d_saturation": round(cs / ds, 2) if cs and ds else None,
    }


# A leak grows with the requests; a connection pool that reaches a new high-water mark in a rare
# burst of the Poisson load adds a few fds, bounded by the concurrency. At 200 requests/s, one fd
# leaked per 1,000 requests is 12 a minute: far above these limits.
FD_SECOND_HALF_GROWTH_MAX = 5
FD_SLOPE_MAX_PER_MIN = 1.0
RSS_SLOPE_MAX_MB_PER_MIN = 0.5


def checks(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured values, from a record alone (so a saved run can be
    re-evaluated). Informative: never changes the exit code."""
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: str, ok: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": measured,
                    "status": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    r = rec["ratios"]
    cb, cd = r.get("c_over_b_c50"), r.get("c_over_d_c50")
    add("throughput c/b at c=50", ">= 0.5", fmt(cb, 3), None if cb is None else cb >= 0.5)
    add("throughput c/d at c=50", ">= 10", fmt(cd, 1), None if cd is None else cd >= 10)
    over = rec["targets"].get("c", {}).get("over_a_ms") or {}
    p50, p99 = over.get("c1_p50"), over.get("c1_p99")
    add("c=1 latency (c)-(a) p50", "<= 0.8 ms", f"{fmt(p50, 3)} ms", None if p50 is None else p50 <= 0.8)
    add("c=1 latency (c)-(a) p99", "<= 2 ms", f"{fmt(p99, 3)} ms", None if p99 is None else p99 <= 2.0)
    slow = rec.get("slow_upstream")
    if slow:
        routed = slow["router"]
        errs = routed["errors_total"] + slow["hidden_errors"]
        add(f"300 ms upstream, {slow['connections']} conns: errors", "0", str(errs),
            errs == 0 and routed["requests"] > 0)
        p99 = routed["p99_ms"]
        add(f"300 ms upstream, {slow['connections']} conns: p99", "< 320 ms", f"{fmt(p99, 1)} ms",
            None if p99 is None else p99 < 320)
    else:
        add("300 ms upstream, 500 conns", "0 errors, p99 < 320 ms", "not measured", None)
    soak = rec.get("soak")
    if soak:
        label = f"soak {soak['seconds']} s" + (" (quick)" if soak["quick"] else "")
        rss, fds = soak["rss_mb"], soak["fds"]
        slope = rss.get("slope_per_min_second_half")
        add(f"{label}: RSS max", "< 250 MB", f"{fmt(rss.get('max'), 1)} MB",
            None if rss.get("max") is None else rss["max"] < 250)
        add(f"{label}: RSS slope (2nd half)", f"<= {RSS_SLOPE_MAX_MB_PER_MIN} MB/min (flat)",
            f"{fmt(slope, 3)} MB/min", None if slope is None else slope <= RSS_SLOPE_MAX_MB_PER_MIN)
        fd_slope, high1, high2 = fds.get("slope_per_min_second_half"), fds.get("max_first_half"), fds.get(
            "max_second_half")
        goal = f"2nd half: new high <= +{FD_SECOND_HALF_GROWTH_MAX}, slope <= {FD_SLOPE_MAX_PER_MIN:g}/min"
        add(f"{label}: fds", goal,
            f"{fmt(fds.get('first'), 0)} -> {fmt(fds.get('last'), 0)}, highs {fmt(high1, 0)}/{fmt(high2, 0)}, "
            f"slope {fmt(fd_slope, 2)}/min",
            None if fd_slope is None or high1 is None or high2 is None
            else fd_slope <= FD_SLOPE_MAX_PER_MIN and high2 - high1 <= FD_SECOND_HALF_GROWTH_MAX)
        errs = soak["load"]["errors_total"] + soak["hidden_errors"]
        add(f"{label}: errors", "0", str(errs), errs == 0)
    else:
        add("soak", "RSS flat < 250 MB, no fd growth", "not measured", None)
    return out


def render_report(rec: dict[str, Any], targets: dict[str, Target]) -> str:
    meta = rec["meta"]
    levels = [f"c{n}" for n in meta["plan"]["levels"]]
    lines = [f"== Ivy bench ({meta['mode']}), {meta['started_at']}, took {meta['elapsed_seconds']} s "
             f"(servers ready after {meta['startup_seconds']} s)"]
    m = meta["machine"]
    lines.append(f"machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}; "
                 f"{meta['load_generator']}")
    if meta.get("phases"):
        lines.append("phases, s: " + ", ".join(f"{k} {v:g}" for k, v in meta["phases"].items()))
    bg = meta.get("background", {})
    lines.append(f"background: CPU busy before start {bg.get('cpu_busy_before')}, loadavg before "
                 f"{bg.get('loadavg_before')} after {bg.get('loadavg_after')}")
    ups = rec.get("upstreams", {})
    b_rps = _rps(targets, "b")
    for kind in ("fake", "fast"):
        if kind in ups:
            rps = ups[kind]["c50"]["rps"]
            ratio = f" = {rps / b_rps:.1f} x (b)" if b_rps else ""
            used = "  <- used" if ups.get("used") == kind else ""
            lines.append(f"upstream {kind:4s} ({ups[kind]['name']}): {rps:.0f} req/s at c=50{ratio}{used}")
    if b_rps and "used" in ups:
        a_rps = _rps(targets, "a")
        if a_rps:
            verdict = "not the bottleneck" if a_rps >= 3 * b_rps else "MAY BE THE BOTTLENECK (< 3 x (b))"
            lines.append(f"upstream check: (a) {a_rps:.0f} req/s >= 3 x (b) {b_rps:.0f}? {verdict}")
    lines.append("")
    head = f"{'target':44s} {'c=1':>8s}" + "".join(f" {('c=' + lv[1:]):>8s}" for lv in levels)
    lines.append("throughput, requests/s (saturation = best of " + ", ".join(f"c={lv[1:]}" for lv in levels) + ")")
    lines.append(f"{head} {'satur.':>8s} {'errors':>7s} {'RSS MB':>7s}")
    for key in ("a", "b", "c", "d"):
        t = targets.get(key)
        if t is None:
            continue
        if t.status != "measured":
            lines.append(f"{t.name:44s} not measured: {t.why[:80]}")
            continue
        cells = [t.points[p].rps if p in t.points else None for p in ("c1", *levels)]
        rss = t.extra.get("rss_mb_after")
        lines.append(f"{t.name:44s}" + "".join(f" {fmt(v, 0):>8s}" for v in cells)
                     + f" {fmt(t.saturation(), 0):>8s} {t.errors():>7d} {fmt(rss, 0):>7s}")
    lines.append("")
    mod = meta["moderate"]
    lines.append(f"latency, ms: one connection, and at a moderate load of {mod['rps']} req/s "
                 f"over {mod['connections']} connections, exponential think times)")
    lines.append(f"{'target':44s} {'c1 p50':>7s} {'c1 p99':>7s} {'+p50':>7s} {'+p99':>7s} | {'p50':>7s} {'p95':>7s} "
                 f"{'p99':>7s} {'+p50':>7s} {'req/s':>7s}")
    for key in ("a", "b", "c", "d"):
        t = targets.get(key)
        if t is None or t.status != "measured":
            continue
        c1, md = t.points.get("c1"), t.points.get("moderate")
        over = rec["targets"][key].get("over_a_ms") or {}
        sat = "" if md is None or md.target_rps is None or md.rps >= 0.8 * md.target_rps else "  (saturated)"
        if key in rec["targets"] and rec["targets"][key].get("moderate_skipped"):
            sat = f"  moderate: n/a, {rec['targets'][key]['moderate_skipped']}"
        lines.append(
            f"{t.name:44s} {fmt(c1.p50_ms if c1 else None):>7s} {fmt(c1.p99_ms if c1 else None):>7s} "
            f"{fmt(over.get('c1_p50')):>7s} {fmt(over.get('c1_p99')):>7s} | "
            f"{fmt(md.p50_ms if md else None):>7s} {fmt(md.p95_ms if md else None):>7s} "
            f"{fmt(md.p99_ms if md else None):>7s} {fmt(over.get('moderate_p50')):>7s} "
            f"{fmt(md.rps if md else None, 0):>7s}{sat}")
    lines.append("(+p50/+p99: over (a), the same point)")
    lines.append("")
    r = rec["ratios"]

    def shown(key: str, digits: int) -> str:
        return fmt(r[key], digits) if r.get(key) else "n/a"

    lines.append(f"ratios at c=50: c/b = {shown('c_over_b_c50', 3)}, c/d = {shown('c_over_d_c50', 1)}; "
                 f"at saturation: c/b = {shown('c_over_b_saturation', 3)}, c/d = {shown('c_over_d_saturation', 1)}")
    if meta["plan"].get("repeats", 1) > 1:
        lines.append(f"(c=1/c=10/c=50: the median of {meta['plan']['repeats']} runs by req/s; every run's req/s is "
                     "in the JSON)")
    slow = rec.get("slow_upstream")
    if slow:
        d, rt = slow["direct"], slow["router"]
        lines.append(f"300 ms upstream, {slow['connections']} connections: direct p50 {fmt(d['p50_ms'], 1)} "
                     f"p99 {fmt(d['p99_ms'], 1)} ms ({d['rps']:.0f} req/s, {d['errors_total']} errors); "
                     + (f"(b) p50 {fmt(pb['p50_ms'], 1)} p99 {fmt(pb['p99_ms'], 1)} ms ({pb['rps']:.0f} req/s, "
                        f"{pb['errors_total']} errors); " if (pb := slow.get("proxy")) else "")
                     + f"(c) p50 {fmt(rt['p50_ms'], 1)} p99 {fmt(rt['p99_ms'], 1)} ms ({rt['rps']:.0f} req/s, "
                     f"{rt['errors_total'] + slow['hidden_errors']} errors)")
        if paced := slow.get("paced"):
            lines.append(f"  the same, each connection paced by {paced['think_ms']} ms mean think times: " + "; ".join(
                f"{label} p50 {fmt(pt['p50_ms'], 1)} p99 {fmt(pt['p99_ms'], 1)} ms ({pt['rps']:.0f} req/s, "
                f"{pt['errors_total'] + pt.get('hidden_errors', 0)} errors)"
                for label, key in (("direct", "direct"), ("(b)", "proxy"), ("(c)", "router"))
                if (pt := paced.get(key))))
    soak = rec.get("soak")
    if soak:
        rss, fds = soak["rss_mb"], soak["fds"]
        q = f" (--quick: {soak['seconds']} s stand-in for the 10-minute soak)" if soak["quick"] else ""
        errs = soak["load"]["errors_total"] + soak["hidden_errors"]
        lines.append(f"soak {soak['seconds']} s of (c) at {soak['load']['rps']:.0f} req/s{q}, {errs} errors:")
        lines.append(f"  (from {soak['ramp_s']:g} s on: the first seconds open connections and fill pools)")
        for label, s, unit in (("VmRSS", rss, "MB"), ("fds", fds, "")):
            lines.append(f"  {label:5s} first {fmt(s.get('first'), 1)} last {fmt(s.get('last'), 1)} "
                         f"max {fmt(s.get('max'), 1)} {unit} (halves {fmt(s.get('max_first_half'), 1)}/"
                         f"{fmt(s.get('max_second_half'), 1)}); slope {fmt(s.get('slope_per_min'), 3)}/min "
                         f"(second half {fmt(s.get('slope_per_min_second_half'), 3)}/min), {s.get('samples')} samples")
    lines.append("")
    lines.append("targets (informative; the exit code is 0 whatever they say):")
    for c in rec["checks"]:
        lines.append(f"  [{c['status']:4s}] {c['target']:42s} goal {c['goal']:34s} measured {c['measured']}")
    lit = rec.get("litellm")
    if lit:
        lines.append(f"LiteLLM: {lit['status']}: {lit['detail']}")
    lines.append(f"JSON: {rec['meta'].get('json_out', '?')}")
    return "\n".join(lines)


def render_markdown(rec: dict[str, Any]) -> str:
    """docs/PERFORMANCE.md's tables for one JSON record (``--markdown-from``): results, then targets."""
    meta = rec["meta"]
    bg = meta.get("background", {})
    when = str(meta.get("started_at", "?")).replace("T", " ")[:16]
    lines = [f"{meta.get('mode', '?').capitalize()} run of {when} UTC (`{meta.get('command', '?')}`, "
             f"{meta.get('elapsed_seconds', '?')} s; load average before {(bg.get('loadavg_before') or ['?'])[0]}):",
             "",
             "| target | c=1 req/s | c=1 p50 | c=1 p99 | c=10 req/s | c=50 req/s | c=50 p99 | "
             "moderate (200/s) p50 / p99 | errors | c=1 p50 / p99 over (a) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def num(value: Any, digits: int = 0, unit: str = "") -> str:
        if value is None:
            return "-"
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}" if unit else text

    for key in ("a", "b", "c", "d"):
        t = rec.get("targets", {}).get(key)
        if t is None:
            continue
        label = f"({key})"
        if t.get("status") != "measured":
            lines.append(f"| {label} | not measured: {t.get('why', '')[:80]} | | | | | | | | |")
            continue
        pts = t.get("points", {})
        c1, c10, c50, md = (pts.get(k) or {} for k in ("c1", "c10", "c50", "moderate"))
        moderate = (f"{num(md.get('p50_ms'), 2)} / {num(md.get('p99_ms'), 2)} ms" if md
                    else "n/a (saturates below the moderate load)")
        over = t.get("over_a_ms") or {}
        over_text = "-" if key == "a" else f"+{num(over.get('c1_p50'), 3)} / +{num(over.get('c1_p99'), 2)} ms"
        lines.append(f"| {label} | {num(c1.get('rps'))} | {num(c1.get('p50_ms'), 3, 'ms')} | "
                     f"{num(c1.get('p99_ms'), 2, 'ms')} | {num(c10.get('rps'))} | {num(c50.get('rps'))} | "
                     f"{num(c50.get('p99_ms'), 1, 'ms')} | {moderate} | {t.get('errors', 0)} | {over_text} |")
    r = rec.get("ratios", {})
    parts = [f"Ratios at c=50: c/b {num(r.get('c_over_b_c50'), 3)}, c/d {num(r.get('c_over_d_c50'), 1)}, "
             f"a/b {num(r.get('a_over_b_c50'), 1)}."]
    slow = rec.get("slow_upstream")
    if slow:
        d, rt = slow["direct"], slow["router"]
        errs = rt.get("errors_total", 0) + slow.get("hidden_errors", 0)
        parts.append(f"300 ms upstream with {slow['connections']} connections: direct p99 "
                     f"{num(d.get('p99_ms'), 0)} ms; "
                     + (f"through (b) {num(pb.get('rps'))} req/s, p99 {num(pb.get('p99_ms'), 0)} ms; "
                        if (pb := slow.get("proxy")) else "")
                     + f"through (c) {num(rt.get('rps'))} req/s, p99 {num(rt.get('p99_ms'), 0)} ms, errors {errs}.")
        if paced := slow.get("paced"):
            parts.append(f"The same with {paced['think_ms']} ms mean think times per connection: " + "; ".join(
                f"{label} {num(pt.get('rps'))} req/s, p50 {num(pt.get('p50_ms'), 1)} ms, p99 "
                f"{num(pt.get('p99_ms'), 1)} ms"
                for label, key in (("direct", "direct"), ("(b)", "proxy"), ("(c)", "router"))
                if (pt := paced.get(key))) + ".")
    soak = rec.get("soak")
    if soak:
        rss, fds = soak["rss_mb"], soak["fds"]
        parts.append(f"Soak {soak['seconds']} s: RSS {num(rss.get('first'), 1)} -> {num(rss.get('last'), 1)} MB "
                     f"(max {num(rss.get('max'), 1)}, second-half slope {num(rss.get('slope_per_min_second_half'), 3)} "
                     f"MB/min), fds {num(fds.get('first'))} -> {num(fds.get('last'))} (max {num(fds.get('max'))}, "
                     f"second-half slope {num(fds.get('slope_per_min_second_half'), 2)}/min).")
    lines += ["", " ".join(parts), "", "| target | goal | measured | |", "|---|---|---|---|"]
    for c in (checks(rec) if "ratios" in rec and "targets" in rec else rec.get("checks", [])):
        lines.append(f"| {c['target']} | {c['goal']} | {c['measured']} | {c['status']} |")
    return "\n".join(lines)


def write_json(path: Path, record: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def default_json_path(now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return ROOT / "bench-results" / f"bench-{stamp}.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s points, c=1/50 and moderate, 15 s soak (~1 min)")
    p.add_argument("--json-out", type=Path, default=None, help="default: bench-results/bench-YYYYMMDD-HHMMSS.json")
    p.add_argument("--targets", default="a,b,c,d", help="subset of a,b,c,d (a is always measured)")
    p.add_argument("--upstream", choices=("fast", "fake"), default="fast",
                   help="fast: scripts/bench_upstream.py (default; the fake provider is the bottleneck); "
                   "fake: tools/fake_provider/. Both are measured at c=50 either way")
    p.add_argument("--moderate-rps", type=int, default=200, help="the fixed moderate load, requests/s")
    p.add_argument("--moderate-connections", type=int, default=40,
                   help="connections carrying the moderate load (each paced by exponential think times)")
    p.add_argument("--slow-connections", type=int, default=500, help="connections of the 300 ms upstream case")
    p.add_argument("--point-seconds", type=int, default=0, help="override the duration of each point")
    p.add_argument("--soak-seconds", type=int, default=None, help="override the soak (0 skips it)")
    p.add_argument("--no-slow", action="store_true", help="skip the 300 ms / 500 connection case")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    p.add_argument("--no-install", action="store_true", help="install neither wrk nor LiteLLM")
    p.add_argument("--litellm-install-timeout", type=float, default=300.0)
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds a server may take to answer")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    p.add_argument("--markdown-from", type=Path, default=None, metavar="JSON",
                   help="print docs/PERFORMANCE.md's tables for a saved run and exit (measures nothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown_from is not None:
        print(render_markdown(json.loads(args.markdown_from.read_text())))
        return 0
    args.targets = ",".join(sorted({"a", *(t.strip() for t in args.targets.split(",") if t.strip())}))
    if not set(args.targets.split(",")) <= set("abcd"):
        build_parser().error("--targets takes a subset of a,b,c,d")
    json_out = args.json_out or default_json_path()

    def on_signal(signum: int, _frame: object) -> None:
        Server.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bench = Bench(args, json_out)
    failed = True
    try:
        record = bench.run()
        failed = any(t.status != "measured" for t in bench.targets.values())
    finally:
        Server.stop_all()
        if failed:
            say(f"server logs kept in {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    write_json(json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
