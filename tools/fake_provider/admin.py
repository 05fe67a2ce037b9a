"""The fake's admin endpoints under ``/_fake/``: faults, answers, captured requests, realism, stats.

Never captured as provider requests. ``GET /_fake/health``, ``POST|DELETE /_fake/fault``,
``POST /_fake/answer`` (``{"text", "json", "obedient"}``), ``GET|DELETE /_fake/requests``, ``POST /_fake/reset``,
``POST /_fake/realism``, ``GET /_fake/stats``, ``GET /_fake/usage`` (the usage it reported).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tools.fake_provider.realism import PROFILES, Realism

if TYPE_CHECKING:
    from tools.fake_provider.server import FakeProviderServer


class Admin:
    """The admin handlers of one fake server."""

    def __init__(self, fake: FakeProviderServer) -> None:
        self.fake = fake

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_fake/health", self.health)
        app.router.add_post("/_fake/fault", self.set_fault)
        app.router.add_delete("/_fake/fault", self.clear_fault)
        app.router.add_post("/_fake/answer", self.answer)
        app.router.add_get("/_fake/requests", self.requests)
        app.router.add_delete("/_fake/requests", self.clear_requests)
        app.router.add_post("/_fake/reset", self.reset)
        app.router.add_post("/_fake/realism", self.realism)
        app.router.add_get("/_fake/stats", self.stats)
        app.router.add_get("/_fake/usage", self.usage)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "faults": [asdict(f) for f in self.fake.faults]})

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            params = orjson.loads(await request.read())
            if not isinstance(params, dict) or "kind" not in params:
                raise ValueError('body must be a JSON object with "kind"')
            fault = self.fake.set_fault(str(params.pop("kind")), **params)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"fault": asdict(fault)})

    async def clear_fault(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        if provider in ("openai", "gemini"):
            self.fake.clear_faults("openai" if provider == "openai" else "gemini")
        else:
            self.fake.clear_faults()
        return web.json_response({"faults": [asdict(f) for f in self.fake.faults]})

    async def answer(self, request: web.Request) -> web.Response:
        try:
            params = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(params, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        self.fake.set_answer(params.get("text"), json_answer=params.get("json"))
        if "obedient" in params:
            self.fake.set_obedient(bool(params["obedient"]))
        return web.json_response({"text": self.fake.answer_text, "json": self.fake.json_answer,
                                  "obedient": self.fake.obedient})

    async def requests(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps([r._asdict() for r in self.fake.requests]),
                            content_type="application/json")

    async def clear_requests(self, _: web.Request) -> web.Response:
        self.fake.requests.clear()
        return web.json_response({"cleared": True})

    async def realism(self, request: web.Request) -> web.Response:
        """``{"enabled": true, "seed": 7, "time_scale": 1.0, "profiles": {"gemini": {"ttft_median": 3.0,
        "speed_min": 38, "speed_max": 42}}}``: switch realistic timings on or off; ``profiles`` overrides
        a provider's published shape (a thinking model: first token ~3 s, ~40 tokens/s)."""
        try:
            params = orjson.loads(await request.read() or b"{}")
            if not isinstance(params, dict):
                raise ValueError("body must be a JSON object")
            if params.get("enabled", True):
                profiles = dict(PROFILES)
                for name, shape in dict(params.get("profiles") or {}).items():
                    profiles[name] = replace(profiles[name], **{k: float(v) for k, v in dict(shape).items()})
                self.fake.realism = Realism(seed=int(params.get("seed", 0)),
                                            time_scale=float(params.get("time_scale", 1.0)), profiles=profiles)
            else:
                self.fake.realism = None
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"realistic": self.fake.realism is not None})

    async def stats(self, _: web.Request) -> web.Response:
        """Per provider: calls planned in realistic mode and their service / first-token percentiles."""
        return web.json_response(self.fake.realism.stats() if self.fake.realism is not None else {})

    async def usage(self, _: web.Request) -> web.Response:
        """What this fake reported as usage: ``{"provider/model": {"calls", "input", "output"}}``."""
        return web.json_response(self.fake.usage)

    async def reset(self, _: web.Request) -> web.Response:
        self.fake.reset()
        return web.json_response({"reset": True})
