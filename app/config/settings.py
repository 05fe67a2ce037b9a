"""One Settings object, read from the environment (and `.env`) by the runbook's variable names.

Invalid values refuse the start: on-call flips these by hand at 3 a.m., and a typo that
silently falls back to a default is worse than a service that says which variable is wrong.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config.budget_limits import Limit
from app.config.prices import PriceFileError, PriceTable
from app.vocabulary import RemoteProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class ConfigError(Exception):
    """Raised with one human line per invalid variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", case_sensitive=False, extra="ignore", env_ignore_empty=True,
    )

    # Providers
    active_model: RemoteProvider = "gemini"
    gemini_api_key: SecretStr | None = Field(default=None, max_length=4096)
    openai_api_key: SecretStr | None = Field(default=None, max_length=4096)
    gemini_base_url: AnyHttpUrl = AnyHttpUrl("https://generativelanguage.googleapis.com")
    openai_base_url: AnyHttpUrl = AnyHttpUrl("https://api.openai.com/v1")
    gemini_model: str = Field(default="gemini-2.5-flash", min_length=1)
    openai_model: str = Field(default="gpt-4.1-mini", min_length=1)
    # Gemini 2.5 "thinking" tokens: 0 turns it off (flash), -1 lets the model decide; empty = model default.
    gemini_thinking_budget: int | None = Field(default=0, ge=-1, le=32_768)

    # Feature flags
    ivy_modal_heuristics: bool = True
    # A modal opens only at this classifier confidence or above; below it the request is answered as
    # rag or conversational (1.0: only the surest drafts; 0: the rules alone decide).
    ivy_modal_min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    ivy_organic_enabled: bool = True

    # Rate limiting
    ai_rate_limit_per_min: int = Field(default=60, ge=1, le=1_000_000_000)
    ai_org_rate_limit_per_min: int = Field(default=600, ge=1, le=1_000_000_000)
    ai_rate_limit_burst: int | None = Field(default=None, ge=1, le=1_000_000_000)
    ai_rate_limit_fail_open: bool = True
    redis_url: str | None = None
    # The limiter's Redis call timeout. It runs on the event loop's clock, so it also counts the
    # loop's own lag: under hundreds of concurrent requests the loop can be 100+ ms behind, and 50 ms
    # failed healthy calls open (240 of 11,000 in the bench's 500-connection case; 0 at 250 ms).
    redis_timeout_ms: int = Field(default=250, ge=1, le=10_000)

    # Provider time policy (see app/providers/chain.py). The deadline is the hard limit of one
    # request's provider calls, sized to the slowest healthy provider's tail (gpt-4.1-mini writing
    # a long answer), not to the SLO: past it the offline provider answers.
    # The deadline follows the first provider's own answer times (twice their p99); these are its
    # bounds: never less than IVY_REQUEST_DEADLINE_SECONDS, never more than the MAX, which is also
    # as far as an answer still flowing at the deadline may run (docs/HEDGING.md).
    ivy_request_deadline_seconds: float = Field(default=8.0, ge=0.5, le=120)
    ivy_request_deadline_max_seconds: float = Field(default=60.0, ge=0.5, le=600)
    ivy_hedge_enabled: bool = True
    ivy_hedge_percentile: float = Field(default=97.0, ge=50, le=99.9)
    ivy_hedge_min_delay_ms: int = Field(default=100, ge=1, le=60_000)
    # An upper limit, not the policy: the hedge delay and the presumed-hung ceiling follow each
    # provider's first-token norm (a thinking model's 3 s first token is its norm, not a hang).
    ivy_hedge_max_delay_ms: int = Field(default=30_000, ge=1, le=120_000)
    ivy_hedge_initial_delay_ms: int = Field(default=1000, ge=1, le=60_000)
    ivy_hedge_budget_ratio: float = Field(default=0.3, ge=0, le=1)
    ivy_hedge_budget_floor: int = Field(default=5, ge=0, le=10_000)
    ivy_hedge_budget_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Load (app/resilience/load.py): above this event-loop lag the worker is late (no hedging, no
    # outrun or norm samples). Admission: while the loop's CPU share is within 0.1 of TARGET_CPU,
    # requests beyond TARGET_CPU / (CPU per request) a second are shed; MAX_IN_FLIGHT is the hard bound.
    ivy_loop_lag_bound_ms: int = Field(default=40, ge=5, le=5000)
    ivy_admission_enabled: bool = True
    ivy_admission_max_in_flight: int = Field(default=1000, ge=1, le=100_000)
    ivy_admission_target_cpu: float = Field(default=0.85, ge=0.2, le=1.0)
    ivy_admission_burst_seconds: float = Field(default=0.1, ge=0.05, le=10)
    # Output-token caps per intent: they bound the answer's share of the latency.
    ivy_max_output_tokens_conversational: int = Field(default=256, ge=16, le=65_536)
    ivy_max_output_tokens_rag: int = Field(default=512, ge=16, le=65_536)
    ivy_max_output_tokens_modal: int = Field(default=512, ge=16, le=65_536)

    # Circuit breaker
    ivy_breaker_window: int = Field(default=20, ge=1, le=10_000)
    ivy_breaker_min_calls: int = Field(default=5, ge=1, le=10_000)
    ivy_breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    ivy_breaker_slow_call_rate: float = Field(default=0.8, gt=0, le=1)
    ivy_breaker_consecutive: int = Field(default=6, ge=1, le=10_000)
    ivy_breaker_open_seconds: float = Field(default=30.0, gt=0, le=3600)
    ivy_breaker_half_open_calls: int = Field(default=2, ge=1, le=100)

    # Answer cache (app/cache/): exact answers keyed by everything they depend on; Redis with REDIS_URL.
    ivy_cache_enabled: bool = True
    ivy_cache_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 86_400)
    ivy_cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)  # in-process backend's LRU bound
    # Provider calls per minute (per worker) spent re-answering the most asked questions; 0: no warm-up.
    ivy_cache_warmup_per_min: int = Field(default=6, ge=0, le=600)

    # Cost and budgets (app/budget/). The price table is package data; a file replaces it.
    ivy_price_file: Path | None = None
    # Unset: budgets off (costs are still counted). "none": on, only orgs with an override are limited;
    # "<amount> usd|tokens/day|month": every org's default.
    ivy_budget_default: str | None = Field(default=None, max_length=100)
    ivy_budget_exhausted: Literal["refuse", "offline"] = "refuse"
    ivy_budget_soft_threshold: float = Field(default=0.8, gt=0, le=1)

    # Retrieval
    ivy_knowledge_dir: Path = PACKAGE_DIR / "knowledge"

    # Output checks (app/safety/): hosts a link in an answer or a draft may point at, besides the
    # lead's own (its website, its addresses' domains) and the knowledge base's; comma-separated,
    # subdomains included ("ivycrm.com" allows "docs.ivycrm.com").
    ivy_allowed_link_domains: str = Field(default="", max_length=10_000)

    # Observability
    ivy_log_file: Path = REPO_ROOT / "logs" / "ai_router.log"
    ivy_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ivy_log_max_bytes: int = Field(default=50 * 1024 * 1024, ge=0)  # 0: no rotation here (logrotate)
    ivy_log_backups: int = Field(default=5, ge=0, le=100)
    ivy_latency_window_seconds: float = Field(default=300.0, gt=0, le=86_400)
    ivy_latency_summary_seconds: float = Field(default=60.0, gt=0, le=3600)
    ivy_eval_reports_dir: Path = REPO_ROOT / "scripts" / "eval_reports"

    # Admin: runtime flag changes (PUT /admin/flags); the endpoint is off while unset.
    ivy_admin_token: SecretStr | None = Field(default=None, min_length=16, max_length=4096)

    # Runtime: the young-generation threshold of CPython's cyclic GC (700 by default; see app/main.py).
    ivy_gc_gen0_threshold: int = Field(default=50_000, ge=700, le=10_000_000)

    # HTTP
    ivy_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    # --- Caller identity, slow clients and shutdown (README "Identity and shutdown") -----------
    ivy_auth_mode: Literal["off", "jwt"] = "off"
    ivy_jwt_secret: SecretStr | None = Field(default=None, min_length=32, max_length=4096)  # HS256: RFC 7518: 256 bits
    ivy_jwt_jwks_url: AnyHttpUrl | None = None  # RS256 / ES256 keys
    ivy_jwt_issuer: str | None = None
    ivy_jwt_audience: str | None = None
    ivy_jwt_org_claim: str = Field(default="org_id", min_length=1, max_length=100)
    ivy_jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    # Who may still say who they are with X-User-ID in jwt mode; "none" (or empty in the environment): no one.
    ivy_auth_trusted_cidrs: str = "127.0.0.0/8,::1"
    # The reverse proxies whose X-Forwarded-For counts (their own address is the socket's peer); "none": no one.
    ivy_trusted_proxies: str = "none"
    ivy_shutdown_timeout_seconds: float = Field(default=3.0, ge=1, le=60)
    ivy_header_timeout_seconds: float = Field(default=10.0, ge=0.5, le=300)
    ivy_body_timeout_seconds: float = Field(default=10.0, ge=0.5, le=300)

    # --- Traces (OpenTelemetry, app/observability/tracing.py): the standard OTEL_* names ---------
    # Off unless an endpoint is set. The base endpoint gets /v1/traces appended; the traces one is used as is.
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None
    otel_exporter_otlp_traces_endpoint: AnyHttpUrl | None = None
    # `name=value,name2=value2` (values percent-decoded): they carry the backend's credentials.
    otel_exporter_otlp_headers: SecretStr | None = None
    otel_exporter_otlp_traces_headers: SecretStr | None = None
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"  # grpc is not shipped
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf"] = "http/protobuf"
    otel_exporter_otlp_timeout: int = Field(default=10_000, ge=100, le=60_000)  # ms, per export
    otel_service_name: str = Field(default="ivy-router", min_length=1, max_length=200)
    otel_resource_attributes: str = ""
    otel_traces_sampler: Literal["always_on", "always_off", "traceidratio", "parentbased_always_on",
                                 "parentbased_always_off", "parentbased_traceidratio"] = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0.0, le=1.0)  # the ratio of the *traceidratio samplers
    otel_sdk_disabled: bool = False

    @field_validator("ivy_jwt_secret", "ivy_jwt_jwks_url", "ivy_jwt_issuer", "ivy_jwt_audience", mode="before")
    @classmethod
    def _auth_empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ivy_allowed_link_domains", mode="after")
    @classmethod
    def _check_link_domains(cls, value: str) -> str:
        link_domains(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("ivy_auth_trusted_cidrs", "ivy_trusted_proxies", mode="after")
    @classmethod
    def _check_cidrs(cls, value: str) -> str:
        trusted_networks(value)  # raises ValueError naming the bad entry
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if os.environ.get("IVY_AUTH_TRUSTED_CIDRS", "unset").strip() == "":
            self.ivy_auth_trusted_cidrs = "none"  # the one variable whose empty value is not "default"
        if self.ivy_auth_mode == "jwt" and self.ivy_jwt_secret is None and self.ivy_jwt_jwks_url is None:
            raise ValueError("IVY_AUTH_MODE=jwt needs IVY_JWT_SECRET (HS256) or IVY_JWT_JWKS_URL (RS256/ES256)")
        return self

    @property
    def link_domains(self) -> tuple[str, ...]:
        return link_domains(self.ivy_allowed_link_domains)

    @property
    def trusted_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return trusted_networks(self.ivy_auth_trusted_cidrs)

    @property
    def trusted_proxies(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return trusted_networks(self.ivy_trusted_proxies)

    def secret_values(self) -> list[str]:
        """Every configured secret (SECRET_FIELDS), for redaction: provider keys, admin token, JWT secret,
        the Redis password."""
        fields = [getattr(self, name) for name in sorted(SECRET_FIELDS)]
        values = [v.get_secret_value() for v in fields if isinstance(v, SecretStr)]
        if self.redis_url and (password := urlsplit(self.redis_url).password):
            values.append(password)
        values += [v for v in self.otel_headers().values() if v]
        return values

    @property
    def otel_traces_endpoint(self) -> str | None:
        """Where spans go (OTLP/HTTP), or None: tracing off."""
        if self.otel_sdk_disabled:
            return None
        if self.otel_exporter_otlp_traces_endpoint is not None:
            return str(self.otel_exporter_otlp_traces_endpoint)
        if self.otel_exporter_otlp_endpoint is not None:
            return str(self.otel_exporter_otlp_endpoint).rstrip("/") + "/v1/traces"
        return None

    def otel_headers(self) -> dict[str, str]:
        """The OTLP request headers: OTEL_EXPORTER_OTLP_TRACES_HEADERS if set, else OTEL_EXPORTER_OTLP_HEADERS."""
        raw = self.otel_exporter_otlp_traces_headers or self.otel_exporter_otlp_headers
        return _key_values(raw.get_secret_value(), "") if raw is not None else {}

    def otel_resource_attributes_map(self) -> dict[str, str]:
        return _key_values(self.otel_resource_attributes, "")

    @model_validator(mode="after")
    def _check_otel_lists(self) -> Settings:
        # Said without the values: headers carry credentials.
        for name in ("otel_exporter_otlp_headers", "otel_exporter_otlp_traces_headers"):
            secret = getattr(self, name)
            if secret is not None:
                _key_values(secret.get_secret_value(), name.upper())
        _key_values(self.otel_resource_attributes, "OTEL_RESOURCE_ATTRIBUTES")
        return self

    @field_validator("ivy_price_file", mode="after")
    @classmethod
    def _check_price_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                PriceTable.load(value)  # the table's own parser names the bad entry
            except OSError as exc:
                raise ValueError(f"cannot read it: {exc.strerror}") from None
            except PriceFileError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("ivy_budget_default", mode="after")
    @classmethod
    def _check_budget_default(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "none":
            Limit.parse(value)  # raises ValueError saying what is expected
        return value

    @property
    def budgets_enabled(self) -> bool:
        return self.ivy_budget_default is not None

    @property
    def budget_default(self) -> Limit | None:
        spec = self.ivy_budget_default
        return None if spec is None or spec.strip().lower() == "none" else Limit.parse(spec)

    @field_validator("ivy_log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("gemini_api_key", "openai_api_key", "ivy_admin_token", "redis_url", "ai_rate_limit_burst",
                     "otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint", "otel_exporter_otlp_headers",
                     "otel_exporter_otlp_traces_headers", "ivy_price_file", "ivy_budget_default", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `export OPENAI_API_KEY=` is how people unset a key in a shell; treat it as absent.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url", mode="after")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            _ = urlsplit(value).port  # a port that is not a number, or a broken [IPv6] host, raises
        except ValueError:
            raise ValueError("is not a valid URL (scheme://[user:password@]host[:port][/db])") from None
        return value

    @field_validator("gemini_api_key", "openai_api_key", "ivy_admin_token", mode="after")
    @classmethod
    def _check_header_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent in an HTTP header (or typed into one with curl): a pasted space or line break is a mistake.
        if value is not None and not _HEADER_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must be printable ASCII with no spaces or line breaks (it goes in an HTTP header)")
        return value

    @field_validator("ivy_jwt_secret", mode="after")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        secret = value.get_secret_value() if value is not None else ""
        if secret != secret.strip() or not secret.isprintable():
            raise ValueError("must not start or end with a space, nor hold a line break or control character")
        return value

    @model_validator(mode="after")
    def _check_hedge_delays(self) -> Settings:
        if self.ivy_hedge_min_delay_ms > self.ivy_hedge_max_delay_ms:
            raise ValueError("IVY_HEDGE_MIN_DELAY_MS must not exceed IVY_HEDGE_MAX_DELAY_MS")
        if self.ivy_request_deadline_seconds > self.ivy_request_deadline_max_seconds:
            raise ValueError("IVY_REQUEST_DEADLINE_SECONDS must not exceed IVY_REQUEST_DEADLINE_MAX_SECONDS")
        return self

    def max_output_tokens(self, intent: str) -> int:
        return {"conversational": self.ivy_max_output_tokens_conversational,
                "rag": self.ivy_max_output_tokens_rag}.get(intent, self.ivy_max_output_tokens_modal)

    @property
    def rate_limit_burst(self) -> int:
        """User bucket capacity: one minute's allowance unless set, so a rep never waits in normal use."""
        return self.ai_rate_limit_burst or self.ai_rate_limit_per_min

    def provider_key(self, name: str) -> SecretStr | None:
        return self.gemini_api_key if name == "gemini" else self.openai_api_key

    def model_of(self, provider: str) -> str:
        """The model configured for a remote provider (GEMINI_MODEL, OPENAI_MODEL): the one place
        the chain, the answer cache and health read it from."""
        return self.gemini_model if provider == "gemini" else self.openai_model


# The fields that hold secrets (REDIS_URL: its password). A configuration error names the variable
# and the rule it breaks, never the value; a test holds every SecretStr field to being listed here.
SECRET_FIELDS = frozenset({"gemini_api_key", "openai_api_key", "ivy_admin_token", "ivy_jwt_secret", "redis_url",
                           "otel_exporter_otlp_headers", "otel_exporter_otlp_traces_headers"})
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")

_ALLOWED = {
    "bool_parsing": "allowed: true or false",
    "literal_error": None,  # pydantic already lists the allowed values
}


def _describe(error: dict[str, Any]) -> str:
    loc = error.get("loc") or ()
    field = str(loc[0]) if isinstance(loc, tuple) and loc else ""
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if field in SECRET_FIELDS:
        return f"{field.upper()}: {_secret_rule(error, msg)}"
    value = error.get("input")
    hint = _ALLOWED.get(str(error.get("type")))
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return f"{field.upper() or 'configuration'}{shown}: {msg}" + (f" ({hint})" if hint else "")


def _secret_rule(error: dict[str, Any], msg: str) -> str:
    """The rule a secret broke, in words that hold no part of it (its length at most)."""
    ctx = error.get("ctx") or {}
    if error.get("type") in ("too_short", "string_too_short"):
        return f"must be at least {ctx.get('min_length')} characters (it has {ctx.get('actual_length', 'fewer')})"
    if error.get("type") in ("too_long", "string_too_long"):
        return f"must be at most {ctx.get('max_length')} characters (it has {ctx.get('actual_length', 'more')})"
    if error.get("type") in ("string_type", "value_error"):
        return msg  # pydantic's "Input should be a valid string", or one of the validators' rules above
    return f"invalid value ({error.get('type')})"


_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z0-9\-]{2,63}$")


def link_domains(value: str) -> tuple[str, ...]:
    """IVY_ALLOWED_LINK_DOMAINS as lowercase hosts; a ValueError names the first that is not one."""
    domains = tuple(d.strip().lower().rstrip(".") for d in value.split(",") if d.strip())
    for domain in domains:
        if not _DOMAIN.match(domain):
            raise ValueError(f"{domain!r} is not a host name (e.g. ivycrm.com)")
    return domains


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def _key_values(spec: str, variable: str) -> dict[str, str]:
    """``"a=1,b=x%20y"`` -> {"a": "1", "b": "x y"} (the OTEL_* list format). ValueError names the
    variable and the entry's position, never a value."""
    out: dict[str, str] = {}
    for number, entry in enumerate(spec.split(","), 1):
        if not entry.strip():
            continue
        name, sep, value = entry.partition("=")
        name = name.strip()
        if not sep or not _HEADER_NAME.match(name) or not value.strip():
            raise ValueError(f"{variable}: entry {number} is not name=value (name a header/attribute token, "
                             "value not empty)")
        out[name] = unquote(value.strip())
    return out


def trusted_networks(spec: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """``"127.0.0.0/8,::1"`` -> networks; ``"none"`` or blank -> none. ValueError names a bad entry."""
    if spec.strip().lower() in ("", "none"):
        return ()
    networks = []
    for part in spec.split(","):
        if not part.strip():
            continue
        try:
            networks.append(ip_network(part.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not an IP address or network (e.g. 10.0.0.0/8, ::1)") from None
    return tuple(networks)


def load_settings(env_file: Path | str | None = ".env", **values: Any) -> Settings:
    """Build Settings (from the environment, `env_file` and `values`) or raise ConfigError with one
    line naming each bad variable and never a secret's value."""
    try:
        return Settings(_env_file=env_file, **values)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors(include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None
