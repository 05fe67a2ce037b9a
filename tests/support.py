"""Real processes for tests: a redis-server we can stop and restart, and the service under uvicorn."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import redis

from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


class RedisProcess:
    """A redis-server of the test's own, so the test can kill it mid-run and bring it back."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as the module ``name`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def spawn_uvicorn(env: dict[str, str], *, workers: int = 1, port: int | None = None, stderr: Path | None = None,
                  host: str = "127.0.0.1", app: str = "app.main:app") -> tuple[subprocess.Popen[bytes], str]:
    """`python -m uvicorn app.main:app` as operators run it (or ``app``, a test's wrapper of it), once
    /health answers: (process, base URL).
    Its stderr goes to ``stderr`` (a file) or a pipe; the process leads its own session (os.killpg
    reaches its workers)."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "OPENAI_API_KEY", "REDIS_URL")}
    full_env.update(env)
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port),
           "--workers", str(workers), "--log-level", "warning"]
    err = stderr.open("wb") if stderr is not None else subprocess.PIPE
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)
    if stderr is not None:
        err.close()  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            said = proc.stderr.read().decode() if proc.stderr else stderr.read_text() if stderr else ""
            raise RuntimeError(f"uvicorn exited: {said}")
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            return proc, base
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextmanager
def uvicorn_server(env: dict[str, str], *, workers: int = 1, port: int | None = None,
                   app: str = "app.main:app") -> Iterator[str]:
    """`python -m uvicorn app.main:app` as operators run it; yields the base URL once /health answers."""
    proc, base = spawn_uvicorn(env, workers=workers, port=port, app=app)
    try:
        yield base
    finally:
        stop_process(proc)


@contextmanager
def raw_ask(base: str, org: str, body: bytes) -> Iterator[socket.socket]:
    """POST /ai/router/v2 on a socket of the test's own, so it can leave mid-answer (closing it)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /ai/router/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"X-User-ID: rep-1\r\nX-Org-ID: {org}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        yield conn


def leave_after_deltas(base: str, org: str, body: bytes, deltas: int = 2) -> bytes:
    """Ask for a stream on a socket of our own and close it once ``deltas`` deltas arrived: a
    client that leaves mid-answer. Returns what it had read."""
    with raw_ask(base, org, body) as conn:
        seen = b""
        while seen.count(b"event: delta") < deltas:
            piece = conn.recv(65536)
            assert piece, f"the server closed the stream before {deltas} deltas: {seen!r}"
            seen += piece
    return seen
