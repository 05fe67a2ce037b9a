"""scripts/bench.py (tools/bench/) without load: --help, the wrk script and output parsers, the slope, the JSON writer.

No server is started and nothing is timed here; the bench itself is run by hand or nightly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import load_script
from tools.bench.record import default_json_path, write_json
from tools.bench.sampler import slope_per_minute, summarise_series
from tools.bench.wrk import parse_wrk_output, wrk_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench.py"


bench_upstream = load_script("bench_upstream")

WRK_TEXT = """Running 2s test @ http://127.0.0.1:8000/ai/router/v2
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    61.10ms   20.02ms 179.06ms   70.12%
    Req/Sec   726.00     50.00   800.00     66.67%
  Latency Distribution
     50%   61.10ms
     75%   70.00ms
     90%   90.00ms
     99%  179.06ms
  1452 requests in 2.00s, 1.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:    725.96
Transfer/sec:    512.00KB
"""


def test_help_runs_without_starting_anything() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--json-out" in out.stdout


def test_parse_prefers_the_done_hook_json() -> None:
    line = ('BENCH_JSON {"requests":2000,"duration_us":2000000,"bytes":100,"connect":0,"read":1,"write":0,'
            '"status":4,"timeout":0,"min_us":100.0,"mean_us":1500.0,"max_us":9000.0,"p50_us":1200.0,'
            '"p75_us":1800.0,"p90_us":2500.0,"p95_us":3000.0,"p99_us":7000.5}')
    result = parse_wrk_output(WRK_TEXT + line + "\n", connections=50, seconds=2)
    assert result.requests == 2000 and result.rps == 1000.0
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (1.2, 3.0, 7.0)  # rounded to the microsecond
    assert result.errors == {"connect": 0, "read": 1, "write": 0, "timeout": 0, "status": 4}
    assert result.errors_total == 5
    assert result.as_dict()["errors_total"] == 5


def test_parse_falls_back_to_wrk_text() -> None:
    result = parse_wrk_output(WRK_TEXT, connections=50, seconds=2)
    assert result.rps == 725.96 and result.requests == 1452
    assert result.p50_ms == pytest.approx(61.1) and result.p99_ms == pytest.approx(179.06)
    assert result.p95_ms == pytest.approx(90 + (179.06 - 90) * 5 / 9, abs=1e-3)  # interpolated
    assert result.errors == {"connect": 0, "read": 3, "write": 0, "timeout": 2, "status": 5}


def test_parse_of_nothing_is_zero_not_a_crash() -> None:
    result = parse_wrk_output("", connections=1, seconds=1)
    assert result.requests == 0 and result.rps == 0 and result.p50_ms is None


def test_wrk_script_is_static_unless_paced() -> None:
    body = json.dumps({"query": "hello there", "context": {}}).encode()
    script = wrk_script(body, {"Content-Type": "application/json", "X-User-ID": "u1"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = "{\\"query\\": \\"hello there\\", \\"context\\": {}}"' in script
    assert 'wrk.headers["X-User-ID"] = "u1"' in script
    assert "function done(" in script and "BENCH_JSON" in script
    assert "function delay" not in script and "function response" not in script and "function request" not in script
    paced = wrk_script(body, {}, delay_ms=200)
    assert "function delay()" in paced and "local mean_ms = 200" in paced
    with pytest.raises(ValueError):
        wrk_script("é".encode(), {})


def test_slope_per_minute_and_summary() -> None:
    flat = [(t * 5.0, 80.0) for t in range(20)]
    assert slope_per_minute(flat) == pytest.approx(0.0)
    growing = [(t * 6.0, 80.0 + t) for t in range(20)]  # +1 MB every 6 s = 10 MB/min
    assert slope_per_minute(growing) == pytest.approx(10.0)
    assert slope_per_minute(growing[:2]) is None
    summary = summarise_series(growing)
    assert summary["first"] == 80.0 and summary["last"] == 99.0 and summary["max"] == 99.0
    assert summary["slope_per_min_second_half"] == pytest.approx(10.0)
    assert summary["max_second_half"] > summary["max_first_half"]  # a leak sets new highs
    assert summarise_series([]) == {"samples": 0}
    # A pool that fills during the ramp and then stays flat: no trend once the ramp is skipped.
    pool = [(0.0, 66.0), (5.0, 114.0), *((t * 5.0, 122.0) for t in range(2, 40))]
    flat_pool = summarise_series(pool, skip_before=10.0)
    assert flat_pool["first"] == 122.0 and flat_pool["slope_per_min_second_half"] == pytest.approx(0.0)
    assert flat_pool["max_first_half"] == flat_pool["max_second_half"] == 122.0


def test_json_writer_and_default_name(tmp_path: Path) -> None:
    out = write_json(tmp_path / "nested" / "bench.json", {"meta": {"mode": "quick"}, "path": tmp_path})
    assert json.loads(out.read_text())["meta"]["mode"] == "quick"
    name = default_json_path(0).name
    assert name.startswith("bench-") and name.endswith(".json") and len(name) == len("bench-YYYYMMDD-HHMMSS.json")


def test_upstream_parses_request_heads() -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: keep-alive"
    assert bench_upstream.parse_head(head) == (b"POST", b"/v1/chat/completions", 12, False, False)
    method, _, _, chunked, close = bench_upstream.parse_head(b"GET /health HTTP/1.0\r\nTransfer-Encoding: chunked")
    assert method == b"GET" and chunked and close
    with pytest.raises(ValueError):
        bench_upstream.parse_head(b"garbage")
    assert bench_upstream.OK.startswith(b"HTTP/1.1 200 OK\r\n")


def test_markdown_from_a_saved_record(tmp_path: Path) -> None:
    point = {"requests": 1000, "rps": 500.0, "p50_ms": 1.8, "p99_ms": 5.0, "errors_total": 0}
    record = {
        "meta": {"mode": "quick", "started_at": "2026-11-24T16:10:26+0000", "command": "x", "elapsed_seconds": 60},
        "targets": {
            "a": {"status": "measured", "points": {"c1": point, "c50": point}, "errors": 0},
            "d": {"status": "not measured", "why": "install failed"},
        },
        "ratios": {"c_over_b_c50": None},
        "slow_upstream": {
            "connections": 500, "direct": point, "proxy": None, "router": point, "hidden_errors": 0,
            "paced": {"think_ms": 100, "direct": {**point, "p99_ms": 301.0},
                      "router": {**point, "p50_ms": 302.0, "p99_ms": 313.5, "hidden_errors": 0}},
        },
        "checks": [{"target": "throughput c/b at c=50", "goal": ">= 0.5", "measured": "-", "status": "n/a"}],
    }
    saved = write_json(tmp_path / "run.json", record)
    out = subprocess.run([sys.executable, str(SCRIPT), "--markdown-from", str(saved)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "| (a) | 500 | 1.800 ms |" in out.stdout
    assert "not measured: install failed" in out.stdout
    assert "| throughput c/b at c=50 | >= 0.5 | - | n/a |" in out.stdout
    assert ("The same with 100 ms mean think times per connection: direct 500 req/s, p50 1.8 ms, p99 301.0 ms; "
            "(c) 500 req/s, p50 302.0 ms, p99 313.5 ms.") in out.stdout
