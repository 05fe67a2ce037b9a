"""Who is asking: a verified JWT (IVY_AUTH_MODE=jwt), or what a trusted address says it is.

With ``IVY_AUTH_MODE=off`` (the default) nothing here runs per request: the caller is whoever
X-User-ID names, as before. With ``jwt``, the router endpoints need ``Authorization: Bearer
<token>``: HS256 signed with IVY_JWT_SECRET, or RS256/ES256 signed by a key from
IVY_JWT_JWKS_URL. The user is ``sub``, the org the IVY_JWT_ORG_CLAIM claim. Callers from
IVY_AUTH_TRUSTED_CIDRS (the loopback addresses by default: the runbook's curls on the host)
may still go without a token and name themselves with X-User-ID: the socket's peer, or the client
a proxy in IVY_TRUSTED_PROXIES forwards for, never an address a forwarding header merely claims
(`peers.py`).

Verified tokens are remembered until they expire (bounded), so a frontend sending the same
token on every request pays for the signature check once. The token never reaches a log line
or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import aiohttp
import jwt
from starlette.types import Scope

from app.api.errors import IvyError
from app.api.peers import Peers
from app.config import Settings
from app.observability.logging import get_logger

log = get_logger()

HMAC_ALGORITHMS = ("HS256",)
KEY_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_CHARS = 8192


class AuthError(IvyError):
    """401: no usable token. Carries ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    status_code = 401
    code = "invalid_token"

    def __init__(self, message: str, code: str | None = None) -> None:
        code = code or self.code
        challenge = 'Bearer realm="ivy"' if code == "missing_token" else (
            f'Bearer realm="ivy", error="invalid_token", error_description="{message}"')
        super().__init__(message, headers={"WWW-Authenticate": challenge})
        self.code = code


class IdentityMismatch(IvyError):
    status_code = 403
    code = "identity_mismatch"


class AuthUnavailable(IvyError):
    """503: the token names a key we could not fetch (JWKS unreachable, nothing cached)."""

    status_code = 503
    code = "auth_unavailable"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    org_id: str | None


_FAILURES: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired_token", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet (nbf/iat in the future)"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token's issuer (iss) is not IVY_JWT_ISSUER"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token's audience (aud) is not IVY_JWT_AUDIENCE"),
    (jwt.InvalidSignatureError, "invalid_token", "the token's signature does not verify"),
)


