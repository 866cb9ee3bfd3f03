"""The one configuration file that both the ext_proc server and Envoy's config derive from.

Loading is strict: every key is known, every value is checked, and an error names the
file, the line and the key path (``providers[1].base_url``) of what is wrong. Relative
paths inside the file are resolved against the current working directory, like Envoy's.

``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment at
load time, so one file serves a laptop and a cluster (``redis.url: ${REDIS_URL:-...}``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from extproc.errors import ConfigError, located_error

__all__ = [
    "AdminConfig",
    "Config",
    "ConfigError",
    "CredentialConfig",
    "EnvoyTuning",
    "IssuerConfig",
    "ListenerConfig",
    "ProviderConfig",
    "located_error",
    "parse_config",
]

ApiFlavour = Literal["openai", "anthropic", "generic", "mcp"]
API_FLAVOURS: tuple[str, ...] = ("openai", "anthropic", "generic", "mcp")


# ---------------------------------------------------------------------------
# dataclasses: the validated, immutable view the rest of the program uses


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    address: str
    port: int


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


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    """Where a provider's secret comes from. Exactly one of ``env``/``file`` is set."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    api: ApiFlavour
    base_url: str
    prefix: str
    credential: CredentialConfig | None
    #: Header the credential is sent in, lower case (``authorization`` or ``x-api-key``...).
    auth_header: str
    #: Prefix put before the secret in that header, e.g. ``Bearer `` (may be empty).
    auth_scheme: str
    #: Extra static headers sent upstream (e.g. ``anthropic-version``), lower-case keys.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Whether callers must present a verified token on this route.
    authenticate: bool = True

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


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str | None
    jwks_file: str | None
    #: CA bundle to verify the JWKS endpoint (Kubernetes API server CA, for example).
    jwks_ca_file: str | None
    #: A bearer token sent when fetching the JWKS (Kubernetes requires one).
    jwks_token_file: str | None
    user_claim: str
    groups_claim: str
    clock_skew_seconds: int
    #: Allowed signature algorithms; empty means "whatever the JWKS keys declare".
    algorithms: tuple[str, ...]
    #: An unknown ``kid`` triggers a JWKS refresh at most this often (a flood of forged
    #: key ids must not become a flood of fetches).
    jwks_min_refresh_seconds: int = 10


@dataclass(frozen=True, slots=True)
class EnvoyTuning:
    message_timeout_ms: int
    max_message_timeout_seconds: int
    stream_idle_timeout_seconds: int
    request_timeout_seconds: int
    upstream_connect_timeout_seconds: float
    max_request_bytes: int
    upstream_ca_file: str
    access_log: bool
    concurrency: int | None


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    version: str
    listener: ListenerConfig
    tls: TlsListenerConfig | None
    ext_proc: ListenerConfig
    admin: AdminConfig
    envoy_admin: ListenerConfig
    redis_url: str
    issuers: tuple[IssuerConfig, ...]
    providers: tuple[ProviderConfig, ...]
    envoy: EnvoyTuning
    raw: Mapping[str, Any]
    #: Key path (``policy.rules[2].match``) -> line number, for errors raised by later loaders.
    lines: Mapping[str, int] = field(default_factory=dict)
    shutdown_grace_seconds: float = 20.0
    #: ext_proc worker processes; 0 = one per core of the container's CPU limit (extproc/workers.py).
    workers: int = 0

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


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_RE.sub(sub, value)


# ---------------------------------------------------------------------------
# a small strict reader


