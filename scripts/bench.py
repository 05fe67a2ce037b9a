#!/usr/bin/env python3
"""End-to-end HTTP benchmark of the router against its floor and against LiteLLM: the entry point.

    .venv/bin/python scripts/bench.py            # full run (~17 min, includes a 10-minute soak)
    .venv/bin/python scripts/bench.py --quick    # ~1 min smoke version (15 s soak)
    .venv/bin/python scripts/bench.py --markdown-from bench-results/bench-YYYYMMDD-HHMMSS.json

The bench itself is the package tools/bench/ (its docstring says what it measures; --help prints it).
"""

from __future__ import annotations

import sys

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for tools.*)

from tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
