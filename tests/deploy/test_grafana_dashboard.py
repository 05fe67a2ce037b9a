"""The Grafana dashboard: an importable dashboard on the provisioned Prometheus, with the panels
on-call needs, whose every query parses (promtool) and names what the real service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT, Exported, problems, promtool, references, report, substitute_grafana_variables

DASHBOARD = ROOT / "deploy/grafana/ivy-router.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in panels() for target in panel.get("targets", [])]


def target_id(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
    panel, target = item
    return f"{panel['title']}/{target['refId']}"


def test_dashboard_is_a_grafana_dashboard_with_a_uid_and_a_current_schema() -> None:
    board = dashboard()
    assert board["uid"] == "ivy-router" and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    assert "id" not in board or board["id"] is None  # an id would clash with the importing Grafana's


def test_every_query_uses_the_datasource_variable_that_defaults_to_the_provisioned_prometheus() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prometheus = next(ds for ds in provisioned if ds["type"] == "prometheus")
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    variable = variables["DS_PROMETHEUS"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == prometheus["uid"]
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]


def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping() -> None:
    all_panels = panels()
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = [(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])]
        for cell in cells:
            assert cell not in taken, f"{panel['title']} overlaps {taken[cell]}"
            taken[cell] = panel["title"]


def test_every_query_is_promql_that_promtool_parses(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
         "expr": substitute_grafana_variables(target["expr"])} for panel, target in targets()]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, report(result)
    assert f"SUCCESS: {len(targets())} rules found" in result.stdout, report(result)


def test_every_query_names_metrics_labels_and_values_the_service_exports(exported: Exported) -> None:
    found = {}
    for panel, target in targets():
        expr = target["expr"]
        if not references(expr).metric_names:  # only a constant may name no metric: an SLO line
            if not re.fullmatch(r"vector\([\d.]+\)", expr):
                found[target_id((panel, target))] = [f"names no metric: {expr}"]
            continue
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        if wrong := problems(expr, exported, output_labels=legend_labels):
            found[target_id((panel, target))] = wrong
    assert found == {}


def exprs_of(panel: dict[str, Any]) -> str:
    return " ".join(re.sub(r"\s+", " ", t["expr"]) for t in panel.get("targets", []))


def slo_lines(panel: dict[str, Any]) -> set[float]:
    """SLO values a panel draws: red threshold steps shown as lines, and constant vector(x) series."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    lines = set()
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") != "off":
        lines |= {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
    lines |= {float(v) for v in re.findall(r"vector\(([\d.]+)\)", exprs_of(panel))}
    return lines


def has_panel(pattern: str, *, slo: float | None = None) -> bool:
    return any(re.search(pattern, exprs_of(p)) and (slo is None or slo in slo_lines(p)) for p in panels())


@pytest.mark.parametrize(("what", "pattern", "slo"), [
    ("conversational p50", r'histogram_quantile\(0\.5, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{'
                           r'intent="conversational"\}', 1.5),
    ("conversational p95", r'histogram_quantile\(0\.95, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{'
                           r'intent="conversational"\}', 1.5),
    ("conversational p99", r'histogram_quantile\(0\.99, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{'
                           r'intent="conversational"\}', 1.5),
    ("rag p50", r'histogram_quantile\(0\.5, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{intent="rag"\}',
     2.2),
    ("rag p95", r'histogram_quantile\(0\.95, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{intent="rag"\}',
     2.2),
    ("rag p99", r'histogram_quantile\(0\.99, sum by \(le\) \(rate\(ivy_request_latency_seconds_bucket\{intent="rag"\}',
     2.2),
    ("p95 per intent with the conversational SLO", r"histogram_quantile\(0\.95, sum by \(le, intent\)", 1.5),
    ("p95 per intent with the rag SLO", r"histogram_quantile\(0\.95, sum by \(le, intent\)", 2.2),
    ("request rate", r"sum by \([^)]*status[^)]*\) \(rate\(ivy_requests_total\[", None),
    ("error rate", r'ivy_requests_total\{status=~"5\.\."\}.*/ sum\(rate\(ivy_requests_total\{status!="429"\}', 0.01),
    ("429s by bucket", r"sum by \(bucket\) \(rate\(ivy_rate_limited_total\[", None),
    ("breaker state per provider", r"by \(provider\) \(ivy_circuit_breaker_state\)", None),
    ("fallbacks by reason", r"sum by \(reason\) \(rate\(ivy_fallbacks_total\[", None),
    ("provider p95 by provider", r"histogram_quantile\(0\.95, sum by \(le, provider\) "
                                 r"\(rate\(ivy_provider_latency_seconds_bucket\[", None),
    ("limiter fail-open errors", r"by \([^)]*action[^)]*\) \(rate\(ivy_ratelimit_backend_errors_total\[", None),
    ("limiter backend up", r"by \(backend\) \(ivy_ratelimit_backend_up\)", None),
    ("in-flight requests", r"ivy_in_flight_requests", None),
    ("eval success rate with its 80% floor", r"ivy_eval_success_rate", 0.8),
    ("spend per provider and model", r"sum by \(provider, model\) \(rate\(ivy_provider_cost_usd_total\[", None),
    ("orgs near or at their budget", r"sum by \(level\) \(increase\(ivy_budget_threshold_crossings_total\[", None),
    ("calls a budget refused", r"sum by \(reason\) \(rate\(ivy_budget_refusals_total\[", None),
])
def test_dashboard_has_the_panel_on_call_needs(what: str, pattern: str, slo: float | None) -> None:
    assert has_panel(pattern, slo=slo), f"no panel shows {what}"
