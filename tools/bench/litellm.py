"""LiteLLM's proxy for target (d): litellm[proxy] in its own venv under the bench cache (installed
once, time-boxed, reused), and its config (no database, retries 0)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tools.bench import say

CACHE = Path(os.environ.get("IVY_BENCH_CACHE") or Path.home() / ".cache" / "ivy-bench")
LITELLM_VENV = CACHE / "litellm-venv"
LITELLM_MARKER = LITELLM_VENV / ".ivy-bench-installed"


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
