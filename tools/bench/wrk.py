"""wrk: installed when missing, the Lua script (static, or paced by think times), one run, its output parsed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.bench import say


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


def wrk_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5, check=False)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    return "unknown"
