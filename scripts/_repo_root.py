"""Imported first by the scripts that use ``tools.*``: run as ``python scripts/x.py`` (or from
scripts/), Python puts scripts/ on sys.path, not the repository's root where ``tools`` lives."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
