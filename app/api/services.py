"""What only the HTTP layer needs, created in the lifespan next to the core's `State`: the door, the
token checker, who the peer is, the shutdown drain and the request spans' tracer. The middleware and
the router endpoints find it in the lifespan state."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.types import Scope

from app.api.auth import Authenticator
from app.api.door import Door
from app.api.peers import Peers
from app.api.serving import Drain
from app.observability.tracing import Tracing

SERVICES = "ivy_api"


@dataclass(slots=True)
class ApiServices:
    auth: Authenticator | None = None  # None: IVY_AUTH_MODE=off (nothing to do per request)
    peers: Peers = field(default_factory=lambda: Peers((), raw=False))
    drain: Drain = field(default_factory=Drain)
    tracing: Tracing | None = None  # None: no OTLP endpoint (nothing to do per request)
    door: Door | None = None  # None: nothing is ever shed (an app driven without its lifespan)


def services_of(scope: Scope) -> ApiServices:
    services: ApiServices = scope["state"][SERVICES]
    return services