class JWKSCache:
    """The signing keys from IVY_JWT_JWKS_URL: fetched at start, refreshed every REFRESH_SECONDS in
    the background and at once for an unknown ``kid`` (at most every MIN_REFETCH_SECONDS). A failed
    fetch keeps the keys already known, so an outage of the JWKS endpoint only matters for keys
    rotated in during it."""

    REFRESH_SECONDS = 300.0
    MIN_REFETCH_SECONDS = 2.0
    TIMEOUT = aiohttp.ClientTimeout(total=3.0, connect=1.0)

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at = float("-inf")
        self.attempted_at = float("-inf")
        self._fetch: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        now = time.monotonic()
        key = self._lookup(kid)
        if key is None and now - self.attempted_at >= self.MIN_REFETCH_SECONDS:
            await self.refresh()
            key = self._lookup(kid)
        elif key is not None and now - self.fetched_at > self.REFRESH_SECONDS:
            self._start_fetch()  # in the background: the cached key answers this request
        if key is None:
            if not self.keys:
                raise AuthUnavailable("signing keys unavailable (IVY_JWT_JWKS_URL unreachable); retry shortly",
                                      headers={"Retry-After": "10"})
            raise AuthError("the token's signing key (kid) is unknown")
        if key.algorithm_name != alg:
            raise AuthError("the token's algorithm does not match its signing key")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._fetch is None or self._fetch.done():
            self.attempted_at = time.monotonic()
            self._fetch = asyncio.create_task(self._download())
        return self._fetch

    async def refresh(self) -> None:
        """Fetch now (sharing a fetch already under way); never raises."""
        await asyncio.shield(self._start_fetch())

    async def _download(self) -> None:
        try:
            async with self.http.get(self.url, timeout=self.TIMEOUT) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                document = await resp.json(content_type=None)
            keys: dict[str | None, jwt.PyJWK] = {}
            for entry in document.get("keys", []) if isinstance(document, dict) else []:
                with contextlib.suppress(jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError, ValueError):
                    key = jwt.PyJWK(entry)
                    if key.algorithm_name in KEY_ALGORITHMS and entry.get("use", "sig") == "sig":
                        keys[entry.get("kid")] = key
            if not keys:
                raise ValueError("no RS256/ES256 signing key in the document")
        except Exception as exc:
            log.warning("jwks_fetch_failed", url=self.url, keys_kept=len(self.keys),
                        error=f"{type(exc).__name__}: {exc}"[:200])
            return
        self.keys, self.fetched_at = keys, time.monotonic()
        log.info("jwks_fetched", url=self.url, keys=len(keys))

    async def aclose(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch


class Authenticator:
    MAX_REMEMBERED = 10_000

    def __init__(self, settings: Settings, http: aiohttp.ClientSession | None = None, *,
                 peers: Peers | None = None) -> None:
        self.mode = settings.ivy_auth_mode
        self.peers = peers or Peers(settings.trusted_proxies, raw=False)
        self.trusted: tuple[IPv4Network | IPv6Network, ...] = settings.trusted_networks
        self._trust: dict[str, bool] = {}
        self.secret = settings.ivy_jwt_secret.get_secret_value() if settings.ivy_jwt_secret else None
        url = settings.ivy_jwt_jwks_url
        self.jwks = JWKSCache(str(url), http) if url is not None and http is not None else None
        self.issuer, self.audience = settings.ivy_jwt_issuer, settings.ivy_jwt_audience
        self.org_claim = settings.ivy_jwt_org_claim
        self.leeway = settings.ivy_jwt_leeway_seconds
        self._verified: dict[str, tuple[Identity, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.mode == "jwt"

    async def start(self) -> None:
        if self.jwks is not None and self.enabled:
            await self.jwks.refresh()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()

    def trusts(self, host: str | None) -> bool:
        """Whether a client address is in IVY_AUTH_TRUSTED_CIDRS (parsed once, answers cached)."""
        if host is None or not self.trusted:
            return False
        known = self._trust.get(host)
        if known is None:
            try:
                address = ip_address(host)
                known = any(address in network for network in self.trusted)
            except ValueError:
                known = False
            if len(self._trust) >= self.MAX_REMEMBERED:
                self._trust.clear()
            self._trust[host] = known
        return known

    async def identify(self, scope: Scope) -> Identity | None:
        """The verified identity, or None for a trusted caller without a token; raises 401/503."""
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
                break
        if authorization is None:
            peer = self.peers.of(scope)  # the socket's peer, or the client our proxies forwarded for
            if peer.vouched and self.trusts(peer.address):
                return None
            raise AuthError("this endpoint needs 'Authorization: Bearer <token>'", "missing_token")
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("the token is too long")
        return await self.verify(token)

    async def verify(self, token: str) -> Identity:
        remembered = self._verified.get(token)
        if remembered is not None:
            if time.time() <= remembered[1] + self.leeway:
                return remembered[0]
            del self._verified[token]
            raise AuthError("the token has expired", "expired_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        key: Any
        if alg in HMAC_ALGORITHMS and self.secret is not None:
            key = self.secret
        elif alg in KEY_ALGORITHMS and self.jwks is not None:
            kid = header.get("kid")
            key = await self.jwks.key_for(kid if isinstance(kid, str) else None, str(alg))
        else:
            raise AuthError("the token's algorithm is not accepted here")
        claims = self._decode(token, key, str(alg))
        sub, org = claims.get("sub"), claims.get(self.org_claim)
        if not isinstance(sub, str) or not sub.strip():
            raise AuthError("the token has no subject (sub)", "missing_claim")
        org_id = str(org).strip() if isinstance(org, str | int) and not isinstance(org, bool) else ""
        identity = Identity(sub.strip(), org_id or None)
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = (identity, float(claims["exp"]))
        return identity

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], leeway=self.leeway, issuer=self.issuer, audience=self.audience,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
            return claims
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token has no '{exc.claim}' claim", "missing_claim") from None
        except jwt.PyJWTError as exc:
            for kind, code, message in _FAILURES:
                if isinstance(exc, kind):
                    raise AuthError(message, code) from None
            raise AuthError("the token is not valid") from None


def check_headers_agree(identity: Identity, user_header: str | None, org_header: str | None) -> None:
    """An X-User-ID or X-Org-ID that names someone other than the token is refused (403)."""
    if user_header is not None and user_header.strip() and user_header.strip() != identity.user_id:
        raise IdentityMismatch("X-User-ID does not match the token's subject")
    if org_header is not None and org_header.strip() and org_header.strip() != (identity.org_id or ""):
        raise IdentityMismatch("X-Org-ID does not match the token's org")
