"""Server processes of the bench: each in its own session with its output in a file, polled over
HTTP until ready; the environment they inherit; Redis; the router's /metrics counters."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from tools.bench import ROOT
from tools.ports import free_port

CHAT_BODY = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hello there"}]}
# Environment the servers must not inherit from the caller's shell (the bench sets what it needs).
_SCRUBBED_PREFIXES = ("IVY_", "AI_", "REDIS_", "GEMINI_", "OPENAI_", "LITELLM_", "PROMETHEUS_MULTIPROC")
_SCRUBBED_NAMES = ("ACTIVE_MODEL", "prometheus_multiproc_dir")


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


def check_chat(server: Server, timeout: float, path: str = "/v1/chat/completions") -> None:
    """Wait for an OpenAI-compatible server and check it answers a chat completion with text."""
    _, data = wait_ready(server, "POST", path, CHAT_BODY, {"Authorization": "Bearer sk-bench"}, timeout=timeout)
    payload = json.loads(data)
    content = payload["choices"][0]["message"]["content"]
    if not content:
        raise RuntimeError(f"{server.name}: empty answer {data[:200]!r}")


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` run on ``cpus`` (taskset's list, e.g. "0"), or as it is when None."""
    return cmd if cpus is None else ["taskset", "-c", cpus, *cmd]


def realistic_fake(seed: int, time_scale: float, cpus: str | None = None) -> tuple[Server, str]:
    """The fake provider in realistic mode, started (on ``cpus`` when given): (its Server, its base URL)."""
    port = free_port()
    fake = Server("fake-provider", pinned([sys.executable, "-m", "tools.fake_provider", "--port", str(port),
                                           "--realistic", "--seed", str(seed), "--time-scale", str(time_scale)], cpus),
                  env=dict(os.environ), port=port,
                  log=Path(tempfile.mkdtemp(prefix="ivy-realistic-fake-")) / "fake.log").start()
    return fake, f"http://127.0.0.1:{port}"


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
