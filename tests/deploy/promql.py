"""What the deploy artefacts' PromQL refers to, checked against what the service really exports.

`references(expr)` lexes a PromQL expression (enough of the language for rules and dashboards:
selectors, matchers, functions, aggregations with by/without, vector matching, ranges, offsets) and
returns the metric names with their label matchers, and the labels named in grouping clauses.
`Exported` is the union of /metrics scrapes; `problems(expr, exported)` lists every name, label or
label value of the expression that the service does not export. Syntax itself is promtool's job.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]

# Grafana's interval variables, replaced by a duration so the expression is plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregations may be followed by `by (...)` rather than `(`, so they are known by name.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
KEYWORDS = GROUPING | AGGREGATIONS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d[\w.]*))
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<matchop>=~|!~|!=|==|=)
  | (?P<punct>[{}()\[\],@])
  | (?P<other>[-+*/%^<>]=?)
""", re.VERBOSE)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class References:
    metrics: list[tuple[str, list[Matcher]]] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)

    @property
    def metric_names(self) -> set[str]:
        return {name for name, _ in self.metrics}


def substitute_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot lex PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append((kind, m.group()))
    return tokens


def _unquote(token: str) -> str:
    return token[1:-1].encode().decode("unicode_escape") if token[0] != "`" else token[1:-1]


def references(expr: str) -> References:
    """Metric names (with their matchers) and grouping labels of one PromQL expression."""
    tokens = _tokens(substitute_grafana_variables(expr))
    refs = References()
    i = 0

    def matchers(start: int) -> tuple[list[Matcher], int]:
        """Parse `{label op "value", ...}` from tokens[start] == '{'; return them and the index after '}'."""
        found, j = [], start + 1
        while tokens[j][1] != "}":
            if tokens[j][1] == ",":
                j += 1
                continue
            (kind, label), (_, op), (vkind, value) = tokens[j], tokens[j + 1], tokens[j + 2]
            if kind != "ident" or vkind != "string":
                raise ValueError(f"unexpected matcher {label} {op} {value} in {expr!r}")
            found.append(Matcher(label, op, _unquote(value)))
            j += 3
        return found, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct" and text == "[":  # range or subquery: durations only
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == "]") + 1
        elif kind == "punct" and text == "{":  # a selector without a name: {__name__="..."}
            found, i = matchers(i)
            names = [m.value for m in found if m.label == "__name__" and m.op == "="]
            refs.metrics.extend((name, [m for m in found if m.label != "__name__"]) for name in names)
        elif kind == "ident" and text in GROUPING:
            if following == "(":
                close = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")")
                refs.grouping_labels.update(t for k, t in tokens[i + 2:close] if k == "ident")
                i = close + 1
            else:
                i += 1
        elif kind == "ident" and (text in KEYWORDS or following == "("):
            i += 1  # an operator, or a function or aggregation name
        elif kind == "ident":
            if following == "{":
                found, i = matchers(i + 1)
            else:
                found, i = [], i + 1
            refs.metrics.append((text, found))
        else:
            i += 1
    return refs


# --- what the service exports ------------------------------------------------------------------

# Prometheus adds these to every scraped series (they are not in /metrics).
TARGET_LABELS = {"job", "instance"}

SUFFIX_TYPES = {"_bucket": {"histogram"}, "_count": {"histogram", "summary"}, "_sum": {"histogram", "summary"},
                "_total": {"counter"}}


@dataclass
class Family:
    type: str
    sample_names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


class Exported:
    """The union of /metrics scrapes: metric families, their types, sample names, labels and values."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def add_scrape(self, text: str) -> None:
        for metric in text_string_to_metric_families(text):
            family = self.families.setdefault(metric.name, Family(metric.type))
            for sample in metric.samples:
                family.sample_names.add(sample.name)
                for label, value in sample.labels.items():
                    family.labels[label].add(value)

    def resolve(self, name: str) -> tuple[str, Family] | None:
        """The family a PromQL metric name belongs to: `ivy_requests_total` -> counter `ivy_requests`."""
        for suffix, types in SUFFIX_TYPES.items():
            base = name.removesuffix(suffix)
            if base != name and base in self.families and self.families[base].type in types:
                return base, self.families[base]
        if name in self.families and self.families[name].type in {"gauge", "unknown", "untyped"}:
            return name, self.families[name]
        return None

    def labels_of(self, name: str) -> dict[str, set[str]]:
        """Labels (with the values seen) on the samples a PromQL metric name selects."""
        resolved = self.resolve(name)
        if resolved is None:
            return {}
        family = resolved[1]
        labels = {k: v for k, v in family.labels.items() if k not in {"le", "quantile"}}
        if name.endswith("_bucket"):
            labels["le"] = family.labels.get("le", set())
        return labels


def problems(expr: str, exported: Exported, *, output_labels: set[str] = frozenset()) -> list[str]:
    """Everything `expr` names that the service does not export (empty when all is real).

    output_labels: labels the caller uses on the result (a legend's {{label}}, an alert's $labels.x):
    each must be a label the expression's metrics carry.
    """
    refs = references(expr)
    found: list[str] = []
    all_labels: set[str] = set(TARGET_LABELS)
    for name, matchers in refs.metrics:
        resolved = exported.resolve(name)
        if resolved is None:
            found.append(f"metric {name} is not exported (no family of a matching type in /metrics)")
            continue
        labels = exported.labels_of(name) | {label: set() for label in TARGET_LABELS}
        if not exported.labels_of(name) and not exported.families[resolved[0]].sample_names:
            found.append(f"metric {name} has no series in the scrapes, so its labels cannot be checked")
        all_labels |= set(labels)
        for m in matchers:
            if m.label not in labels:
                found.append(f"{name} has no label {m.label!r} (it has {sorted(labels)})")
            elif m.op == "=" and m.value and m.label not in TARGET_LABELS and m.value not in labels[m.label]:
                found.append(f"{name}{{{m.label}={m.value!r}}}: the service never exported that value "
                             f"(seen: {sorted(labels[m.label])})")
    for label in sorted((refs.grouping_labels | set(output_labels)) - all_labels):
        found.append(f"label {label!r} is on none of the metrics {sorted(refs.metric_names)}")
    return found


# --- promtool ----------------------------------------------------------------------------------

def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"promtool {' '.join(result.args[1:])} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
