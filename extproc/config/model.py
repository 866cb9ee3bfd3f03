"""The one configuration file that both the ext_proc server and Envoy's config derive from.

The whole file is parsed once into frozen typed objects (:class:`ConfigFile`, pydantic v2):
every key is known, every value is checked, and an error names the file, the line and the
key path (``providers[1].base_url``) of what is wrong. Each section's type lives with the
capability it configures (``policy``, ``masking``, ``approvals``, ``recording``, ``tools``);
checks that span sections are made here. Relative paths inside the file are resolved
against the current working directory, like Envoy's.

``${VAR}`` and ``${VAR:-default}`` in the base sections' string values are expanded from the
environment at load time, so one file serves a laptop and a cluster
(``redis.url: ${REDIS_URL:-...}``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, ConfigDict, Field, model_validator

from extproc.approvals.config import HOLD_GRACE_SECONDS, ApprovalsSection
from extproc.config.types import (
    Between,
    ConfigError,
    EnvText,
    Flag,
    Invalid,
    Names,
    NumberBetween,
    Pattern,
    Section,
    located_error,
    validate_section,
)
from extproc.masking.config import MaskingSection
from extproc.policy.loader import PolicySection, check_against_masking
from extproc.recording.config import RecordingSection
from extproc.tools.config import ToolsSection

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConfigFile",
    "CredentialConfig",
    "EnvoyTuning",
    "IssuerConfig",
    "ListenerConfig",
    "ProviderConfig",
    "TlsListenerConfig",
    "located_error",
    "parse_config",
]

ApiFlavour = Literal["openai", "anthropic", "generic", "mcp"]
API_FLAVOURS: tuple[str, ...] = ("openai", "anthropic", "generic", "mcp")

_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_RESERVED_PREFIXES = ("/_extproc",)

#: Defaults per API flavour: which header carries the credential and extra headers.
_AUTH_DEFAULTS: dict[str, tuple[str, str]] = {
    "openai": ("authorization", "Bearer "),
    "generic": ("authorization", "Bearer "),
    "mcp": ("authorization", "Bearer "),
    "anthropic": ("x-api-key", ""),
}

SYSTEM_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some others
)
# The rendered config must not depend on the machine it was rendered on, so the default is
# the Debian path (also what the official Envoy image uses); the others are suggestions.
DEFAULT_CA_FILE = SYSTEM_CA_CANDIDATES[0]

#: The asymmetric algorithms python-jose can verify (it has no RSASSA-PSS).
_ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})

Port = Annotated[int, Between(0, 65535, env=True)]


# ---------------------------------------------------------------------------
# listeners


class ListenerConfig(Section):
    address: EnvText = "127.0.0.1"
    port: Port = 0


class HttpListener(ListenerConfig):
    port: Port = 10000


class ExtProcListener(ListenerConfig):
    port: Port = 50051


class AdminHttpListener(ListenerConfig):
    port: Port = 9100


class AdminGrpcListener(ListenerConfig):
    port: Port = 50052


class EnvoyAdminListener(ListenerConfig):
    port: Port = 9901


class TlsSpec(Section):
    """``listeners.tls``: both files, or neither for a generated development certificate."""

    address: EnvText = "127.0.0.1"
    port: Port = 10443
    cert_file: EnvText | None = None
    key_file: EnvText | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSpec:
        if bool(self.cert_file) != bool(self.key_file):
            raise Invalid("set both 'cert_file' and 'key_file', or neither for a development certificate")
        return self


@dataclass(frozen=True, slots=True)
class TlsListenerConfig:
    address: str
    port: int
    cert_file: str
    key_file: str
    #: True when no certificate was configured and a development one is generated.
    generated: bool


@dataclass(frozen=True, slots=True)
class AdminConfig:
    http: ListenerConfig
    grpc: ListenerConfig


class Listeners(Section):
    http: HttpListener = Field(default_factory=HttpListener)
    tls: TlsSpec | None = None
    ext_proc: ExtProcListener = Field(default_factory=ExtProcListener)
    admin: AdminHttpListener = Field(default_factory=AdminHttpListener)
    admin_grpc: AdminGrpcListener = Field(default_factory=AdminGrpcListener)
    envoy_admin: EnvoyAdminListener = Field(default_factory=EnvoyAdminListener)

    @model_validator(mode="after")
    def _distinct_ports(self) -> Listeners:
        seen: dict[int, str] = {}
        for key in ("http", "tls", "ext_proc", "admin", "admin_grpc", "envoy_admin"):
            listener = getattr(self, key)
            port = listener.port if listener is not None else 0
            if port == 0:
                continue
            if port in seen:
                raise Invalid(f"port {port} is already used by {seen[port]}", key, "port")
            seen[port] = f"listeners.{key}"
        return self


# ---------------------------------------------------------------------------
# redis, identity


def _redis_url(url: str) -> str:
    if urlsplit(url).scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise Invalid("must be a redis://, rediss://, redis+sentinel:// or unix:// URL")
    return url


class RedisSpec(Section):
    url: Annotated[EnvText, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"


class IssuerConfig(Section):
    issuer: EnvText
    audiences: Names = ()
    jwks_url: EnvText | None = None
    jwks_file: EnvText | None = None
    #: CA bundle to verify the JWKS endpoint (Kubernetes API server CA, for example).
    jwks_ca_file: EnvText | None = None
    #: A bearer token sent when fetching the JWKS (Kubernetes requires one).
    jwks_token_file: EnvText | None = None
    user_claim: EnvText = "sub"
    groups_claim: EnvText = "groups"
    clock_skew_seconds: Annotated[int, Between(0, 300, env=True)] = 30
    #: Allowed signature algorithms; empty means "whatever the JWKS keys declare".
    algorithms: Names = ()
    #: An unknown ``kid`` triggers a JWKS refresh at most this often (a flood of forged
    #: key ids must not become a flood of fetches).
    jwks_min_refresh_seconds: Annotated[int, Between(0, 3600, env=True)] = 10

    @model_validator(mode="after")
    def _check(self) -> IssuerConfig:
        if not self.issuer:
            raise Invalid("must not be empty", "issuer")
        if not self.audiences:
            where = ("audiences",) if "audiences" in self.model_fields_set else ()
            raise Invalid("at least one audience is required: a token minted for another service must not be "
                          "accepted", *where)
        if self.jwks_url and self.jwks_file:
            raise Invalid("set at most one of 'jwks_url' and 'jwks_file'")
        if self.jwks_url and urlsplit(self.jwks_url).scheme not in ("http", "https"):
            raise Invalid(f"must be an http(s) URL, got {self.jwks_url!r}", "jwks_url")
        if not self.jwks_url and not self.jwks_file and not self.issuer.startswith(("https://", "http://")):
            raise Invalid("no 'jwks_url' or 'jwks_file', and the issuer is not a URL to discover it from "
                          "(<issuer>/.well-known/openid-configuration)")
        for i, alg in enumerate(self.algorithms):
            if alg not in _ASYMMETRIC_ALGS:
                raise Invalid(f"{alg!r} is not allowed; only asymmetric algorithms "
                              f"({', '.join(sorted(_ASYMMETRIC_ALGS))})", "algorithms", i)
        return self


class IdentitySpec(Section):
    issuers: tuple[IssuerConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> IdentitySpec:
        names = [i.issuer for i in self.issuers]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise Invalid(f"issuer {n!r} is listed twice", "issuers", i, "issuer")
        return self


# ---------------------------------------------------------------------------
# providers


class CredentialConfig(Section):
    """Where a provider's secret comes from. Exactly one of ``env``/``file`` is set."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["env"]}, {"required": ["file"]}]})

    env: EnvText | None = None
    file: EnvText | None = None

    @model_validator(mode="after")
    def _one(self) -> CredentialConfig:
        if bool(self.env) == bool(self.file):
            raise Invalid("set exactly one of 'env' (an environment variable name) or 'file' (a path)")
        if self.env and not re.fullmatch(_ENV_NAME, self.env):
            raise Invalid(f"is not a valid environment variable name: {self.env!r}", "env")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class AuthConfig(Section):
    """Header the credential is sent in (lower case) and the prefix put before the secret
    (``Bearer ``, may be empty); the defaults depend on the provider's API."""

    header: EnvText = ""
    scheme: EnvText | None = None


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"must be an http:// or https:// URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise Invalid("must not carry a query string or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise Invalid("has an invalid port") from None
    return url.rstrip("/")


