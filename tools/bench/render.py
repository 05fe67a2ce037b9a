"""The bench's two renderings of a record: the terminal report and docs/PERFORMANCE.md's markdown tables."""

from __future__ import annotations

from typing import Any

from tools.bench import fmt
from tools.bench.record import Target, checks, point_rps


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
    b_rps = point_rps(targets, "b")
    for kind in ("fake", "fast"):
        if kind in ups:
            rps = ups[kind]["c50"]["rps"]
            ratio = f" = {rps / b_rps:.1f} x (b)" if b_rps else ""
            used = "  <- used" if ups.get("used") == kind else ""
            lines.append(f"upstream {kind:4s} ({ups[kind]['name']}): {rps:.0f} req/s at c=50{ratio}{used}")
    if b_rps and "used" in ups:
        a_rps = point_rps(targets, "a")
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
