from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's ORJSONResponse is deprecated; this is all it did)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
