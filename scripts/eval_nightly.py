"""Nightly eval: run the labelled eval set through the real router and write today's report.

    cd scripts && python eval_nightly.py                 # the runbook's command (in-process app)
    python scripts/eval_nightly.py                       # the same, from the repo root
    IVY_EVAL_BASE_URL=http://localhost:8000 python scripts/eval_nightly.py   # against a running server

Writes `scripts/eval_reports/YYYYMMDD.json` (`jq '.summary'` shows the figures; `.cases` has every
case's outcome) and `scripts/eval_reports/ivy_eval.prom` (Prometheus textfile gauges), wherever it
is run from. Exits 1, with an ERROR line in logs/ai_router.log, when the success rate is below
the threshold (0.80) or when any case opened a modal it did not expect (a false modal,
`--max-false-modals`); 2 when it cannot run at all (bad settings, unreadable cases file).

The cases are every `*.jsonl` in `scripts/eval_data/` (`--cases` takes a file or a folder).

A case succeeds when the response is 200, the intent (and modal type) is the expected one, an
email draft validates as the email JSON tool's schema, and a rag answer carries citations.

In-process, the app is built once per flag setting the cases ask for (`flags.IVY_MODAL_HEURISTICS`),
with provider keys and the rest read from the environment / .env like the service. Against a
server the flags are the server's (`GET /ai/router/health`): cases that need other flags are
skipped and counted as skipped.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `cd scripts && python eval_nightly.py` must find `app`
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from app import config  # noqa: E402
from app.config import ConfigError, Settings  # noqa: E402
from app.drafts.email import EmailDraft  # noqa: E402
from app.main import create_app  # noqa: E402
from app.observability.logging import configure_logging, get_logger, shutdown_logging  # noqa: E402

SCRIPTS = ROOT / "scripts"
DEFAULT_CASES = SCRIPTS / "eval_data"  # every *.jsonl in it
DEFAULT_REPORTS = SCRIPTS / "eval_reports"
PROM_FILE = "ivy_eval.prom"
THRESHOLD = 0.80
DEFAULT_FLAGS: dict[str, bool] = {"IVY_MODAL_HEURISTICS": True}
INTENTS = ("conversational", "rag", "modal")
MODAL_TYPES = ("email_composer", "lead_insights")
SPLITS = ("tune", "heldout")
V2 = "/ai/router/v2"

log = get_logger(component="eval_nightly")


# --- cases and outcomes ----------------------------------------------------------------------------

def load_cases(path: Path) -> list[dict[str, Any]]:
    """The cases of one JSON-lines file, or of every `*.jsonl` in a folder (in name order)."""
    if path.is_dir():
        cases = [case for file in sorted(path.glob("*.jsonl")) for case in load_cases(file)]
        duplicates = sorted(i for i, n in collections.Counter(c["id"] for c in cases).items() if n > 1)
        if duplicates:
            raise ValueError(f"{path}: duplicate case ids {duplicates[:5]}")
        return cases
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        case = json.loads(line)
        missing = {"id", "query", "expected_intent"} - set(case)
        if missing:
            raise ValueError(f"{path}:{number}: missing {sorted(missing)}")
        cases.append(case)
    return cases


def case_flags(case: dict[str, Any]) -> dict[str, bool]:
    """The flags a case is labelled under: the service's defaults plus whatever the case sets."""
    return {**DEFAULT_FLAGS, **{k: bool(v) for k, v in (case.get("flags") or {}).items()}}


