#!/usr/bin/env bash
# Install everything the tests need (.venv with the dev extras, a redis-server binary) and run
# ruff, mypy on app/ and tools/, then pytest. Works on a fresh Debian machine with Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[dev]" source scripts/bootstrap.sh

# Tests start their own redis-server (pytest-redis), so the binary must exist even where a Redis runs.
command -v redis-server >/dev/null || apt_install redis-server
command -v promtool >/dev/null || { apt_install --no-install-recommends prometheus; [ ! -d /run/systemd/system ] || $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; }  # tests/deploy need promtool, not a server on :9090

# The tracing end-to-end test's OTLP receiver (Arize Phoenix), in a venv of its own (tests/receivers/phoenix.txt).
[ -x .venv-phoenix/bin/python ] || "${PYTHON:-python3}" -m venv .venv-phoenix
.venv-phoenix/bin/python -m pip install -q --disable-pip-version-check -r tests/receivers/phoenix.txt

echo "== ruff";   .venv/bin/ruff check app tests scripts tools
echo "== mypy";   .venv/bin/mypy app tools
echo "== pytest"; .venv/bin/python -m pytest "$@"
