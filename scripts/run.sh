#!/usr/bin/env bash
# Install (into .venv) and start the router on the embedded defaults: http://127.0.0.1:8000
# Extra arguments go to uvicorn, e.g. `bash scripts/run.sh --port 9000 --workers 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/python -m uvicorn app.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
