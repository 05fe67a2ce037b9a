"""The Prometheus alert rules: promtool accepts them and their unit tests pass, each alert has a firing
and a silent case, each points at its RUNBOOK.md section, and each names what the service exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT, Exported, problems, promtool, references, report

RULES = Path("deploy/prometheus/alerts.yml")
RULE_TESTS = Path("deploy/prometheus/alerts_test.yml")
CONFIG = Path("deploy/prometheus/prometheus.yml")

# The on-call runbook's critical alerts; everything else is a warning.
# The runbook's three alerts; the eval's now fires on a false modal as well as on a low success rate.
CRITICAL = {"IvyConversationalP95LatencyHigh", "IvyRagP95LatencyHigh", "IvyErrorRateHigh", "IvyEvalSuccessRateLow",
            "IvyEvalFalseModals"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((ROOT / RULES).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def alerts_section_anchors() -> set[str]:
    """Anchors of the ### headings in RUNBOOK.md's `## Alerts` section."""
    text = (ROOT / "RUNBOOK.md").read_text()
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return {github_anchor(h) for h in re.findall(r"^### (.+)$", section, flags=re.MULTILINE)}


def test_promtool_finds_the_alert_rules_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, report(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, report(result)


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, report(result)
    assert "SUCCESS" in result.stdout, report(result)


def test_prometheus_config_is_valid_and_loads_the_alert_rules() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, report(result)
    assert f"Checking {RULES}" in result.stdout, report(result)  # rule_files resolved to our rules


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    tests = yaml.safe_load((ROOT / RULE_TESTS).read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        own = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in own), f"{name}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in own), f"{name}: no case where it stays silent"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_its_severity_a_for_duration_and_a_runbook_url_to_its_section(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] == ("critical" if rule["alert"] in CRITICAL else "warning")
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule.get("for")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "RUNBOOK.md"
    assert anchor in alerts_section_anchors(), f"no '### ' heading under '## Alerts' in RUNBOOK.md has #{anchor}"


def test_runbook_anchor_follows_githubs_rules() -> None:
    assert github_anchor("P95 latency > 1.5 s (conversational) or > 2.2 s (RAG)") == \
        "p95-latency--15-s-conversational-or--22-s-rag"
    assert github_anchor("Limiter failing open (Redis unreachable)") == "limiter-failing-open-redis-unreachable"


def test_the_runbooks_three_alerts_are_the_critical_ones() -> None:
    assert {rule["alert"] for rule in alert_rules() if rule["labels"]["severity"] == "critical"} == CRITICAL


def test_every_alert_expression_names_metrics_labels_and_values_the_service_exports(exported: Exported) -> None:
    found = {}
    for rule in alert_rules():
        templated = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        wrong = problems(rule["expr"], exported, output_labels=templated)
        if not references(rule["expr"]).metric_names:
            wrong.append("names no metric")
        if wrong:
            found[rule["alert"]] = wrong
    assert found == {}
