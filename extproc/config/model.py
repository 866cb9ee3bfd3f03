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

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from extproc.approvals.config import HOLD_GRACE_SECONDS, ApprovalsSection
from extproc.config.types import (
    Between,
    Checked,
    ConfigError,
    EnvText,
    Flag,
    Invalid,
    Names,
    NumberBetween,
    Pattern,
    Section,
    expand_env,
    kind,
    located_error,
    validate_section,
)
from extproc.datapath.config import TIMEOUT_MARGIN_SECONDS, InspectionSettings
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
    "ExtProcListener",
    "IssuerConfig",
    "ListenerConfig",
    "ProviderConfig",
    "TlsListenerConfig",
    "UnixListener",
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
    """A TCP listener (``address``, ``port``)."""

    address: EnvText = "127.0.0.1"
    port: Port = 0

    @model_validator(mode="after")
    def _tcp_only(self) -> ListenerConfig:
        if self.address.startswith("unix:") and not isinstance(self, UnixListener):
            raise Invalid("must be a host or IP address (no unix: socket here)", "address")
        return self

    @property
    def unix_path(self) -> str | None:
        """The socket path of a ``unix:/path`` address, else None (TCP)."""
        if not self.address.startswith("unix:"):
            return None
        path = self.address[len("unix:"):]
        return path[2:] if path.startswith("//") else path

    @property
    def target(self) -> str:
        """The address in gRPC's form: ``unix:/path`` or ``host:port``."""
        path = self.unix_path
        return f"unix:{path}" if path is not None else f"{self.address}:{self.port}"

    @property
    def enabled(self) -> bool:
        return True


_MODE_MESSAGE = "must be an octal mode such as '0600' or '0660'"


def _socket_mode(v: object) -> int:
    if isinstance(v, str):  # "0660": octal, as chmod reads it
        try:
            v = int(v, 8)
        except ValueError:
            raise Invalid(f"{_MODE_MESSAGE}, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o777:
        raise Invalid(f"{_MODE_MESSAGE}, got {kind(v)}")
    if v & 0o007 or not v & 0o600 == 0o600:
        raise Invalid(f"must give the owner read+write and others nothing (e.g. '0660'), got {v:04o}")
    return v


def _uids(v: object, info: ValidationInfo) -> tuple[int, ...]:
    if not isinstance(v, list | tuple) or not v:
        raise Invalid(f"must be a non-empty list of uids, got {kind(v)}")
    ctx = info.context
    env = ctx.get("env") if isinstance(ctx, Mapping) else None
    out: list[int] = []
    for i, uid in enumerate(v):
        if isinstance(uid, str):  # "${EXTPROC_ENVOY_UID}": the injector tells the sidecar Envoy's uid
            try:
                uid = int(expand_env(uid, env or {}))
            except ValueError:  # Invalid (an unset variable) is a ValueError too
                raise Invalid(f"must be a uid (a non-negative integer), got {uid!r}", i) from None
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= 2**32 - 2:
            raise Invalid(f"must be a uid (a non-negative integer), got {kind(uid)}", i)
        out.append(uid)
    return tuple(out)


SocketMode = Annotated[int, Checked(_socket_mode, {"anyOf": [{"type": "string", "pattern": "^0?[0-7]{3}$"},
                                                             {"type": "integer", "minimum": 0, "maximum": 0o777}]})]
PeerUids = Annotated[tuple[int, ...], Checked(_uids, {"type": "array", "minItems": 1, "items": {"anyOf": [
    {"type": "integer", "minimum": 0, "maximum": 2**32 - 2}, {"type": "string", "pattern": r"\$\{"}]}}, info=True)]


class UnixListener(ListenerConfig):
    """A listener that may be a unix socket (``address: unix:/absolute/path``): then
    ``socket_mode`` applies (no bits for others) and ``port`` is ignored."""

    socket_mode: SocketMode = 0o660

    @model_validator(mode="after")
    def _unix(self) -> UnixListener:
        path = self.unix_path
        if path is None:
            for key in ("socket_mode", "peer_uids"):
                if key in self.model_fields_set:
                    raise Invalid("applies only to a unix:/path address", key)
            return self
        if not path.startswith("/") or len(path.encode()) > 107:
            raise Invalid("a unix socket address must be unix:/absolute/path (at most 107 bytes)", "address")
        return self if self.port == 0 else self.model_copy(update={"port": 0})


class HttpListener(ListenerConfig):
    port: Port = 10000


class ExtProcListener(UnixListener):
    port: Port = 50051
    #: The uids allowed to connect to a unix socket (empty: the server's own).
    peer_uids: PeerUids = ()


class AdminHttpListener(ListenerConfig):
    port: Port = 9100


class AdminGrpcListener(ListenerConfig):
    port: Port = 50052


class AdminGrpcOff(AdminGrpcListener):
    """``admin_grpc: false``: no admin gRPC API (sidecars: approvers use a shared one)."""

    @property
    def enabled(self) -> bool:
        return False


def _admin_grpc_off(v: object) -> object:
    return AdminGrpcOff.model_construct(address="127.0.0.1", port=0) if v is False else v


def _or_false(schema: dict[str, Any]) -> None:
    ref = dict(schema)
    schema.clear()
    schema["anyOf"] = [ref, {"const": False}]


class EnvoyAdminListener(UnixListener):
    port: Port = 9901


class EnvoyProbeListener(ListenerConfig):
    """Envoy's listener serving only ``GET /ready`` and ``GET /stats/prometheus`` (proxied to
    the admin socket): what kubelet probes and Prometheus need, nothing that changes Envoy."""

    port: Port = 15021


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
    #: ``false`` turns the admin gRPC API off.
    admin_grpc: Annotated[AdminGrpcListener, BeforeValidator(_admin_grpc_off),
                          Field(json_schema_extra=cast(Any, _or_false))] = Field(default_factory=AdminGrpcListener)
    envoy_admin: EnvoyAdminListener = Field(default_factory=EnvoyAdminListener)
    #: Needs ``envoy_admin`` on a unix socket (it proxies to it).
    envoy_probe: EnvoyProbeListener | None = None

    @model_validator(mode="after")
    def _distinct_ports(self) -> Listeners:
        if self.envoy_probe is not None and self.envoy_admin.unix_path is None:
            raise Invalid("needs listeners.envoy_admin on a unix:/path socket", "envoy_probe")
        seen: dict[int, str] = {}
        for key in ("http", "tls", "ext_proc", "admin", "admin_grpc", "envoy_admin", "envoy_probe"):
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


_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:{}-]{0,99}:")


