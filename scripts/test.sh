#!/usr/bin/env bash
# Install everything the tests need (virtualenv, Python packages, a Redis server binary) and run them:
# ruff, mypy on app/, then pytest. Works on a fresh Debian machine with Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_install() {
  # Debian packages, installed only when missing (apt-get update once, quietly).
  if ! command -v apt-get >/dev/null; then echo "need: $*" >&2; return 1; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

# Tests start their own redis-server (pytest-redis), so the binary must exist even where a Redis runs.
command -v redis-server >/dev/null || apt_install redis-server

echo "== ruff"; .venv/bin/ruff check app tests scripts
echo "== mypy"; .venv/bin/mypy app
echo "== pytest"; .venv/bin/python -m pytest "$@"