class ProviderConfig(Section):
    name: Annotated[str, Pattern(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?",
                                 "must be lower-case letters, digits, '-' or '_' (at most 63)")]
    api: ApiFlavour = "openai"
    base_url: Annotated[EnvText, AfterValidator(_base_url)]
    #: The path prefix routed to this provider; ``/<name>`` when left out.
    prefix: EnvText = ""
    credential: CredentialConfig | None = None
    auth: AuthConfig = Field(default_factory=AuthConfig)
    #: Extra static headers sent upstream (e.g. ``anthropic-version``), lower-case keys.
    headers: Mapping[str, EnvText] = Field(default_factory=dict)
    #: Whether callers must present a verified token on this route.
    authenticate: Flag = True

    @model_validator(mode="after")
    def _resolve(self) -> ProviderConfig:
        prefix = self.prefix or f"/{self.name}"
        if not prefix.startswith("/") or prefix == "/" or "//" in prefix or any(c in prefix for c in "?#* "):
            raise Invalid(f"must be a path like '/openai', got {prefix!r}", "prefix")
        prefix = prefix.rstrip("/")
        if prefix.startswith(_RESERVED_PREFIXES):
            raise Invalid(f"{prefix!r} is reserved for the gateway itself", "prefix")
        default_header, default_scheme = _AUTH_DEFAULTS[self.api]
        header = (self.auth.header or default_header).lower()
        if not _HEADER_RE.match(header) or header == "host":
            raise Invalid(f"is not a header name a credential can be sent in: {header!r}", "auth", "header")
        scheme = self.auth.scheme
        if scheme is None:
            scheme = default_scheme if header == default_header else ""
        elif scheme and not scheme.endswith(" "):
            scheme += " "
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            if not _HEADER_RE.match(k.lower()) or k.lower() in ("host", header, "authorization", "x-api-key"):
                raise Invalid("cannot be set as a static upstream header", "headers", k)
            if not v:
                raise Invalid("must not be empty", "headers", k)
            headers[k.lower()] = v
        if (prefix, header, scheme, headers) == (self.prefix, self.auth.header, self.auth.scheme, self.headers):
            return self
        return self.model_copy(update={"prefix": prefix, "auth": AuthConfig(header=header, scheme=scheme),
                                       "headers": headers})

    @property
    def auth_header(self) -> str:
        return self.auth.header

    @property
    def auth_scheme(self) -> str:
        return self.auth.scheme or ""

    @property
    def upstream(self) -> tuple[str, str, int, str]:
        """(scheme, host, port, base path without trailing slash)."""
        parts = urlsplit(self.base_url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        return scheme, parts.hostname or "", port, parts.path.rstrip("/")

    @property
    def cluster_name(self) -> str:
        return f"provider_{self.name}"


# ---------------------------------------------------------------------------
# envoy


class EnvoyTuning(Section):
    message_timeout_ms: Annotated[int, Between(50, 60_000, env=True)] = 2000
    max_message_timeout_seconds: Annotated[int, Between(1, 3600, env=True)] = 600
    stream_idle_timeout_seconds: Annotated[int, Between(10, 86_400, env=True)] = 900
    request_timeout_seconds: Annotated[int, Between(0, 86_400, env=True)] = 0
    upstream_connect_timeout_seconds: Annotated[float, NumberBetween(0.1, 60)] = 5.0
    max_request_bytes: Annotated[int, Between(1024, 256 * 1024 * 1024, env=True)] = 8 * 1024 * 1024
    upstream_ca_file: EnvText = DEFAULT_CA_FILE
    access_log: Flag = True
    #: Envoy worker threads; 0 lets Envoy decide (one per core).
    concurrency: Annotated[int, Between(0, 256, env=True)] = 0

    @model_validator(mode="after")
    def _idle_outlasts_holds(self) -> EnvoyTuning:
        if self.stream_idle_timeout_seconds <= self.max_message_timeout_seconds:
            raise Invalid("must be longer than envoy.max_message_timeout_seconds, or a held request is cut off",
                          "stream_idle_timeout_seconds")
        return self


# ---------------------------------------------------------------------------
# the file


def _version(v: object) -> int:
    if v != 1 or isinstance(v, bool):
        raise Invalid(f"unsupported config version {v!r}; this build reads version 1")
    return 1


class ConfigFile(Section):
    """The whole configuration file, typed. Sections left out are None (not configured)."""

    version: Annotated[int, AfterValidator(_version)] = 1
    listeners: Listeners = Field(default_factory=Listeners)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    identity: IdentitySpec = Field(default_factory=IdentitySpec)
    providers: tuple[ProviderConfig, ...] = ()
    envoy: EnvoyTuning = Field(default_factory=EnvoyTuning)
    shutdown_grace_seconds: Annotated[float, NumberBetween(0.0, 600.0)] = 20.0
    policy: PolicySection | None = None
    masking: MaskingSection | None = None
    approvals: ApprovalsSection | None = None
    recording: RecordingSection | None = None
    tools: ToolsSection | None = None

    @model_validator(mode="after")
    def _across_sections(self) -> ConfigFile:
        providers = self.providers
        if not providers:
            raise Invalid("at least one provider is required (a list of mappings)", "providers")
        for i, p in enumerate(providers):
            for j, q in enumerate(providers[:i]):
                if p.name == q.name:
                    raise Invalid(f"provider {p.name!r} is already defined at providers[{j}]", "providers", i, "name")
                if p.prefix == q.prefix or p.prefix.startswith(q.prefix + "/") or q.prefix.startswith(p.prefix + "/"):
                    raise Invalid(f"{p.prefix!r} overlaps providers[{j}] ({q.name}: {q.prefix!r})",
                                  "providers", i, "prefix")
        if any(p.authenticate for p in providers) and not self.identity.issuers:
            raise Invalid("providers require authentication but no issuer is configured", "identity", "issuers")
        if self.policy is not None:
            try:
                check_against_masking(self.policy, self.masking)
            except Invalid as exc:
                raise Invalid(exc.message, "policy", *exc.at) from None
        if self.masking is not None and self.masking.responses.providers is not None:
            names = {p.name for p in providers}
            for i, name in enumerate(self.masking.responses.providers):
                if name not in names:
                    raise Invalid(f"unknown provider {name!r}", "masking", "responses", "providers", i)
        if self.approvals is not None:
            hold, limit = self.approvals.hold_seconds, self.envoy.max_message_timeout_seconds
            if hold + HOLD_GRACE_SECONDS > limit:
                raise Invalid(f"a hold of {hold}s needs envoy.max_message_timeout_seconds >= "
                              f"{hold + HOLD_GRACE_SECONDS} (it is {limit}): Envoy would cut the held request",
                              "approvals", "hold_seconds")
        return self


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded configuration: the typed file, where it came from and its line map."""

    source: str
    #: A digest of the file's text, reported by ``config check`` and on reloads.
    version: str
    file: ConfigFile
    #: Key path (``policy.rules[2].match``) -> line number, for errors found after parsing.
    lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def listener(self) -> ListenerConfig:
        return self.file.listeners.http

    @property
    def tls(self) -> TlsListenerConfig | None:
        t = self.file.listeners.tls
        if t is None:
            return None
        return TlsListenerConfig(address=t.address, port=t.port, cert_file=t.cert_file or ".run/tls/gateway.crt",
                                 key_file=t.key_file or ".run/tls/gateway.key", generated=not t.cert_file)

    @property
    def ext_proc(self) -> ListenerConfig:
        return self.file.listeners.ext_proc

    @property
    def admin(self) -> AdminConfig:
        return AdminConfig(http=self.file.listeners.admin, grpc=self.file.listeners.admin_grpc)

    @property
    def envoy_admin(self) -> ListenerConfig:
        return self.file.listeners.envoy_admin

    @property
    def redis_url(self) -> str:
        return self.file.redis.url

    @property
    def issuers(self) -> tuple[IssuerConfig, ...]:
        return self.file.identity.issuers

    @property
    def providers(self) -> tuple[ProviderConfig, ...]:
        return self.file.providers

    @property
    def envoy(self) -> EnvoyTuning:
        return self.file.envoy

    @property
    def shutdown_grace_seconds(self) -> float:
        return self.file.shutdown_grace_seconds

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


# ---------------------------------------------------------------------------
# YAML loading with line numbers


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line each key path starts on."""


def _load_with_lines(text: str, file: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line) from None
    if node is None:
        return None, lines

    def walk(n: yaml.Node, path: str) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                child = f"{path}.{key}" if path else str(key)
                lines[child] = k.start_mark.line + 1
                walk(v, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{path}[{i}]")

    walk(node, "")
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:  # e.g. duplicate anchors; compose passed
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def parse_config(data: Any, *, file: str = "<config>", lines: Mapping[str, int] | None = None,
                 env: Mapping[str, str], text: str | None = None) -> Config:
    """The configuration in ``data`` (the YAML document), validated in one pass. ``env``
    expands ``${VAR}``: the process environment, passed in by
    :func:`extproc.config.load.load_config` (this module reads no files and no globals)."""
    if data is None:
        raise ConfigError("the file is empty", file=file)
    parsed = validate_section(ConfigFile, data, path="", file=file, lines=lines, env=env)
    digest_src = text if text is not None else repr(data)
    return Config(source=file, version=hashlib.sha256(digest_src.encode()).hexdigest()[:16], file=parsed,
                  lines=dict(lines or {}))
