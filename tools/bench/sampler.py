"""/proc sampling: a process's VmRSS and open fds and their trend, which uvicorn loop and parser it
loaded, the machine and its background load."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from pathlib import Path
from typing import Any


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