class _Reader:
    def __init__(self, file: str, lines: dict[str, int], env: Mapping[str, str]) -> None:
        self.file = file
        self.lines = lines
        self.env = env

    def error(self, path: str, message: str) -> ConfigError:
        return located_error(message, path=path, file=self.file, lines=self.lines)

    def mapping(self, value: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"keys must be strings, got {key!r}")
            if key not in allowed:
                hint = _closest(key, allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                raise self.error(
                    _join(path, key), f"unknown key{extra}; allowed: {', '.join(sorted(allowed))}"
                )
        return value

    def string(
        self, m: Mapping[str, Any], key: str, path: str, *, default: str | None = None, required: bool = False
    ) -> str | None:
        p = _join(path, key)
        if key not in m or m[key] is None:
            if required:
                raise self.error(p if key in m else path, f"missing required key {key!r}")
            return default
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(p, f"must be a string, got {_kind(v)}")
        s = str(v)
        try:
            s = _expand(s, self.env)
        except KeyError as exc:
            raise self.error(p, f"environment variable {exc.args[0]} is not set and has no default") from None
        return s

    def req_string(self, m: Mapping[str, Any], key: str, path: str) -> str:
        s = self.string(m, key, path, required=True)
        assert s is not None
        if not s:
            raise self.error(_join(path, key), "must not be empty")
        return s

    def integer(self, m: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        p = _join(path, key)
        v = m.get(key, default)
        if isinstance(v, str):
            try:
                v = int(_expand(v, self.env))
            except (ValueError, KeyError):
                raise self.error(p, f"must be an integer, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(p, f"must be an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise self.error(p, f"must be between {lo} and {hi}, got {v}")
        return v

    def number(self, m: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
        p = _join(path, key)
        v = m.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(p, f"must be a number, got {_kind(v)}")
        if not lo <= v <= hi:
            raise self.error(p, f"must be between {lo} and {hi}, got {v}")
        return float(v)

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        v = m.get(key, default)
        if not isinstance(v, bool):
            raise self.error(_join(path, key), f"must be true or false, got {_kind(v)}")
        return v

    def string_list(self, m: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        p = _join(path, key)
        v = m.get(key)
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise self.error(p, f"must be a list of strings, got {_kind(v)}")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item:
                raise self.error(f"{p}[{i}]", f"must be a non-empty string, got {_kind(item)}")
            out.append(item)
        return tuple(out)

    def listener(self, value: Any, path: str, default_port: int, default_address: str = "127.0.0.1") -> ListenerConfig:
        m = self.mapping(value, path, {"address", "port"})
        address = self.string(m, "address", path, default=default_address) or default_address
        port = self.integer(m, "port", path, default_port, 0, 65535)
        return ListenerConfig(address=address, port=port)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {v!r}".replace("True", "true").replace("False", "false")
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return f"string {v!r}"
    return f"{type(v).__name__} {v!r}"


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    got = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return got[0] if got else None


_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
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


def _default_ca_file() -> str:
    # The rendered config must not depend on the machine it was rendered on, so the
    # default is the Debian path (also what the official Envoy image uses); the
    # other candidates are only suggestions in the error message.
    return SYSTEM_CA_CANDIDATES[0]


def _provider(r: _Reader, value: Any, path: str) -> ProviderConfig:
    m = r.mapping(
        value,
        path,
        {"name", "api", "base_url", "prefix", "credential", "auth", "headers", "authenticate"},
    )
    name = r.req_string(m, "name", path)
    if not _NAME_RE.match(name):
        raise r.error(_join(path, "name"), "must be lower-case letters, digits, '-' or '_' (at most 63)")
    api = r.string(m, "api", path, default="openai") or "openai"
    if api not in API_FLAVOURS:
        raise r.error(_join(path, "api"), f"must be one of {', '.join(API_FLAVOURS)}, got {api!r}")
    base_url = r.req_string(m, "base_url", path)
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error(_join(path, "base_url"), f"must be an http:// or https:// URL with a host, got {base_url!r}")
    if parts.query or parts.fragment:
        raise r.error(_join(path, "base_url"), "must not carry a query string or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise r.error(_join(path, "base_url"), "has an invalid port") from None
    prefix = r.string(m, "prefix", path, default=f"/{name}") or f"/{name}"
    if not prefix.startswith("/") or prefix == "/" or "//" in prefix or any(c in prefix for c in "?#* "):
        raise r.error(_join(path, "prefix"), f"must be a path like '/openai', got {prefix!r}")
    prefix = prefix.rstrip("/")
    if prefix.startswith(_RESERVED_PREFIXES):
        raise r.error(_join(path, "prefix"), f"{prefix!r} is reserved for the gateway itself")

    credential: CredentialConfig | None = None
    if m.get("credential") is not None:
        cp = _join(path, "credential")
        cm = r.mapping(m["credential"], cp, {"env", "file"})
        env = r.string(cm, "env", cp)
        file = r.string(cm, "file", cp)
        if bool(env) == bool(file):
            raise r.error(cp, "set exactly one of 'env' (an environment variable name) or 'file' (a path)")
        if env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env):
            raise r.error(_join(cp, "env"), f"is not a valid environment variable name: {env!r}")
        credential = CredentialConfig(env=env, file=file)

    default_header, default_scheme = _AUTH_DEFAULTS[api]
    ap = _join(path, "auth")
    am = r.mapping(m.get("auth"), ap, {"header", "scheme"})
    header = (r.string(am, "header", ap, default=default_header) or default_header).lower()
    if not _HEADER_RE.match(header) or header.startswith(":") or header == "host":
        raise r.error(_join(ap, "header"), f"is not a header name a credential can be sent in: {header!r}")
    scheme = r.string(am, "scheme", ap, default=None)
    if scheme is None:
        scheme = default_scheme if header == default_header else ""
    elif scheme and not scheme.endswith(" "):
        scheme += " "

    hp = _join(path, "headers")
    hm = r.mapping(m.get("headers"), hp, set(m.get("headers") or {}))
    headers: dict[str, str] = {}
    for k in hm:
        if not _HEADER_RE.match(k.lower()) or k.lower() in ("host", header, "authorization", "x-api-key"):
            raise r.error(_join(hp, k), "cannot be set as a static upstream header")
        headers[k.lower()] = r.req_string(hm, k, hp)

    return ProviderConfig(
        name=name,
        api=api,  # type: ignore[arg-type]
        base_url=base_url.rstrip("/"),
        prefix=prefix,
        credential=credential,
        auth_header=header,
        auth_scheme=scheme,
        headers=headers,
        authenticate=r.boolean(m, "authenticate", path, True),
    )


#: The asymmetric algorithms python-jose can verify (it has no RSASSA-PSS).
_ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


def _issuer(r: _Reader, value: Any, path: str) -> IssuerConfig:
    m = r.mapping(
        value,
        path,
        {
            "issuer",
            "audiences",
            "jwks_url",
            "jwks_file",
            "jwks_ca_file",
            "jwks_token_file",
            "user_claim",
            "groups_claim",
            "clock_skew_seconds",
            "algorithms",
            "jwks_min_refresh_seconds",
        },
    )
    issuer = r.req_string(m, "issuer", path)
    audiences = r.string_list(m, "audiences", path)
    if not audiences:
        raise r.error(
            _join(path, "audiences") if "audiences" in m else path,
            "at least one audience is required: a token minted for another service must not be accepted",
        )
    jwks_url = r.string(m, "jwks_url", path)
    jwks_file = r.string(m, "jwks_file", path)
    if jwks_url and jwks_file:
        raise r.error(path, "set at most one of 'jwks_url' and 'jwks_file'")
    if jwks_url:
        s = urlsplit(jwks_url).scheme
        if s not in ("http", "https"):
            raise r.error(_join(path, "jwks_url"), f"must be an http(s) URL, got {jwks_url!r}")
    if not jwks_url and not jwks_file and not issuer.startswith(("https://", "http://")):
        raise r.error(
            path,
            "no 'jwks_url' or 'jwks_file', and the issuer is not a URL to discover it from "
            "(<issuer>/.well-known/openid-configuration)",
        )
    algorithms = r.string_list(m, "algorithms", path)
    for i, alg in enumerate(algorithms):
        if alg not in _ASYMMETRIC_ALGS:
            raise r.error(
                f"{_join(path, 'algorithms')}[{i}]",
                f"{alg!r} is not allowed; only asymmetric algorithms ({', '.join(sorted(_ASYMMETRIC_ALGS))})",
            )
    return IssuerConfig(
        issuer=issuer,
        audiences=audiences,
        jwks_url=jwks_url,
        jwks_file=jwks_file,
        jwks_ca_file=r.string(m, "jwks_ca_file", path),
        jwks_token_file=r.string(m, "jwks_token_file", path),
        user_claim=r.string(m, "user_claim", path, default="sub") or "sub",
        groups_claim=r.string(m, "groups_claim", path, default="groups") or "groups",
        clock_skew_seconds=r.integer(m, "clock_skew_seconds", path, 30, 0, 300),
        algorithms=algorithms,
        jwks_min_refresh_seconds=r.integer(m, "jwks_min_refresh_seconds", path, 10, 0, 3600),
    )


#: Top-level keys owned by later capabilities; validated by their own modules.
_EXTENSION_KEYS = {"policy", "masking", "approvals", "recording", "tools"}

def parse_config(data: Any, *, file: str = "<config>", lines: dict[str, int] | None = None,
                 env: Mapping[str, str], text: str | None = None) -> Config:
    """Validate a parsed document. ``env`` expands ``${VAR}``: the process environment, passed in by
    :func:`extproc.config.load.load_config` (this module reads no files and no globals)."""
    r = _Reader(file, lines or {}, env)
    top = r.mapping(
        data,
        "",
        {"version", "listeners", "redis", "identity", "providers", "envoy", "shutdown_grace_seconds", "workers"}
        | _EXTENSION_KEYS,
    )
    if data is None:
        raise ConfigError("the file is empty", file=file)
    version = top.get("version", 1)
    if version != 1:
        raise r.error("version", f"unsupported config version {version!r}; this build reads version 1")

    lm = r.mapping(
        top.get("listeners"), "listeners", {"http", "tls", "ext_proc", "admin", "admin_grpc", "envoy_admin"}
    )
    listener = r.listener(lm.get("http"), "listeners.http", 10000)
    tls: TlsListenerConfig | None = None
    if lm.get("tls") is not None:
        tm = r.mapping(lm["tls"], "listeners.tls", {"address", "port", "cert_file", "key_file"})
        cert = r.string(tm, "cert_file", "listeners.tls")
        key = r.string(tm, "key_file", "listeners.tls")
        if bool(cert) != bool(key):
            raise r.error(
                "listeners.tls", "set both 'cert_file' and 'key_file', or neither for a development certificate"
            )
        tls = TlsListenerConfig(
            address=r.string(tm, "address", "listeners.tls", default="127.0.0.1") or "127.0.0.1",
            port=r.integer(tm, "port", "listeners.tls", 10443, 0, 65535),
            cert_file=cert or ".run/tls/gateway.crt",
            key_file=key or ".run/tls/gateway.key",
            generated=not cert,
        )
    ext_proc = r.listener(lm.get("ext_proc"), "listeners.ext_proc", 50051)
    admin = AdminConfig(
        http=r.listener(lm.get("admin"), "listeners.admin", 9100),
        grpc=r.listener(lm.get("admin_grpc"), "listeners.admin_grpc", 50052),
    )
    envoy_admin = r.listener(lm.get("envoy_admin"), "listeners.envoy_admin", 9901)
    ports = [
        ("listeners.http", listener.port),
        ("listeners.tls", tls.port if tls else 0),
        ("listeners.ext_proc", ext_proc.port),
        ("listeners.admin", admin.http.port),
        ("listeners.admin_grpc", admin.grpc.port),
        ("listeners.envoy_admin", envoy_admin.port),
    ]
    seen: dict[int, str] = {}
    for where, port in ports:
        if port == 0:
            continue
        if port in seen:
            raise r.error(f"{where}.port", f"port {port} is already used by {seen[port]}")
        seen[port] = where

    rm = r.mapping(top.get("redis"), "redis", {"url"})
    redis_url = r.string(rm, "url", "redis", default="redis://127.0.0.1:6379/0") or ""
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise r.error("redis.url", "must be a redis://, rediss://, redis+sentinel:// or unix:// URL")

    im = r.mapping(top.get("identity"), "identity", {"issuers"})
    raw_issuers = im.get("issuers") or []
    if not isinstance(raw_issuers, list):
        raise r.error("identity.issuers", f"must be a list, got {_kind(raw_issuers)}")
    issuers = tuple(_issuer(r, v, f"identity.issuers[{i}]") for i, v in enumerate(raw_issuers))
    names = [i.issuer for i in issuers]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise r.error(f"identity.issuers[{i}].issuer", f"issuer {n!r} is listed twice")

    raw_providers = top.get("providers")
    if not isinstance(raw_providers, list) or not raw_providers:
        raise r.error("providers", "at least one provider is required (a list of mappings)")
    providers = tuple(_provider(r, v, f"providers[{i}]") for i, v in enumerate(raw_providers))
    for i, p in enumerate(providers):
        for j, q in enumerate(providers[:i]):
            if p.name == q.name:
                raise r.error(f"providers[{i}].name", f"provider {p.name!r} is already defined at providers[{j}]")
            if p.prefix == q.prefix or p.prefix.startswith(q.prefix + "/") or q.prefix.startswith(p.prefix + "/"):
                raise r.error(
                    f"providers[{i}].prefix", f"{p.prefix!r} overlaps providers[{j}] ({q.name}: {q.prefix!r})"
                )
    if any(p.authenticate for p in providers) and not issuers:
        raise r.error("identity.issuers", "providers require authentication but no issuer is configured")

    em = r.mapping(
        top.get("envoy"),
        "envoy",
        {
            "message_timeout_ms",
            "max_message_timeout_seconds",
            "stream_idle_timeout_seconds",
            "request_timeout_seconds",
            "upstream_connect_timeout_seconds",
            "max_request_bytes",
            "upstream_ca_file",
            "access_log",
            "concurrency",
        },
    )
    tuning = EnvoyTuning(
        message_timeout_ms=r.integer(em, "message_timeout_ms", "envoy", 2000, 50, 60_000),
        max_message_timeout_seconds=r.integer(em, "max_message_timeout_seconds", "envoy", 600, 1, 3600),
        stream_idle_timeout_seconds=r.integer(em, "stream_idle_timeout_seconds", "envoy", 900, 10, 86_400),
        request_timeout_seconds=r.integer(em, "request_timeout_seconds", "envoy", 0, 0, 86_400),
        upstream_connect_timeout_seconds=r.number(em, "upstream_connect_timeout_seconds", "envoy", 5.0, 0.1, 60),
        max_request_bytes=r.integer(em, "max_request_bytes", "envoy", 8 * 1024 * 1024, 1024, 256 * 1024 * 1024),
        upstream_ca_file=r.string(em, "upstream_ca_file", "envoy", default=_default_ca_file()) or _default_ca_file(),
        access_log=r.boolean(em, "access_log", "envoy", True),
        concurrency=(r.integer(em, "concurrency", "envoy", 0, 0, 256) or None),
    )
    if tuning.stream_idle_timeout_seconds <= tuning.max_message_timeout_seconds:
        raise r.error(
            "envoy.stream_idle_timeout_seconds",
            "must be longer than envoy.max_message_timeout_seconds, or a held request is cut off",
        )

    digest_src = text if text is not None else repr(data)
    version_id = hashlib.sha256(digest_src.encode()).hexdigest()[:16]
    return Config(
        source=file,
        version=version_id,
        listener=listener,
        tls=tls,
        ext_proc=ext_proc,
        admin=admin,
        envoy_admin=envoy_admin,
        redis_url=redis_url,
        issuers=issuers,
        providers=providers,
        envoy=tuning,
        raw=top,
        lines=dict(lines or {}),
        shutdown_grace_seconds=r.number(top, "shutdown_grace_seconds", "", 20.0, 0.0, 600.0),
        workers=r.integer(top, "workers", "", 0, 0, 256),
    )
