"""What ships: the wheel holds the `app` package only; the Docker image `app` and the runbook's
manual eval (its script and cases) with curl and jq. The developer tools (`tools/`) and the tests
stay out of both, so nothing in `app` (or the eval) may import them, and the eval runs on the
runtime dependencies alone (what `bash scripts/run.sh` installs)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_app_imports_neither_tools_nor_tests() -> None:
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[0] in ("tools", "tests", "scripts")]
    assert offenders == []


def dockerfile_lines() -> list[str]:
    # Continuation lines joined: one instruction per item.
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def test_the_wheel_holds_app_only_and_the_image_app_and_the_runbooks_eval() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"])
    assert "app" in packages and "tools.fake_provider" in find_packages(str(ROOT))
    assert [p for p in packages if not p.startswith("app")] == []
    copied = [src for line in dockerfile_lines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert set(copied) == {"pyproject.toml", "README.md", "RUNBOOK.md", "app", "scripts/eval_nightly.py",
                           "scripts/eval_data"}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "tools" in ignored and "tests" in ignored


def test_the_image_has_the_tools_the_runbooks_commands_use_inside_it() -> None:
    installs = [line for line in dockerfile_lines() if line.startswith("RUN ") and "apt-get install" in line]
    assert len(installs) == 1 and {"curl", "jq"} <= set(installs[0].split())
    assert "--no-install-recommends" in installs[0] and "rm -rf /var/lib/apt/lists/*" in installs[0]
    # The eval writes its reports where it reads them from, as the image's user.
    assert any("mkdir -p logs scripts/eval_reports && chown -R ivy:ivy /srv/ivy" in line for line in dockerfile_lines())


def test_the_runbooks_eval_imports_only_what_the_image_holds() -> None:
    tree = ast.parse((ROOT / "scripts" / "eval_nightly.py").read_text())
    local = {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    local |= {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names}
    assert not local & {"tools", "tests", "scripts"}


def runtime_closure() -> set[str]:
    """Every distribution `pip install .` brings: [project].dependencies and theirs, extras included."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    todo = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = norm(req.name)
        for extra in ("", *req.extras):
            key = f"{name}[{extra}]"
            if key in seen:
                continue
            seen.add(key)
            for spec in metadata.requires(name) or []:
                sub = Requirement(spec)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return {key.partition("[")[0] for key in seen} | {"ivy-router"}  # and the project itself


BLOCKER = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not a runtime dependency)", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["eval_nightly.py", *sys.argv[2:]]
runpy.run_path("eval_nightly.py", run_name="__main__")
"""


def test_the_runbooks_manual_eval_runs_with_the_runtime_dependencies_alone(tmp_path: Path) -> None:
    """`bash scripts/run.sh` installs [project].dependencies only: the eval must not need the dev extras.
    Every module only a dev-only distribution provides (pytest, openai, ...) is made unimportable."""
    closure = {re.sub(r"[-_.]+", "-", d).lower() for d in runtime_closure()}
    blocked = sorted(module for module, dists in metadata.packages_distributions().items()
                     if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & closure and module.isidentifier())
    assert {"pytest", "openai"} <= set(blocked) and "httpx" not in blocked and "fastapi" not in blocked
    cases = tmp_path / "cases.jsonl"
    all_cases = (ROOT / "scripts" / "eval_data" / "cases.jsonl").read_text().splitlines()
    cases.write_text("\n".join(all_cases[:3]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "OPENAI_", "REDIS_", "IVY_"))}
    env["IVY_LOG_FILE"] = str(tmp_path / "eval.log")
    run = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(blocked), "--cases", str(cases), "--reports-dir",
         str(tmp_path / "reports"), "--env-file", str(tmp_path / "none.env"), "--threshold", "0"],
        cwd=ROOT / "scripts", env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    assert report["summary"]["total"] == 3