def _key_prefix(prefix: str) -> str:
    if not _KEY_PREFIX.fullmatch(prefix):
        raise Invalid("must be 1-100 of [A-Za-z0-9_.-:{}] ending with ':', e.g. extproc:team-a:")
    return prefix


class RedisSpec(Section):
    url: Annotated[EnvText, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"
    #: Prefix of every key and the pub/sub channel: one prefix per tenant lets a Redis ACL
    #: user be confined to its own keys (``~<prefix>*``, ``&<prefix>*``).
    key_prefix: Annotated[EnvText, AfterValidator(_key_prefix)] = "extproc:"


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


_PATTERN_HINT = "path pattern like '/files' or '/audio/*'"


def _uninspectable(v: object) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise Invalid(f"must be a list of {_PATTERN_HINT}s, got {kind(v)}")
    for i, item in enumerate(v):
        if not isinstance(item, str) or not item.startswith("/") or item.strip("/*") == "":
            raise Invalid(f"must be a {_PATTERN_HINT} (not everything), got {item!r}", i)
    return tuple(v)


UninspectablePaths = Annotated[tuple[str, ...], Checked(_uninspectable, {
    "type": "array", "items": {"type": "string", "pattern": "^/", "not": {"pattern": r"^[/*]*$"}}})]


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
    #: Path patterns (after the prefix, ``fnmatch`` globs) whose bodies the gateway cannot
    #: read (not JSON: file uploads, audio) but may forward anyway. On an ``openai`` or
    #: ``anthropic`` route every other such body is refused (403 ``uninspectable_body``).
    allow_uninspectable: UninspectablePaths = ()

    def allows_uninspectable(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.allow_uninspectable)

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
    #: ext_proc worker processes; 0 = one per core of the container's CPU limit (one on a unix
    #: socket, where each worker needs a socket of its own that Envoy's rendered config lists).
    workers: Annotated[int, Between(0, 256, env=True)] = 0
    policy: PolicySection | None = None
    masking: MaskingSection | None = None
    approvals: ApprovalsSection | None = None
    recording: RecordingSection | None = None
    tools: ToolsSection | None = None
    inspection: InspectionSettings = Field(default_factory=InspectionSettings)

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
        timeout, limit = self.inspection.timeout_seconds, self.envoy.max_message_timeout_seconds
        if timeout + TIMEOUT_MARGIN_SECONDS > limit:
            raise Invalid(f"must leave {TIMEOUT_MARGIN_SECONDS} s under envoy.max_message_timeout_seconds ({limit}): "
                          "Envoy would cut the request before its inspection ends", "inspection", "timeout_seconds")
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
    #: ``identity.issuers`` with ``issuer: discover`` resolved at start-up (the file keeps what
    #: it says, so a reload compares like with like).
    discovered_issuers: tuple[IssuerConfig, ...] | None = None

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
    def ext_proc(self) -> ExtProcListener:
        return self.file.listeners.ext_proc

    @property
    def admin(self) -> AdminConfig:
        return AdminConfig(http=self.file.listeners.admin, grpc=self.file.listeners.admin_grpc)

    @property
    def envoy_admin(self) -> EnvoyAdminListener:
        return self.file.listeners.envoy_admin

    @property
    def envoy_probe(self) -> EnvoyProbeListener | None:
        return self.file.listeners.envoy_probe

    @property
    def redis_url(self) -> str:
        return self.file.redis.url

    @property
    def redis_prefix(self) -> str:
        """Prefix of every Redis key and channel (``redis.key_prefix``)."""
        return self.file.redis.key_prefix

    @property
    def issuers(self) -> tuple[IssuerConfig, ...]:
        if self.discovered_issuers is not None:
            return self.discovered_issuers
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

    @property
    def workers(self) -> int:
        return self.file.workers

    def with_issuers(self, issuers: tuple[IssuerConfig, ...]) -> Config:
        """The same configuration trusting ``issuers`` (``issuer: discover`` resolved at start-up)."""
        return replace(self, discovered_issuers=issuers)

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
