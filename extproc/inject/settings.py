"""Injector settings: what the sidecar-injecting webhook adds to a pod.

The settings file is YAML, read strictly (unknown keys are errors), for example::

    version: 1
    mode: sidecar                      # or "gateway": only env + token, no sidecars
    own_namespace: extproc-system      # never inject here
    gateway_url: http://127.0.0.1:10000
    images:
      extproc: ghcr.io/extproc/extproc:0.1.0
      envoy: envoyproxy/envoy:v1.40.0
      redirect: ghcr.io/extproc/extproc:0.1.0
    failure_policy: Ignore

Every key has a default, so an empty file is valid; see ``InjectSettings`` for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from extproc.errors import ExtprocError

__all__ = ["CaBundle", "InjectSettings", "SettingsError", "load_settings", "parse_settings"]

Mode = Literal["sidecar", "gateway"]
FailurePolicy = Literal["Ignore", "Fail"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class SettingsError(ExtprocError, ValueError):
    """An invalid injector settings file; the message names the key."""


@dataclass(frozen=True, slots=True)
class CaBundle:
    """A ConfigMap holding the CA bundle app containers use to trust the gateway's TLS listener.

    The bundle replaces the system trust store for Python (``SSL_CERT_FILE``,
    ``REQUESTS_CA_BUNDLE``), so it must contain the public CAs too, not only the gateway's.
    """

    config_map: str
    key: str = "ca.crt"


def _default_routes() -> dict[str, str]:
    return {"OPENAI_BASE_URL": "/openai", "ANTHROPIC_BASE_URL": "/anthropic"}


def _default_resources() -> dict[str, dict[str, dict[str, str]]]:
    return {
        "envoy": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "extproc": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "redirect": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
    }


@dataclass(frozen=True, slots=True)
class InjectSettings:
    #: ``sidecar``: Envoy + ext_proc server as native sidecars in every pod.
    #: ``gateway``: no sidecars; app env points at the shared egress gateway Service.
    mode: Mode = "sidecar"
    #: The injector's own namespace: pods there are never injected.
    own_namespace: str = "extproc-system"
    #: Where app containers send LLM calls. Sidecar: the pod-local Envoy listener.
    gateway_url: str = "http://127.0.0.1:10000"
    #: Environment variable -> path prefix on the gateway (the provider routes).
    routes: Mapping[str, str] = field(default_factory=_default_routes)
    #: Only with an https gateway_url: CA bundle mounted into app containers.
    ca_bundle: CaBundle | None = None
    extproc_image: str = "ghcr.io/extproc/extproc:0.1.0"
    envoy_image: str = "envoyproxy/envoy:v1.40.0"
    #: Image for the optional iptables init container; it must contain ``iptables``.
    redirect_image: str = "ghcr.io/extproc/extproc:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    #: ConfigMap (keys ``extproc.yaml`` and ``envoy.yaml``) in the pod's namespace.
    config_map: str = "extproc-config"
    #: Secret with the provider keys (one file per provider) in the pod's namespace.
    provider_secret: str = "extproc-provider-keys"  # noqa: S105 - a Secret name
    token_audience: str = "extproc"  # noqa: S105 - an audience
    token_expiration_seconds: int = 3600
    envoy_uid: int = 101
    extproc_uid: int = 10001
    #: Ports the sidecars use; they must match the config in the ConfigMap.
    envoy_port: int = 10000
    envoy_admin_port: int = 9901
    admin_port: int = 9100
    reserved_ports: tuple[int, ...] = (10000, 10443, 50051, 50052, 9100, 9901)
    #: Outbound TCP ports the optional redirect sends to Envoy.
    redirect_ports: tuple[int, ...] = (80, 443)
    resources: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=_default_resources)
    #: Extra env for the ext_proc container (e.g. REDIS_URL from a Secret), Kubernetes EnvVar shape.
    extproc_env: tuple[Mapping[str, Any], ...] = ()
    #: The answer to an AdmissionReview the webhook cannot understand but can answer (uid known).
    failure_policy: FailurePolicy = "Ignore"

    @property
    def https(self) -> bool:
        return urlsplit(self.gateway_url).scheme == "https"


def _fail(path: str, message: str) -> SettingsError:
    return SettingsError(f"{path}: {message}")


def _map(value: Any, path: str, allowed: set[str] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, "must be a mapping")
    for k in value:
        if not isinstance(k, str):
            raise _fail(path, f"keys must be strings, got {k!r}")
        if allowed is not None and k not in allowed:
            raise _fail(f"{path}.{k}" if path else k, f"unknown key; allowed: {', '.join(sorted(allowed))}")
    return value


def _str(m: Mapping[str, Any], key: str, path: str, default: str) -> str:
    v = m.get(key, default)
    if not isinstance(v, str) or not v:
        raise _fail(f"{path}{key}", "must be a non-empty string")
    return v


def _int(m: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    v = m.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(f"{path}{key}", f"must be an integer between {lo} and {hi}")
    return v


def _ports(m: Mapping[str, Any], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    v = m.get(key, list(default))
    if not isinstance(v, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in v
    ):
        raise _fail(key, "must be a list of TCP ports")
    return tuple(v)


def parse_settings(data: Any) -> InjectSettings:
    """Validate a parsed settings document (``None`` means all defaults)."""
    d = InjectSettings()
    top = _map(
        data,
        "",
        {
            "version",
            "mode",
            "own_namespace",
            "gateway_url",
            "routes",
            "ca_bundle",
            "images",
            "image_pull_policy",
            "config_map",
            "provider_secret",
            "token",
            "uids",
            "ports",
            "redirect_ports",
            "resources",
            "extproc_env",
            "failure_policy",
        },
    )
    if top.get("version", 1) != 1:
        raise _fail("version", "must be 1")
    mode = _str(top, "mode", "", d.mode)
    if mode not in ("sidecar", "gateway"):
        raise _fail("mode", "must be 'sidecar' or 'gateway'")
    own_ns = _str(top, "own_namespace", "", d.own_namespace)
    if not _DNS_LABEL.match(own_ns):
        raise _fail("own_namespace", "must be a namespace name")
    gateway_url = _str(top, "gateway_url", "", d.gateway_url).rstrip("/")
    parts = urlsplit(gateway_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _fail("gateway_url", "must be an http:// or https:// URL with a host")

    routes_raw = _map(top.get("routes", d.routes), "routes", None)
    routes: dict[str, str] = {}
    for name, prefix in routes_raw.items():
        if not _ENV_NAME.match(name):
            raise _fail(f"routes.{name}", "is not an environment variable name")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise _fail(f"routes.{name}", "must be a path prefix like /openai")
        routes[name] = prefix.rstrip("/")

    ca: CaBundle | None = None
    if top.get("ca_bundle") is not None:
        cm = _map(top["ca_bundle"], "ca_bundle", {"config_map", "key"})
        ca = CaBundle(
            config_map=_str(cm, "config_map", "ca_bundle.", ""), key=_str(cm, "key", "ca_bundle.", "ca.crt")
        )
        if parts.scheme != "https":
            raise _fail("ca_bundle", "only makes sense with an https:// gateway_url (the TLS listener)")

    images = _map(top.get("images"), "images", {"extproc", "envoy", "redirect"})
    pull = _str(top, "image_pull_policy", "", d.image_pull_policy)
    if pull not in ("Always", "IfNotPresent", "Never"):
        raise _fail("image_pull_policy", "must be Always, IfNotPresent or Never")
    config_map = _str(top, "config_map", "", d.config_map)
    secret = _str(top, "provider_secret", "", d.provider_secret)
    for key, name in (("config_map", config_map), ("provider_secret", secret)):
        if not _DNS_SUBDOMAIN.match(name):
            raise _fail(key, "must be a Kubernetes object name")

    token = _map(top.get("token"), "token", {"audience", "expiration_seconds"})
    uids = _map(top.get("uids"), "uids", {"envoy", "extproc"})
    ports = _map(top.get("ports"), "ports", {"envoy", "envoy_admin", "admin", "reserved"})

    res_raw = _map(top.get("resources"), "resources", {"envoy", "extproc", "redirect"})
    resources: dict[str, Mapping[str, Mapping[str, str]]] = dict(d.resources)
    for name, spec in res_raw.items():
        sm = _map(spec, f"resources.{name}", {"requests", "limits"})
        out: dict[str, Mapping[str, str]] = {}
        for kind, values in sm.items():
            vm = _map(values, f"resources.{name}.{kind}", {"cpu", "memory"})
            for rk, rv in vm.items():
                if not isinstance(rv, str) or not _QUANTITY.match(rv):
                    raise _fail(
                        f"resources.{name}.{kind}.{rk}", "must be a quantity string like '100m' or '128Mi'"
                    )
            out[kind] = dict(vm)
        resources[name] = out

    env_raw = top.get("extproc_env", [])
    if not isinstance(env_raw, list):
        raise _fail("extproc_env", "must be a list of EnvVar mappings")
    env: list[Mapping[str, Any]] = []
    for i, item in enumerate(env_raw):
        em = _map(item, f"extproc_env[{i}]", {"name", "value", "valueFrom"})
        if not isinstance(em.get("name"), str) or not _ENV_NAME.match(em["name"]):
            raise _fail(f"extproc_env[{i}].name", "must be an environment variable name")
        if ("value" in em) == ("valueFrom" in em):
            raise _fail(f"extproc_env[{i}]", "set exactly one of value or valueFrom")
        if "value" in em and not isinstance(em["value"], str):
            raise _fail(f"extproc_env[{i}].value", "must be a string")
        env.append(dict(em))

    policy = _str(top, "failure_policy", "", d.failure_policy)
    if policy not in ("Ignore", "Fail"):
        raise _fail("failure_policy", "must be Ignore or Fail")

    return InjectSettings(
        mode=mode,  # type: ignore[arg-type]
        own_namespace=own_ns,
        gateway_url=gateway_url,
        routes=routes,
        ca_bundle=ca,
        extproc_image=_str(images, "extproc", "images.", d.extproc_image),
        envoy_image=_str(images, "envoy", "images.", d.envoy_image),
        redirect_image=_str(images, "redirect", "images.", d.redirect_image),
        image_pull_policy=pull,
        config_map=config_map,
        provider_secret=secret,
        token_audience=_str(token, "audience", "token.", d.token_audience),
        token_expiration_seconds=_int(
            token, "expiration_seconds", "token.", d.token_expiration_seconds, 600, 86400
        ),
        envoy_uid=_int(uids, "envoy", "uids.", d.envoy_uid, 1, 2**31 - 1),
        extproc_uid=_int(uids, "extproc", "uids.", d.extproc_uid, 1, 2**31 - 1),
        envoy_port=_int(ports, "envoy", "ports.", d.envoy_port, 1, 65535),
        envoy_admin_port=_int(ports, "envoy_admin", "ports.", d.envoy_admin_port, 1, 65535),
        admin_port=_int(ports, "admin", "ports.", d.admin_port, 1, 65535),
        reserved_ports=_ports(ports, "reserved", d.reserved_ports),
        redirect_ports=_ports(top, "redirect_ports", d.redirect_ports),
        resources=resources,
        extproc_env=tuple(env),
        failure_policy=policy,  # type: ignore[arg-type]
    )


def load_settings(path: str | Path) -> InjectSettings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_settings(data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None