@dataclass
class Outcome:
    case: dict[str, Any]
    status: int | None = None
    body: dict[str, Any] | None = None
    latency_ms: float | None = None
    error: str | None = None
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def intent(self) -> str | None:
        return self.body.get("intent") if self.body else None

    @property
    def modal_type(self) -> str | None:
        modal = self.body.get("modal") if self.body else None
        return modal.get("type") if isinstance(modal, dict) else None

    @property
    def intent_ok(self) -> bool:
        return self.intent == self.case["expected_intent"] and self.modal_type == self.case.get("expected_modal")

    @property
    def false_modal(self) -> bool:
        """A panel opened that the case did not ask for (or the other panel): the costliest error."""
        return self.intent == "modal" and not self.intent_ok

    @property
    def json_valid(self) -> bool | None:
        """Email drafts only: does the payload validate as the email JSON tool's result?"""
        if self.modal_type != "email_composer" or self.body is None:
            return None
        payload = self.body["modal"].get("payload")
        if not isinstance(payload, dict) or not {"to", "subject", "body"} <= set(payload):
            return False
        try:
            EmailDraft.model_validate(payload)
        except ValidationError:
            return False
        return True

    @property
    def cited(self) -> bool | None:
        """rag answers only: does every answer name its sources?"""
        if self.intent != "rag" or self.body is None:
            return None
        citations = self.body.get("citations") or []
        return bool(citations) and all(isinstance(c, dict) and c.get("source") for c in citations)

    @property
    def passed(self) -> bool:
        return self.skipped is None and not self.failures

    def judge(self) -> Outcome:
        self.failures = []
        if self.skipped is not None:
            return self
        if self.error:
            self.failures.append(f"error: {self.error}")
        elif self.status != 200:
            self.failures.append(f"status: {self.status}")
        if not self.error and not self.intent_ok:
            want = _label(self.case["expected_intent"], self.case.get("expected_modal"))
            self.failures.append(f"intent: expected {want}, got {_label(self.intent, self.modal_type)}")
        if self.json_valid is False:
            self.failures.append("email_json_invalid")
        if self.cited is False:
            self.failures.append("rag_without_citations")
        return self

    def to_json(self) -> dict[str, Any]:
        body = self.body or {}
        detail = body.get("intent_detail") or {}
        return {
            "id": self.case["id"],
            "split": self.case.get("split"),
            "query": self.case["query"],
            "flags": case_flags(self.case),
            "expected": {"intent": self.case["expected_intent"], "modal": self.case.get("expected_modal")},
            "got": {
                "intent": self.intent, "modal": self.modal_type, "confidence": detail.get("confidence"),
                "reasons": detail.get("reasons"), "provider": body.get("provider"), "model": body.get("model"),
                "fallback": (body.get("fallback") or {}).get("reason"),
                "citations": [c.get("source") for c in body.get("citations") or [] if isinstance(c, dict)],
            },
            "status": self.status,
            "latency_ms": self.latency_ms,
            "email_json_valid": self.json_valid,
            "passed": self.passed,
            "skipped": self.skipped,
            "failures": self.failures,
        }


def _label(intent: str | None, modal: str | None) -> str:
    return f"{intent}/{modal}" if modal else str(intent)


# --- running the cases -------------------------------------------------------------------------------

class HttpClient(Protocol):
    """What the eval needs of a client: httpx.Client (a server) or TestClient (the in-process app)."""

    def post(self, url: str, *, json: Any, headers: dict[str, str]) -> Any: ...

    def get(self, url: str) -> Any: ...


def _ask(client: HttpClient, case: dict[str, Any], run_id: str) -> Outcome:
    outcome = Outcome(case)
    headers = {
        # One user per case: the eval measures answers, and must never be rate-limited.
        "X-User-ID": f"eval-nightly-{case['id']}",
        "X-Request-ID": f"eval-{run_id}-{case['id']}"[:64],
    }
    started = time.perf_counter()
    try:
        response = client.post(V2, json={"query": case["query"], "context": case.get("context") or {}},
                               headers=headers)
    except Exception as exc:  # one case's transport failure is that case's outcome, not the run's end
        outcome.error = f"{type(exc).__name__}: {exc}"[:300]
        return outcome.judge()
    outcome.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    outcome.status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    outcome.body = body if isinstance(body, dict) and response.status_code == 200 else None
    return outcome.judge()


