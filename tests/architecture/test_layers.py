"""Imports run down the layers, never up (docs/ARCHITECTURE.md):

    app.main -> app.api -> app.pipeline, app.state, app.domain
             -> app.intent, app.retrieval, app.providers, app.resilience, app.drafts, app.gc_tuning,
                app.crm, app.safety, app.budget
             -> app.config, app.observability, app.vocabulary

and nothing under app.api imports FastAPI's world: the core knows no HTTP.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
RANK = {
    "app.main": 5,
    "app.api": 4,
    "app.pipeline": 3, "app.state": 3, "app.domain": 3,
    "app.intent": 2, "app.retrieval": 2, "app.providers": 2, "app.resilience": 2, "app.drafts": 2, "app.cache": 2,
    "app.gc_tuning": 2, "app.crm": 2, "app.safety": 2, "app.budget": 2,
    "app.config": 1, "app.observability": 1, "app.vocabulary": 1,
}
HTTP_PACKAGES = ("fastapi", "starlette", "uvicorn")


def layer(module: str) -> str:
    parts = module.split(".")
    for n in (2, 1):
        name = ".".join(parts[:n])
        if name in RANK:
            return name
    raise AssertionError(f"{module} is in no layer: add it to RANK and docs/ARCHITECTURE.md")


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "app":
            out.append((name, path))
    return out


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_a_module_imports_only_its_own_layer_or_the_ones_below(module: str, path: Path) -> None:
    own = RANK[layer(module)]
    upward = [imp for imp in imports_of(path) if imp.startswith("app.") and RANK[layer(imp)] > own]
    assert upward == [], f"{module} imports up the layers: {upward}"


@pytest.mark.parametrize(("module", "path"), [(m, p) for m, p in modules() if RANK[layer(m)] < RANK["app.api"]],
                         ids=[m for m, _ in modules() if RANK[layer(m)] < RANK["app.api"]])
def test_the_core_imports_nothing_of_http(module: str, path: Path) -> None:
    http = [imp for imp in imports_of(path) if imp.split(".")[0] in HTTP_PACKAGES]
    assert http == [], f"{module} imports the HTTP layer's libraries: {http}"


def test_the_checker_catches_an_import_that_runs_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from app.api.errors import IvyError\nimport fastapi\n")
    imports = imports_of(bad)
    assert [i for i in imports if i.startswith("app.") and RANK[layer(i)] > RANK["app.pipeline"]] == [
        "app.api.errors"]
    assert [i for i in imports if i.split(".")[0] in HTTP_PACKAGES] == ["fastapi"]


def module_graph() -> dict[str, set[str]]:
    """Who imports whom inside app (imports under TYPE_CHECKING included: a circle is a circle)."""
    names = {m for m, _ in modules()}
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        graph[module] = {imp for imp in imports_of(path) if imp in names and imp != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert circles(module_graph()) == []


def test_the_circle_finder_finds_the_race_calling_back_into_the_chain() -> None:
    graph = module_graph()
    assert "app.providers.race" in graph["app.providers.chain"]
    graph["app.providers.race"] = {*graph["app.providers.race"], "app.providers.chain"}
    assert ["app.providers.chain", "app.providers.race", "app.providers.chain"] in circles(graph)


@pytest.mark.parametrize(("module", "path"), [(m, p) for m, p in modules() if RANK[layer(m)] < RANK["app.api"]],
                         ids=[m for m, _ in modules() if RANK[layer(m)] < RANK["app.api"]])
def test_the_core_makes_no_server_sent_event_bytes(module: str, path: Path) -> None:
    # The core yields typed events; app/api/sse.py alone frames them. (The adapters read their
    # providers' SSE, which is parsing, not framing: they never write `event:` or `data:` lines.)
    source = path.read_text()
    framed = [s for s in ('b"event:', "b'event:", '"event: ', "text/event-stream") if s in source]
    if module.startswith("app.providers."):
        framed = [s for s in framed if s != "text/event-stream"]  # the Accept / content type they check
    assert framed == [], f"{module} frames server-sent events: {framed}"
