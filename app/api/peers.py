"""Who is on the other end: the socket's peer, or the client a proxy of ours forwards for.

IVY_AUTH_TRUSTED_CIDRS lets callers on trusted networks go without a token, so it must be decided
on the socket's peer address. uvicorn, as the runbook starts it (`python -m uvicorn app.main:app`,
proxy headers on by default), rewrites the ASGI scope's client from `X-Forwarded-For` whenever the
peer is in its `--forwarded-allow-ips` (FORWARDED_ALLOW_IPS, default 127.0.0.1 and ::1): any
caller on the host could claim to be 10.1.2.3. Its middleware wraps the app from outside, after
the app is imported, so the app cannot see the scope first; what it can do is take that
middleware out. uvicorn hands each new connection `config.loaded_app`, and accepts none before
the lifespan has started, so at start (`own_forwarded_headers`) the app serves itself unwrapped and
reads forwarded headers on its own, only from the proxies in IVY_TRUSTED_PROXIES (none by default):

- no forwarding header: the client is the peer;
- forwarded through a listed proxy: the client is the last X-Forwarded-For address that is not a
  listed proxy (each proxy appends the address it was reached from);
- forwarded by anyone else, or under a server whose scope may already be rewritten (not
  uvicorn's own Server: a test client, gunicorn's worker): the client is the peer, for rate
  limiting, and it is never a trusted network.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import Scope

from app.api.serving import find_server
from app.config import Settings
from app.observability.logging import get_logger

log = get_logger()

# Any of these says the request came through a proxy; only X-Forwarded-For is read for the client.
FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
MAX_HOPS = 32  # addresses of X-Forwarded-For read from the right; more is no chain of our proxies


@dataclass(frozen=True, slots=True)
class Peer:
    address: str | None  # the client: the peer, or behind our proxies the address they forwarded
    vouched: bool  # False: forwarded by someone we do not know; never a trusted network


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """An X-Forwarded-For entry: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1`` or ``[2001:db8::1]:5678``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


class Peers:
    def __init__(self, proxies: tuple[IPv4Network | IPv6Network, ...], *, raw: bool) -> None:
        self.proxies = proxies
        self.raw = raw  # the scope's client is the socket's peer (uvicorn's own Server, its middleware out)

    def _is_proxy(self, address: IPv4Address | IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.proxies)

    def of(self, scope: Scope) -> Peer:
        client = scope.get("client")
        peer = client[0] if client else None
        forwarded = [(key, value) for key, value in scope["headers"] if key in FORWARDING_HEADERS]
        if not forwarded:
            return Peer(peer, True)
        hops = [value for key, value in forwarded if key == b"x-forwarded-for"]
        if not (self.raw and hops and self._is_proxy(_address(peer or ""))):
            return Peer(peer, False)
        entries = b",".join(hops).decode("latin-1").split(",")[-MAX_HOPS:]
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                return Peer(peer, False)
            if not self._is_proxy(address):
                return Peer(str(address), True)
        first = _address(entries[0])  # every hop one of ours: the first is the client
        return Peer(str(first), True)


def own_forwarded_headers(s: Settings) -> Peers:
    """Take uvicorn's proxy-header middleware out of the app it serves (see the module docstring)
    and say, once at start, who may forward."""
    server = find_server()
    proxies = s.trusted_proxies
    if server is None:
        if proxies:
            log.warning("trusted_proxies_unusable", trusted_proxies=s.ivy_trusted_proxies,
                        message="not under uvicorn's own Server: the peer address may already be rewritten, "
                                "so forwarded requests are never trusted; IVY_TRUSTED_PROXIES has no effect")
        return Peers(proxies, raw=False)
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    config = server.config
    taken = isinstance(config.loaded_app, ProxyHeadersMiddleware)
    if taken:
        config.loaded_app = config.loaded_app.app
    raw = not isinstance(config.loaded_app, ProxyHeadersMiddleware)
    log.info("forwarded_headers", trusted_proxies=s.ivy_trusted_proxies, uvicorn_proxy_headers_taken_out=taken,
             message="X-Forwarded-For counts only from IVY_TRUSTED_PROXIES; the trusted-network check "
                     "reads the socket's peer")
    return Peers(proxies, raw=raw)