def run_in_process(cases: list[dict[str, Any]], settings_for: Callable[[bool], Settings], run_id: str
                   ) -> list[Outcome]:
    """One real app per IVY_MODAL_HEURISTICS value the cases need, driven through TestClient."""
    outcomes: dict[str, Outcome] = {}
    groups: dict[bool, list[dict[str, Any]]] = collections.defaultdict(list)
    for case in cases:
        groups[case_flags(case)["IVY_MODAL_HEURISTICS"]].append(case)
    for modal_heuristics, group in groups.items():
        with TestClient(create_app(settings_for(modal_heuristics)), raise_server_exceptions=False) as client:
            for case in group:
                outcomes[case["id"]] = _ask(client, case, run_id)
    return [outcomes[c["id"]] for c in cases]


def server_flags(client: HttpClient) -> dict[str, bool] | None:
    try:
        response = client.get("/ai/router/health")
        flags = response.json().get("flags") if response.status_code == 200 else None
    except Exception:  # unreachable or not the router: run every case and let them fail visibly
        return None
    return {k: bool(v) for k, v in flags.items()} if isinstance(flags, dict) else None


def run_remote(client: HttpClient, cases: list[dict[str, Any]], run_id: str
               ) -> tuple[list[Outcome], dict[str, bool] | None]:
    """Against a running server: its flags are fixed, so cases labelled under other flags are skipped."""
    flags = server_flags(client)
    outcomes = []
    for case in cases:
        wanted = case_flags(case)
        differing = {k: v for k, v in wanted.items() if flags is not None and flags.get(k) != v}
        if differing:
            reason = ", ".join(f"case needs {k}={str(v).lower()}, server has {str(flags.get(k)).lower()}"
                               for k, v in differing.items() if flags is not None)
            outcomes.append(Outcome(case, skipped=reason))
        else:
            outcomes.append(_ask(client, case, run_id))
    return outcomes, flags


# --- the report ----------------------------------------------------------------------------------------

def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 3)


def precision_recall(pairs: Iterable[tuple[str | None, str | None]], labels: Iterable[str]
                     ) -> dict[str, dict[str, float | int | None]]:
    """Per label: precision and recall over (expected, got) pairs; None where undefined (0/0)."""
    pairs = list(pairs)
    table: dict[str, dict[str, float | int | None]] = {}
    for label in labels:
        tp = sum(1 for want, got in pairs if want == label and got == label)
        predicted = sum(1 for _, got in pairs if got == label)
        support = sum(1 for want, _ in pairs if want == label)
        table[label] = {"precision": _rate(tp, predicted), "recall": _rate(tp, support),
                        "support": support, "predicted": predicted}
    return table


def _label_of(intent: str | None, modal: str | None) -> str:
    return f"modal/{modal}" if intent == "modal" else str(intent)


