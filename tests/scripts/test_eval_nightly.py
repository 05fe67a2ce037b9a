"""scripts/eval_nightly.py: the report on-call reads, the exit code the alert keys on, both ways of running it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import read_log
from tests.support import load_script
from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "eval_nightly.py"
ALL_CASES = {c["id"]: c for c in map(json.loads, (ROOT / "scripts/eval_data/cases.jsonl").read_text().splitlines())}
# One of each kind: a draft, insights, a no-score rag, a KB rag, chat, and a flags-off draft.
SAMPLE_IDS = ["c001", "c061", "c135", "c211", "c250", "c161"]


eval_nightly = load_script("eval_nightly")


def write_cases(path: Path, cases: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
    return path


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_cases(tmp_path / "cases.jsonl", [ALL_CASES[i] for i in SAMPLE_IDS])


@pytest.fixture
def run(tmp_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, dict[str, Any]]]:
    """main() in-process, isolated: settings from no .env, log and reports under tmp_path."""
    monkeypatch.setenv("IVY_LOG_FILE", str(log_file))
    for name in ("IVY_EVAL_BASE_URL", "IVY_EVAL_THRESHOLD", "IVY_KNOWLEDGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    reports = tmp_path / "reports"

    def go(cases: Path, *extra: str) -> tuple[int, dict[str, Any]]:
        code = eval_nightly.main(["--cases", str(cases), "--reports-dir", str(reports),
                                  "--env-file", str(tmp_path / "no.env"), *extra])
        found = sorted(reports.glob("*.json"))
        return code, json.loads(found[-1].read_text()) if found else {}

    return go


def test_report_summary_has_the_runbook_figures_and_every_case(run: Any, sample: Path, tmp_path: Path) -> None:
    code, report = run(sample)
    assert code == 0
    summary = report["summary"]
    assert (tmp_path / "reports" / (summary["date"].replace("-", "") + ".json")).is_file()
    for key in ("total", "passed", "success_rate", "intent_accuracy", "per_intent", "per_modal_type",
                "json_tool_valid_rate", "p95_latency_ms", "provider", "skipped", "splits"):
        assert key in summary, key
    assert summary["total"] == len(SAMPLE_IDS) and summary["passed"] == len(SAMPLE_IDS)
    assert summary["success_rate"] == 1.0 and summary["intent_accuracy"] == 1.0
    assert summary["provider"] == "local"
    assert summary["json_tool_valid_rate"] == 1.0
    assert summary["p95_latency_ms"] > 0
    assert set(summary["per_intent"]) == {"overall", "tune", "heldout"}
    assert set(summary["per_intent"]["overall"]) == {"conversational", "rag", "modal"}
    assert set(summary["per_modal_type"]["overall"]) == {"email_composer", "lead_insights"}
    assert summary["per_intent"]["overall"]["rag"] == {"precision": 1.0, "recall": 1.0, "support": 2, "predicted": 2}
    assert [c["id"] for c in report["cases"]] == SAMPLE_IDS
    case = report["cases"][0]
    assert case["passed"] and case["status"] == 200 and case["failures"] == []
    assert case["got"]["intent"] == "modal" and case["got"]["modal"] == "email_composer"
    assert case["got"]["reasons"] and case["email_json_valid"] is True


def test_prometheus_textfile_carries_the_alert_gauges(run: Any, sample: Path, tmp_path: Path) -> None:
    run(sample)
    text = (tmp_path / "reports" / "ivy_eval.prom").read_text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ivy_eval_success_rate", ())] == 1.0
    assert samples[("ivy_eval_intent_accuracy", ())] == 1.0
    assert samples[("ivy_eval_below_threshold", ())] == 0.0
    assert samples[("ivy_eval_cases", (("outcome", "passed"),))] == len(SAMPLE_IDS)
    assert abs(samples[("ivy_eval_last_run_timestamp_seconds", ())] - time.time()) < 120


def test_flags_off_case_runs_on_an_app_with_modal_heuristics_off(run: Any, sample: Path) -> None:
    _, report = run(sample)
    cases = {c["id"]: c for c in report["cases"]}
    assert ALL_CASES["c161"]["query"] == ALL_CASES["c001"]["query"]
    assert cases["c001"]["got"]["intent"] == "modal"
    assert cases["c161"]["flags"] == {"IVY_MODAL_HEURISTICS": False}
    assert cases["c161"]["got"]["intent"] == "conversational" and cases["c161"]["passed"]


def test_success_rate_below_threshold_exits_1_and_logs_an_error(
        run: Any, tmp_path: Path, log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Conversational labels on cases that are not modals: wrong, but no false modal among them.
    wrong = [{**ALL_CASES[i], "expected_intent": "conversational", "expected_modal": None}
             for i in ("c120", "c121", "c123")]
    assert all(ALL_CASES[i]["expected_intent"] == "rag" for i in ("c120", "c121", "c123"))
    code, report = run(write_cases(tmp_path / "wrong.jsonl", [*wrong, ALL_CASES["c211"]]))
    assert code == 1
    assert report["summary"]["success_rate"] == 0.25 and report["summary"]["below_threshold"] is True
    assert report["summary"]["false_modals"] == 0
    assert report["cases"][0]["failures"] == ["intent: expected conversational, got rag"]
    errors = [line for line in read_log(log_file, until=lambda ls: any(x["level"] == "ERROR" for x in ls))
              if line["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["event"] == "eval_success_rate_below_threshold"
    assert errors[0]["success_rate"] == 0.25 and errors[0]["threshold"] == 0.8
    assert "ERROR: eval success rate 25.0% is below 80%" in capsys.readouterr().err


def test_one_false_modal_fails_the_run_whatever_the_success_rate(
        run: Any, tmp_path: Path, log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    right = [ALL_CASES[i] for i in SAMPLE_IDS]
    false_modal = {**ALL_CASES["c001"], "id": "fm1", "expected_intent": "rag", "expected_modal": None}
    code, report = run(write_cases(tmp_path / "one_false.jsonl", [*right, false_modal]))
    summary = report["summary"]
    assert code == 1
    assert summary["below_threshold"] is False
    assert (summary["false_modals"], summary["false_modal_ids"]) == (1, ["fm1"])
    assert summary["modal_precision"] < 1.0
    assert summary["confusion"]["overall"]["rag"]["modal/email_composer"] == 1
    errors = [line for line in read_log(log_file, until=lambda ls: any(x["level"] == "ERROR" for x in ls))
              if line["level"] == "ERROR"]
    assert [e["event"] for e in errors] == ["eval_false_modals"]
    assert "opened a modal nobody asked for (fm1" in capsys.readouterr().err
    prom = (tmp_path / "reports" / "ivy_eval.prom").read_text()
    assert "ivy_eval_false_modals 1.0" in prom


def test_a_rag_answer_without_citations_fails_its_case(run: Any, tmp_path: Path) -> None:
    case = {"id": "x1", "split": "tune", "query": "does ivy support carrier pigeons?", "context": {},
            "expected_intent": "rag", "expected_modal": None}
    code, report = run(write_cases(tmp_path / "uncited.jsonl", [case]))
    assert code == 1
    assert report["cases"][0]["got"]["intent"] == "rag"
    assert report["cases"][0]["failures"] == ["rag_without_citations"]


def test_an_unreadable_cases_file_exits_2(run: Any, tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"id": "c1", "query": "hi"}\n')
    assert run(tmp_path / "broken.jsonl")[0] == 2


def test_against_a_server_cases_needing_other_flags_are_skipped(make_client: Callable[..., TestClient]) -> None:
    server = make_client(ivy_modal_heuristics=False)
    outcomes, flags = eval_nightly.run_remote(server, [ALL_CASES[i] for i in SAMPLE_IDS], "test")
    assert flags == {"IVY_MODAL_HEURISTICS": False, "IVY_ORGANIC_ENABLED": True}
    by_id = {o.case["id"]: o for o in outcomes}
    assert by_id["c001"].skipped == "case needs IVY_MODAL_HEURISTICS=true, server has false"
    assert by_id["c161"].skipped is None and by_id["c161"].passed
    summary = eval_nightly.summarise(outcomes, threshold=0.8, mode="remote", base_url="x", flags=flags,
                                     started=eval_nightly.datetime.now(), finished=eval_nightly.datetime.now())
    assert (summary["total"], summary["skipped"], summary["passed"]) == (1, len(SAMPLE_IDS) - 1, 1)


def test_an_unreachable_server_fails_every_case(run: Any, sample: Path) -> None:
    code, report = run(sample, "--base-url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1
    assert report["summary"]["mode"] == "remote" and report["summary"]["passed"] == 0
    assert all(c["failures"][0].startswith("error: ") for c in report["cases"])


def _clean_env(log_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IVY_", "GEMINI_", "OPENAI_", "REDIS_", "AI_RATE", "AI_ORG", "ACTIVE_MODEL"))}
    return {**env, "IVY_LOG_FILE": str(log_file)}


@pytest.mark.parametrize("cwd", [ROOT / "scripts", ROOT])
def test_runs_from_the_scripts_directory_and_from_the_root(cwd: Path, sample: Path, tmp_path: Path,
                                                           log_file: Path) -> None:
    script = "eval_nightly.py" if cwd.name == "scripts" else "scripts/eval_nightly.py"
    done = subprocess.run(
        [sys.executable, script, "--cases", str(sample), "--reports-dir", str(tmp_path / "out"),
         "--env-file", str(tmp_path / "no.env")],
        cwd=cwd, env=_clean_env(log_file), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.json"))) == 1
    assert "report:" in done.stdout


def test_reports_go_next_to_the_script_whatever_the_working_directory() -> None:
    reports, cases = eval_nightly.DEFAULT_REPORTS, eval_nightly.DEFAULT_CASES
    assert reports == SCRIPT.parent / "eval_reports"
    assert cases == SCRIPT.parent / "eval_data"
    assert {p.name for p in cases.glob("*.jsonl")} >= {"cases.jsonl", "tune_families.jsonl", "heldout_families.jsonl"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn serving the app with IVY_MODAL_HEURISTICS=false (the runbook's rollback state)."""
    port = free_port()
    env = {**_clean_env(tmp_path / "server.log"), "IVY_MODAL_HEURISTICS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ivy_eval_base_url_runs_against_that_server(run: Any, sample: Path, server: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVY_EVAL_BASE_URL", server)
    code, report = run(sample)  # no --base-url: main() reads IVY_EVAL_BASE_URL
    summary = report["summary"]
    assert code == 0
    assert summary["mode"] == "remote" and summary["base_url"] == server
    assert summary["flags"]["IVY_MODAL_HEURISTICS"] is False
    assert (summary["total"], summary["skipped"]) == (1, len(SAMPLE_IDS) - 1)


def test_precision_and_recall_per_label() -> None:
    pairs = [("rag", "rag"), ("rag", "conversational"), ("modal", "rag"), ("conversational", "conversational")]
    table = eval_nightly.precision_recall(pairs, ["rag", "modal", "conversational"])
    assert table["rag"] == {"precision": 0.5, "recall": 0.5, "support": 2, "predicted": 2}
    assert table["modal"] == {"precision": None, "recall": 0.0, "support": 1, "predicted": 0}
    assert table["conversational"] == {"precision": 0.5, "recall": 1.0, "support": 1, "predicted": 2}
