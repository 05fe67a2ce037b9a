"""What ships: the `app` package only. The developer tools (`tools/`) and the tests stay out of the
wheel and the Docker image, so nothing in `app` may import them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

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


def test_the_wheel_and_the_image_hold_app_only() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"])
    assert "app" in packages and "tools.fake_provider" in find_packages(str(ROOT))
    assert [p for p in packages if not p.startswith("app")] == []
    copied = [line.split()[1:-1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    assert all(src in ("pyproject.toml", "README.md", "app") for sources in copied for src in sources)
    assert "tools" in (ROOT / ".dockerignore").read_text().split()