def confusion(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    """expected label -> got label -> cases (labels: conversational, rag, modal/<type>)."""
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        want = _label_of(o.case["expected_intent"], o.case.get("expected_modal"))
        got = _label_of(o.intent, o.modal_type) if o.body is not None else "no_answer"
        row = table.setdefault(want, {})
        row[got] = row.get(got, 0) + 1
    return {want: dict(sorted(row.items())) for want, row in sorted(table.items())}


def _modal_figures(evaluated: list[Outcome]) -> dict[str, Any]:
    right = sum(1 for o in evaluated if o.intent == "modal" and o.intent_ok)
    opened = sum(1 for o in evaluated if o.intent == "modal")
    expected = sum(1 for o in evaluated if o.case["expected_intent"] == "modal")
    return {"false_modals": sum(o.false_modal for o in evaluated), "modal_precision": _rate(right, opened),
            "modal_recall": _rate(right, expected)}


def _split_figures(outcomes: list[Outcome]) -> dict[str, Any]:
    evaluated = [o for o in outcomes if o.skipped is None]
    return {
        "total": len(evaluated),
        "passed": sum(o.passed for o in evaluated),
        "skipped": len(outcomes) - len(evaluated),
        "success_rate": _rate(sum(o.passed for o in evaluated), len(evaluated)),
        "intent_accuracy": _rate(sum(o.intent_ok for o in evaluated), len(evaluated)),
        **_modal_figures(evaluated),
        "per_confusion": confusion(evaluated),
        "per_intent": precision_recall(((o.case["expected_intent"], o.intent) for o in evaluated), INTENTS),
        "per_modal_type": precision_recall(((o.case.get("expected_modal"), o.modal_type) for o in evaluated),
                                           MODAL_TYPES),
    }


def summarise(outcomes: list[Outcome], *, threshold: float, mode: str, base_url: str | None,
              flags: dict[str, bool] | None, started: datetime, finished: datetime) -> dict[str, Any]:
    evaluated = [o for o in outcomes if o.skipped is None]
    answered = [o for o in evaluated if o.body is not None]
    drafts = [o.json_valid for o in evaluated if o.json_valid is not None]
    rag = [o.cited for o in evaluated if o.cited is not None]
    latencies = [o.latency_ms for o in evaluated if o.latency_ms is not None]
    providers = collections.Counter(str(o.body.get("provider")) for o in answered if o.body)
    models = collections.Counter(f"{o.body.get('provider')}:{o.body.get('model')}" for o in answered if o.body)
    overall = _split_figures(outcomes)
    by_split = {s: _split_figures([o for o in outcomes if o.case.get("split") == s]) for s in SPLITS}
    success_rate = overall["success_rate"] or 0.0
    return {
        "date": started.strftime("%Y-%m-%d"),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_seconds": round((finished - started).total_seconds(), 3),
        "mode": mode,
        "base_url": base_url,
        "flags": flags,
        "total": overall["total"],
        "passed": overall["passed"],
        "failed": overall["total"] - overall["passed"],
        "skipped": overall["skipped"],
        "success_rate": success_rate,
        "threshold": threshold,
        "below_threshold": success_rate < threshold,
        "false_modals": overall["false_modals"],
        "false_modal_ids": [o.case["id"] for o in evaluated if o.false_modal],
        "modal_precision": overall["modal_precision"],
        "modal_recall": overall["modal_recall"],
        "intent_accuracy": overall["intent_accuracy"],
        "json_tool_valid_rate": _rate(sum(bool(v) for v in drafts), len(drafts)),
        "rag_citation_rate": _rate(sum(bool(v) for v in rag), len(rag)),
        "p50_latency_ms": _percentile(latencies, 0.50),
        "p95_latency_ms": _percentile(latencies, 0.95),
        "provider": providers.most_common(1)[0][0] if providers else None,
        "providers": dict(providers),
        "models": dict(models),
        "fallback_rate": _rate(sum(bool((o.body or {}).get("fallback", {}).get("used")) for o in answered),
                               len(answered)),
        "per_intent": {"overall": overall["per_intent"], **{s: by_split[s]["per_intent"] for s in SPLITS}},
        "per_modal_type": {"overall": overall["per_modal_type"],
                           **{s: by_split[s]["per_modal_type"] for s in SPLITS}},
        "confusion": {"overall": overall["per_confusion"], **{s: by_split[s]["per_confusion"] for s in SPLITS}},
        "splits": {s: {k: v for k, v in fig.items() if not k.startswith("per_")} for s, fig in by_split.items()},
        "failed_ids": [o.case["id"] for o in evaluated if not o.passed],
    }


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_prometheus(path: Path, summary: dict[str, Any], finished: datetime) -> None:
    """A node_exporter textfile: the alert on eval success rate reads these gauges."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> None:
        if value is None:
            return
        if labels:
            g = gauges.get(name) or Gauge(name, doc, list(labels), registry=registry)
            gauges[name] = g
            g.labels(**labels).set(value)
        else:
            Gauge(name, doc, registry=registry).set(value)

    gauges: dict[str, Gauge] = {}
    gauge("ivy_eval_success_rate", "Share of eval cases that passed (last nightly run).", summary["success_rate"])
    gauge("ivy_eval_intent_accuracy", "Share of eval cases with the expected intent and modal type.",
          summary["intent_accuracy"])
    gauge("ivy_eval_json_tool_valid_rate", "Share of email drafts that validate as the email JSON tool's schema.",
          summary["json_tool_valid_rate"])
    gauge("ivy_eval_rag_citation_rate", "Share of rag answers that carry citations.", summary["rag_citation_rate"])
    p95 = summary["p95_latency_ms"]
    gauge("ivy_eval_p95_latency_seconds", "p95 latency of eval requests.", None if p95 is None else p95 / 1000)
    gauge("ivy_eval_false_modals", "Eval cases where a modal opened that was not expected (last run).",
          summary["false_modals"])
    gauge("ivy_eval_modal_precision", "Share of opened modals that were the expected one.", summary["modal_precision"])
    gauge("ivy_eval_modal_recall", "Share of expected modals that opened.", summary["modal_recall"])
    gauge("ivy_eval_threshold", "Success rate below which the eval fails.", summary["threshold"])
    gauge("ivy_eval_below_threshold", "1 when the last run's success rate was below the threshold.",
          float(summary["below_threshold"]))
    for outcome in ("passed", "failed", "skipped"):
        gauge("ivy_eval_cases", "Eval cases by outcome (last run).", summary[outcome], {"outcome": outcome})
    for split, figures in summary["splits"].items():
        gauge("ivy_eval_split_success_rate", "Success rate per eval split.", figures["success_rate"],
              {"split": split})
        gauge("ivy_eval_split_intent_accuracy", "Intent accuracy per eval split.", figures["intent_accuracy"],
              {"split": split})
        gauge("ivy_eval_split_false_modals", "False modals per eval split.", figures["false_modals"],
              {"split": split})
    gauge("ivy_eval_last_run_timestamp_seconds", "Unix time the last eval run finished.", finished.timestamp())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # writes a temp file and renames it: readers never see half


# --- entry point -------------------------------------------------------------------------------------------

def _resolve(path: Path) -> Path:
    # Relative paths in .env are the service's, which runs from the repo root.
    return path if path.is_absolute() else ROOT / path


def load_settings(env_file: Path | None = ROOT / ".env", **overrides: Any) -> Settings:
    settings = config.load_settings(env_file, **overrides)  # ConfigError: one line, never a secret's value
    return settings.model_copy(update={
        "ivy_log_file": _resolve(settings.ivy_log_file), "ivy_knowledge_dir": _resolve(settings.ivy_knowledge_dir),
    })


def _print_summary(summary: dict[str, Any], report: Path) -> None:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    print(f"eval {summary['date']} ({summary['mode']}{' ' + summary['base_url'] if summary['base_url'] else ''}): "
          f"{summary['passed']}/{summary['total']} passed, success rate {pct(summary['success_rate'])} "
          f"(threshold {pct(summary['threshold'])}), {summary['skipped']} skipped")
    print(f"  false modals {summary['false_modals']}, modal precision {pct(summary['modal_precision'])}, "
          f"modal recall {pct(summary['modal_recall'])}"
          + "".join(f"; {s}: {f['false_modals']} false, precision {pct(f['modal_precision'])}, "
                    f"recall {pct(f['modal_recall'])}" for s, f in summary["splits"].items() if f["total"]))
    print(f"  intent accuracy {pct(summary['intent_accuracy'])}"
          + "".join(f", {s} {pct(f['intent_accuracy'])}" for s, f in summary["splits"].items() if f["total"]))
    print(f"  email JSON valid {pct(summary['json_tool_valid_rate'])}, rag cited {pct(summary['rag_citation_rate'])}, "
          f"p95 {summary['p95_latency_ms']} ms, provider {summary['provider']} {summary['providers']}")
    for label, row in {**summary["per_intent"]["overall"], **summary["per_modal_type"]["overall"]}.items():
        print(f"  {label:15} precision {pct(row['precision']):>6}  recall {pct(row['recall']):>6}  "
              f"(support {row['support']})")
    if summary["failed_ids"]:
        print(f"  failed: {', '.join(summary['failed_ids'][:30])}{' ...' if len(summary['failed_ids']) > 30 else ''}")
    print(f"report: {report}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the eval set through the router and write today's report.")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES,
                        help="labelled cases: a JSON-lines file or a folder of them (default scripts/eval_data/)")
    parser.add_argument("--max-false-modals", type=int, default=0,
                        help="false modals above which the run fails (default 0: any false modal fails it)")
    parser.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS, help="where reports are written")
    parser.add_argument("--base-url", default=os.environ.get("IVY_EVAL_BASE_URL") or None,
                        help="evaluate a running server instead of the in-process app (env IVY_EVAL_BASE_URL)")
    parser.add_argument("--threshold", type=float, default=float(os.environ.get("IVY_EVAL_THRESHOLD") or THRESHOLD),
                        help="success rate below which the run fails (default 0.80)")
    parser.add_argument("--split", choices=("all", *SPLITS), default="all", help="run one split only")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env",
                        help="settings file read like the service's .env (default: the repo's .env)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout against a server (s)")
    parser.add_argument("--app-log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of the in-process app (default WARNING: the eval's own request "
                             "lines would only repeat the report)")
    return parser.parse_args(argv)


@dataclass
class _Logging:
    settings: Settings

    def __enter__(self) -> _Logging:
        s = self.settings
        configure_logging(s.ivy_log_file, level="INFO", max_bytes=s.ivy_log_max_bytes, backups=s.ivy_log_backups)
        return self

    def __exit__(self, *_: object) -> None:
        shutdown_logging()


def _cases_for(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for case in load_cases(args.cases):
        if args.split == "all" or case.get("split") == args.split:
            yield case


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        settings = load_settings(args.env_file)
        cases = list(_cases_for(args))
    except (ConfigError, ValidationError, OSError, ValueError) as exc:
        print(f"eval_nightly: cannot run: {exc}", file=sys.stderr)
        return 2

    started = datetime.now().astimezone()
    run_id = started.strftime("%Y%m%d%H%M%S")
    flags: dict[str, bool] | None
    if args.base_url:
        with httpx.Client(base_url=args.base_url, timeout=args.timeout) as client:
            outcomes, flags = run_remote(client, cases, run_id)
        mode = "remote"
    else:
        def settings_for(modal_heuristics: bool) -> Settings:
            return settings.model_copy(update={
                "ivy_modal_heuristics": modal_heuristics, "ivy_log_level": args.app_log_level,
                # Per-user and per-org buckets far above the eval's volume: it must never see a 429.
                "ai_rate_limit_per_min": 1_000_000, "ai_rate_limit_burst": None,
                "ai_org_rate_limit_per_min": 10_000_000,
            })

        outcomes = run_in_process(cases, settings_for, run_id)
        flags = None
        mode = "in-process"
    finished = datetime.now().astimezone()

    summary = summarise(outcomes, threshold=args.threshold, mode=mode, base_url=args.base_url, flags=flags,
                        started=started, finished=finished)
    report_path = args.reports_dir / f"{started:%Y%m%d}.json"
    write_json_atomically(report_path, {"summary": summary, "cases": [o.to_json() for o in outcomes]})
    write_prometheus(args.reports_dir / PROM_FILE, summary, finished)
    _print_summary(summary, report_path)

    with _Logging(settings):
        figures = {k: summary[k] for k in ("total", "passed", "skipped", "success_rate", "intent_accuracy",
                                           "false_modals", "modal_precision", "modal_recall",
                                           "json_tool_valid_rate", "p95_latency_ms", "provider", "mode")}
        failed = False
        if summary["false_modals"] > args.max_false_modals:
            log.error("eval_false_modals", max_false_modals=args.max_false_modals, report=str(report_path),
                      false_modal_ids=summary["false_modal_ids"][:50], model_provider=summary["provider"], **figures)
            print(f"ERROR: {summary['false_modals']} eval case(s) opened a modal nobody asked for "
                  f"({', '.join(summary['false_modal_ids'][:10])}; report: {report_path})", file=sys.stderr)
            failed = True
        if summary["below_threshold"]:
            log.error("eval_success_rate_below_threshold", threshold=args.threshold, report=str(report_path),
                      failed_ids=summary["failed_ids"][:50], model_provider=summary["provider"], **figures)
            print(f"ERROR: eval success rate {summary['success_rate']:.1%} is below {args.threshold:.0%} "
                  f"(report: {report_path})", file=sys.stderr)
            failed = True
        if failed:
            return 1
        log.info("eval_completed", threshold=args.threshold, report=str(report_path),
                 model_provider=summary["provider"], **figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
