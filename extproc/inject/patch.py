"""The sidecar injector's decision and JSON Patch, as pure functions (no I/O, no clock).

``handle_admission(body, settings)`` takes the raw HTTP request body the API server POSTs
to ``/mutate`` and returns ``(http_status, json_document)``:

* a well-formed Pod CREATE review -> 200 and an AdmissionReview response with the same
  ``apiVersion`` and ``request.uid``, ``allowed: true`` and, when something is injected,
  a base64 RFC 6902 patch (``patchType: JSONPatch``);
* a review the webhook cannot understand but whose ``uid`` it knows -> 200 and a response
  whose ``allowed`` follows ``settings.failure_policy`` with a ``status.message``;
* no uid to answer to (not JSON, no request...) -> 400 and ``{"error": ...}``.

The webhook has no side effects, so ``dryRun`` requests get exactly the same answer.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import __version__
from extproc.errors import ExtprocError
from extproc.inject.boundary import ANNOTATION_ALLOW_WEAK, boundary_problems, private_volume, seal_sidecars
from extproc.inject.settings import InjectSettings

__all__ = [
    "ANNOTATION_INJECT",
    "ANNOTATION_INJECTED",
    "ANNOTATION_REDIRECT",
    "ANNOTATION_REDIRECT_PORTS",
    "ENVOY_CONTAINER",
    "EXTPROC_CONTAINER",
    "LABEL_INJECT",
    "REDIRECT_CONTAINER",
    "TOKEN_VOLUME",
    "JsonPatchError",
    "Outcome",
    "Review",
    "ReviewError",
    "apply_json_patch",
    "escape_pointer",
    "handle_admission",
    "mutate",
    "pod_patch",
    "redirect_ports",
    "redirect_script",
    "validate_review",
]

ANNOTATION_INJECT = "extproc.io/inject"
ANNOTATION_INJECTED = "extproc.io/injected"
ANNOTATION_REDIRECT = "extproc.io/redirect"
ANNOTATION_REDIRECT_PORTS = "extproc.io/redirect-ports"
LABEL_INJECT = "extproc.io/inject"

ENVOY_CONTAINER = "extproc-envoy"
EXTPROC_CONTAINER = "extproc-server"
REDIRECT_CONTAINER = "extproc-redirect"
CONFIG_VOLUME = "extproc-config"
PROVIDERS_VOLUME = "extproc-provider-keys"
KUBE_API_VOLUME = "extproc-kube-api"
TOKEN_VOLUME = "extproc-token"  # noqa: S105 - a volume name
CA_VOLUME = "extproc-ca"
TMP_VOLUME = "extproc-tmp"

CONFIG_DIR = "/etc/extproc"
PROVIDERS_DIR = "/var/run/secrets/extproc/providers"
KUBE_API_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_DIR = "/var/run/secrets/extproc/identity"  # noqa: S105 - a path
TOKEN_FILE = f"{TOKEN_DIR}/token"
CA_DIR = "/var/run/secrets/extproc/ca"

ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

#: Exec startup probe of the ext_proc sidecar: the pod-local listeners are on 127.0.0.1,
#: which kubelet httpGet probes (sent to the pod IP) cannot reach. It gates the app
#: containers on both the ext_proc server and Envoy being ready.
_STARTUP_PROBE = (
    "import sys, urllib.request as u\nfor url in sys.argv[1:]:\n    u.urlopen(url, timeout=2).read()\n"
)


class ReviewError(ExtprocError, ValueError):
    """The AdmissionReview is malformed. ``uid`` is set when the review can still be answered."""

    def __init__(self, message: str, uid: str | None = None, api_version: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.uid = uid
        self.api_version = api_version


class JsonPatchError(ExtprocError, ValueError):
    """A JSON Patch operation cannot be applied."""


@dataclass(frozen=True, slots=True)
class Review:
    api_version: str
    uid: str
    operation: str
    namespace: str
    dry_run: bool
    pod: Mapping[str, Any] | None


@dataclass(slots=True)
class Outcome:
    patch: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# JSON Pointer / JSON Patch


def escape_pointer(token: str) -> str:
    """Escape one reference token for a JSON Pointer (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    if not pointer.startswith("/"):
        raise JsonPatchError(f"path must start with '/': {pointer!r}")
    tokens = [_unescape(t) for t in pointer[1:].split("/")]
    cur = doc
    for t in tokens[:-1]:
        cur = _child(cur, t, pointer)
    return cur, tokens[-1]


def _child(cur: Any, token: str, pointer: str) -> Any:
    if isinstance(cur, dict):
        if token not in cur:
            raise JsonPatchError(f"{pointer}: no member {token!r}")
        return cur[token]
    if isinstance(cur, list):
        i = _index(token, len(cur) - 1, pointer)
        return cur[i]
    raise JsonPatchError(f"{pointer}: cannot descend into a scalar")


def _index(token: str, hi: int, pointer: str) -> int:
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise JsonPatchError(f"{pointer}: {token!r} is not an array index")
    i = int(token)
    if i > hi:
        raise JsonPatchError(f"{pointer}: index {i} out of range")
    return i


def apply_json_patch(doc: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """Apply RFC 6902 ``add``/``remove``/``replace``/``test`` operations to a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise JsonPatchError(f"operation without a path: {op!r}")
        if path == "":
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
                continue
            raise JsonPatchError(f"cannot {kind} the whole document")
        parent, last = _parent(doc, path)
        if kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, dict):
                parent[last] = value
            elif isinstance(parent, list):
                i = len(parent) if last == "-" else _index(last, len(parent), path)
                parent.insert(i, value)
            else:
                raise JsonPatchError(f"{path}: parent is not a container")
        elif kind in ("remove", "replace", "test"):
            if isinstance(parent, dict):
                if last not in parent:
                    raise JsonPatchError(f"{path}: no member {last!r}")
                key: Any = last
            elif isinstance(parent, list):
                key = _index(last, len(parent) - 1, path)
            else:
                raise JsonPatchError(f"{path}: parent is not a container")
            if kind == "remove":
                del parent[key]
            elif kind == "replace":
                parent[key] = copy.deepcopy(op["value"])
            elif parent[key] != op["value"]:
                raise JsonPatchError(f"{path}: test failed")
        else:
            raise JsonPatchError(f"unsupported op {kind!r}")
    return doc


# ---------------------------------------------------------------------------
# parsing the AdmissionReview


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def validate_review(review: Any) -> Review:
    """Check the shape of an AdmissionReview and extract what the injector needs."""
    if not isinstance(review, dict):
        raise ReviewError(f"AdmissionReview must be a JSON object, got {_kind(review)}")
    api_version = review.get("apiVersion")
    request = review.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview has no request.uid to answer to")
    known_version = api_version if api_version in ADMISSION_VERSIONS else None

    def bad(message: str) -> ReviewError:
        return ReviewError(message, uid=uid, api_version=known_version)

    if known_version is None:
        raise bad(f"unsupported apiVersion {api_version!r}; expected one of {', '.join(ADMISSION_VERSIONS)}")
    if review.get("kind") != "AdmissionReview":
        raise bad(f"kind must be AdmissionReview, got {review.get('kind')!r}")
    assert isinstance(request, dict)
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise bad("request.operation must be a string")
    namespace = request.get("namespace", "")
    if not isinstance(namespace, str):
        raise bad("request.namespace must be a string")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise bad("request.dryRun must be a boolean")
    gvk = request.get("kind")
    if not isinstance(gvk, dict) or gvk.get("group", "") != "" or gvk.get("kind") != "Pod":
        raise bad(f"request.kind must be core/v1 Pod, got {gvk!r}")
    if request.get("subResource"):
        raise bad(f"sub-resource {request.get('subResource')!r} is not handled")
    pod = request.get("object")
    if operation != "CREATE":
        return Review(known_version, uid, operation, namespace, dry_run, None)
    if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
        raise bad("request.object must be a Pod")
    metadata = pod.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("request.object.metadata must be an object")
    for key in ("annotations", "labels"):
        m = metadata.get(key)
        if m is not None and (not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values())):
            raise bad(f"request.object.metadata.{key} must map strings to strings")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise bad("request.object.spec must be an object")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise bad("request.object.spec.containers must be a non-empty array")
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if items is None and key == "initContainers":
            continue
        if not isinstance(items, list):
            raise bad(f"request.object.spec.{key} must be an array")
        for i, c in enumerate(items):
            where = f"request.object.spec.{key}[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                raise bad(f"{where} must be an object with a name")
            for sub in ("env", "volumeMounts", "ports"):
                v = c.get(sub)
                if v is not None and (not isinstance(v, list) or not all(isinstance(x, dict) for x in v)):
                    raise bad(f"{where}.{sub} must be an array of objects")
    volumes = spec.get("volumes")
    if volumes is not None and (
        not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes)
    ):
        raise bad("request.object.spec.volumes must be an array of objects")
    if not isinstance(spec.get("hostNetwork", False), bool):
        raise bad("request.object.spec.hostNetwork must be a boolean")
    return Review(
        known_version, uid, operation, namespace or str(metadata.get("namespace") or ""), dry_run, pod
    )


# ---------------------------------------------------------------------------
# what gets injected


def _security_context(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(settings: InjectSettings, name: str) -> dict[str, Any]:
    return {k: dict(v) for k, v in settings.resources.get(name, {}).items()}


def _sidecars(settings: InjectSettings) -> list[dict[str, Any]]:
    """Envoy first, then the ext_proc server whose startup probe waits for both."""
    envoy = {
        "name": ENVOY_CONTAINER,
        "image": settings.envoy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        # `extproc envoy run` execs Envoy with --concurrency from envoy.concurrency in the
        # ConfigMap, else this container's CPU limit (Envoy would otherwise start one worker
        # per node CPU).
        "command": [
            "extproc",
            "envoy",
            "run",
            "--config",
            f"{CONFIG_DIR}/extproc.yaml",
            "--bootstrap",
            f"{CONFIG_DIR}/envoy.yaml",
            "--log-level",
            "info",
        ],
        "resources": _resources(settings, "envoy"),
        "securityContext": _security_context(settings.envoy_uid),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp", "subPath": "envoy"},  # noqa: S108 - an emptyDir
        ],
    }
    local = "http://127.0.0.1"
    extproc: dict[str, Any] = {
        "name": EXTPROC_CONTAINER,
        "image": settings.extproc_image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["extproc", "serve", "--config", f"{CONFIG_DIR}/extproc.yaml"],
        "ports": [{"name": "extproc-admin", "containerPort": settings.admin_port, "protocol": "TCP"}],
        "startupProbe": {
            "exec": {
                "command": [
                    "python3",
                    "-c",
                    _STARTUP_PROBE,
                    f"{local}:{settings.admin_port}/readyz",
                    f"{local}:{settings.envoy_probe_port}/ready",  # the admin itself is a private socket
                ]
            },
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": settings.admin_port},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": settings.admin_port},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 6,
        },
        "resources": _resources(settings, "extproc"),
        "securityContext": _security_context(settings.extproc_uid),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": PROVIDERS_VOLUME, "mountPath": PROVIDERS_DIR, "readOnly": True},
            {"name": KUBE_API_VOLUME, "mountPath": KUBE_API_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp", "subPath": "extproc"},  # noqa: S108 - an emptyDir
        ],
    }
    # The namespace names the tenant's Redis key prefix (redis.key_prefix in the ConfigMap).
    extproc["env"] = [{"name": "EXTPROC_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    extproc["env"] += [e.manifest() for e in settings.extproc_env]
    seal_sidecars(envoy, extproc, settings)
    return [envoy, extproc]


#: ``iptables -m multiport`` takes at most 15 ports per rule.
_MULTIPORT_MAX = 15


def redirect_ports(annotations: Mapping[str, str], settings: InjectSettings) -> tuple[int, ...] | None:
    """The ports to redirect: annotation ``extproc.io/redirect-ports`` ("80,443,8080") or the
    settings' ``redirect_ports``; None when the annotation is not a list of TCP ports."""
    raw = annotations.get(ANNOTATION_REDIRECT_PORTS)
    if raw is None:
        return settings.redirect_ports
    ports: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 65536:
            return None
        if int(part) not in ports:
            ports.append(int(part))
    return tuple(ports) or None


def redirect_script(settings: InjectSettings, ports: Sequence[int]) -> str:
    """The shell script of the redirect init container (also run as-is by the netns test).

    IPv4: outbound TCP to ``ports`` is NATed to Envoy's plain-HTTP listener. IPv6: Envoy
    listens on 127.0.0.1 only, so the same connections are refused (TCP reset: clients fall
    back to IPv4 at once) rather than redirected to a port nothing listens on. The sidecar
    uid's own connections, and loopback, are left alone. ``-w``: wait for the xtables lock
    (in ``/run``, an emptyDir) instead of failing.
    """
    uids = sorted({settings.envoy_uid, settings.extproc_uid})
    groups = [ports[i : i + _MULTIPORT_MAX] for i in range(0, len(ports), _MULTIPORT_MAX)]
    v4 = ["iptables -w -t nat -N EXTPROC_OUTPUT"]
    v6 = ["ip6tables -w -N EXTPROC_OUTPUT"]
    for uid in uids:
        v4.append(f"iptables -w -t nat -A EXTPROC_OUTPUT -m owner --uid-owner {uid} -j RETURN")
        v6.append(f"ip6tables -w -A EXTPROC_OUTPUT -m owner --uid-owner {uid} -j RETURN")
    v4.append("iptables -w -t nat -A EXTPROC_OUTPUT -d 127.0.0.0/8 -j RETURN")
    v6.append("ip6tables -w -A EXTPROC_OUTPUT -d ::1/128 -j RETURN")
    for group in groups:
        dports = ",".join(str(p) for p in group)
        v4.append(
            f"iptables -w -t nat -A EXTPROC_OUTPUT -p tcp -m multiport --dports {dports}"
            f" -j REDIRECT --to-ports {settings.envoy_port}"
        )
        v6.append(
            f"ip6tables -w -A EXTPROC_OUTPUT -p tcp -m multiport --dports {dports}"
            " -j REJECT --reject-with tcp-reset"
        )
    v4.append("iptables -w -t nat -A OUTPUT -p tcp -j EXTPROC_OUTPUT")
    v6.append("ip6tables -w -A OUTPUT -p tcp -j EXTPROC_OUTPUT")
    lines = ["set -eu", *v4]
    # Fail closed: a pod with IPv6 whose ip6tables rules cannot be installed does not start.
    lines.append("if [ -e /proc/net/if_inet6 ]; then")
    lines += [f"  {cmd}" for cmd in v6]
    lines.append("fi")
    return "\n".join(lines) + "\n"


def _redirect_container(settings: InjectSettings, ports: Sequence[int]) -> dict[str, Any]:
    return {
        "name": REDIRECT_CONTAINER,
        "image": settings.redirect_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["sh", "-c", redirect_script(settings, ports)],
        "resources": _resources(settings, "redirect"),
        # legacy iptables takes its lock in /run/xtables.lock; the root file system is read-only.
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/run", "subPath": "redirect"}],
        "securityContext": {
            "runAsNonRoot": False,
            "runAsUser": 0,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _volumes(settings: InjectSettings) -> list[dict[str, Any]]:
    token = {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": settings.token_audience,
                        "expirationSeconds": settings.token_expiration_seconds,
                        "path": "token",
                    }
                }
            ]
        },
    }
    out: list[dict[str, Any]] = []
    if settings.mode == "sidecar":
        out += [
            {"name": CONFIG_VOLUME, "configMap": {"name": settings.config_map}},
            {
                "name": PROVIDERS_VOLUME,
                # kubelet writes Secret files root:root (root:fsGroup with a pod fsGroup,
                # which would also re-own the app's volumes): 0444 lets the sidecar uid
                # read them. Only the ext_proc container mounts this volume.
                "secret": {"secretName": settings.provider_secret, "defaultMode": 0o444},
            },
            {
                "name": KUBE_API_VOLUME,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ]
                },
            },
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
            private_volume(),
        ]
    out.append(token)
    if settings.ca_bundle is not None:
        out.append({"name": CA_VOLUME, "configMap": {"name": settings.ca_bundle.config_map}})
    return out


def _app_env(settings: InjectSettings) -> list[dict[str, str]]:
    env = [{"name": "EXTPROC_GATEWAY_URL", "value": settings.gateway_url}]
    env += [{"name": k, "value": settings.gateway_url + v} for k, v in sorted(settings.routes.items())]
    env.append({"name": "EXTPROC_TOKEN_FILE", "value": TOKEN_FILE})
    if settings.ca_bundle is not None:
        bundle = f"{CA_DIR}/{settings.ca_bundle.key}"
        env += [
            {"name": n, "value": bundle}
            for n in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
        ]
    return env


def _app_mounts(settings: InjectSettings) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]
    if settings.ca_bundle is not None:
        mounts.append({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True})
    return mounts


def _injected_names(settings: InjectSettings, redirect: bool) -> list[str]:
    if settings.mode != "sidecar":
        return []
    return ([REDIRECT_CONTAINER] if redirect else []) + [ENVOY_CONTAINER, EXTPROC_CONTAINER]


def _already_injected(spec: Mapping[str, Any], settings: InjectSettings) -> bool:
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    if TOKEN_VOLUME not in volumes:
        return False
    if settings.mode == "sidecar":
        inits = {c.get("name") for c in spec.get("initContainers") or []}
        return {ENVOY_CONTAINER, EXTPROC_CONTAINER} <= inits
    return True


def pod_patch(pod: Mapping[str, Any], namespace: str, settings: InjectSettings) -> Outcome:
    """Decide whether to inject ``pod`` and build the JSON Patch (operations in order)."""
    out = Outcome()
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    spec: Mapping[str, Any] = pod["spec"]

    if namespace == settings.own_namespace:
        out.skipped = f"namespace {namespace} is the injector's own"
        return out
    if annotations.get(ANNOTATION_INJECT) == "false":
        out.skipped = f"opted out by annotation {ANNOTATION_INJECT}"
        return out
    if labels.get(LABEL_INJECT) == "disabled":
        out.skipped = f"opted out by label {LABEL_INJECT}"
        return out
    if spec.get("hostNetwork") is True:
        out.skipped = "hostNetwork pod: the sidecar ports would collide on the node"
        out.warnings.append(
            f'extproc: not injected into a hostNetwork pod; set annotation {ANNOTATION_INJECT}: "false" '
            "to opt out explicitly"
        )
        return out
    if _already_injected(spec, settings):
        out.skipped = "already injected"
        return out

    redirect = annotations.get(ANNOTATION_REDIRECT) == "true"
    if redirect and settings.mode != "sidecar":
        out.warnings.append(f"extproc: {ANNOTATION_REDIRECT} is ignored in gateway mode")
        redirect = False
    ports = redirect_ports(annotations, settings)
    if redirect and ports is None:
        # Not injected: the validating policy then refuses the pod, which is the fail-closed answer.
        out.skipped = f"invalid annotation {ANNOTATION_REDIRECT_PORTS}"
        out.warnings.append(
            f"extproc: not injected, annotation {ANNOTATION_REDIRECT_PORTS} must be a comma-separated"
            " list of TCP ports"
        )
        return out

    containers: list[dict[str, Any]] = spec["containers"]
    init_containers: list[dict[str, Any]] | None = spec.get("initContainers")
    volumes: list[dict[str, Any]] | None = spec.get("volumes")

    # Conflicts leave the pod alone: a half-injected pod is worse than none (the
    # validating policy then refuses it with a clear message).
    new_volumes = _volumes(settings)
    taken = {str(v.get("name")) for v in volumes or []}
    clash = sorted(taken & {v["name"] for v in new_volumes})
    names = {str(c["name"]) for c in containers + (init_containers or [])}
    clash += sorted(names & set(_injected_names(settings, redirect)))
    if settings.mode == "sidecar":
        for c in containers + (init_containers or []):
            for p in c.get("ports") or []:
                if p.get("containerPort") in settings.reserved_ports:
                    clash.append(f"{c['name']} port {p.get('containerPort')}")
    mounts = _app_mounts(settings)
    mount_paths = {m["mountPath"] for m in mounts}
    for c in containers + (init_containers or []):
        for m in c.get("volumeMounts") or []:
            if m.get("mountPath") in mount_paths:
                clash.append(f"{c['name']} mountPath {m.get('mountPath')}")
    if clash:
        out.skipped = "conflict: " + ", ".join(str(x) for x in clash)
        out.warnings.append(f"extproc: not injected, the pod already uses {', '.join(str(x) for x in clash)}")
        return out

    ops = out.patch
    env = _app_env(settings)
    # 1. app containers first, while the indices of existing init containers are unshifted.
    for key, items in (("containers", containers), ("initContainers", init_containers or [])):
        for i, c in enumerate(items):
            base = f"/spec/{key}/{i}"
            existing = c.get("env")
            if existing is None:
                ops.append({"op": "add", "path": f"{base}/env", "value": env})
            else:
                index = {e.get("name"): j for j, e in enumerate(existing)}
                for var in env:
                    if var["name"] in index:
                        # Injected values win: the gateway is the point of injection.
                        ops.append(
                            {"op": "replace", "path": f"{base}/env/{index[var['name']]}", "value": var}
                        )
                    else:
                        ops.append({"op": "add", "path": f"{base}/env/-", "value": var})
            if c.get("volumeMounts") is None:
                ops.append({"op": "add", "path": f"{base}/volumeMounts", "value": mounts})
            else:
                ops += [{"op": "add", "path": f"{base}/volumeMounts/-", "value": m} for m in mounts]

    # 2. init containers: redirect, Envoy, ext_proc in front of the pod's own.
    new_inits = ([_redirect_container(settings, ports or ())] if redirect else []) + (
        _sidecars(settings) if settings.mode == "sidecar" else []
    )
    if new_inits:
        if init_containers is None:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": new_inits})
        else:
            ops += [
                {"op": "add", "path": f"/spec/initContainers/{i}", "value": c}
                for i, c in enumerate(new_inits)
            ]

    # 3. volumes
    if volumes is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})
    else:
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes]

    # 4. the record of what was injected
    record = {
        "version": __version__,
        "mode": settings.mode,
        "initContainers": [c["name"] for c in new_inits],
        "volumes": [v["name"] for v in new_volumes],
        "env": [e["name"] for e in env],
        "redirect": redirect,
    }
    value = json.dumps(record, separators=(",", ":"), sort_keys=True)
    if "annotations" not in metadata or metadata.get("annotations") is None:
        if "metadata" not in pod:
            ops.append({"op": "add", "path": "/metadata", "value": {}})
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION_INJECTED: value}})
    else:
        ops.append(
            {
                "op": "add",
                "path": f"/metadata/annotations/{escape_pointer(ANNOTATION_INJECTED)}",
                "value": value,
            }
        )
    return out


# ---------------------------------------------------------------------------
# the AdmissionReview in, the AdmissionReview out


def _response(api_version: str, uid: str, allowed: bool, **extra: Any) -> dict[str, Any]:
    resp: dict[str, Any] = {"uid": uid, "allowed": allowed}
    resp.update({k: v for k, v in extra.items() if v})
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": resp}


def mutate(review: Any, settings: InjectSettings) -> dict[str, Any]:
    """Answer a parsed AdmissionReview. Raises ``ReviewError`` (with ``uid=None``) only when
    there is no uid to answer to; every other problem becomes a response."""
    try:
        r = validate_review(review)
    except ReviewError as exc:
        if exc.uid is None:
            raise
        allowed = settings.failure_policy == "Ignore"
        return _response(
            exc.api_version or ADMISSION_VERSIONS[0],
            exc.uid,
            allowed,
            status={"code": 400, "message": f"extproc injector: {exc.message}"},
            warnings=[f"extproc injector: {exc.message}"] if allowed else None,
        )
    if r.operation != "CREATE" or r.pod is None:
        return _response(
            r.api_version, r.uid, True, auditAnnotations={"injection": f"skipped: {r.operation}"}
        )
    refusal = _boundary(r.pod, r.namespace, settings)
    if refusal is not None and not refusal[0]:
        return _response(r.api_version, r.uid, False, status={"code": 403, "message": refusal[1]},
                         auditAnnotations={"injection": "refused: weak boundary"})
    outcome = pod_patch(r.pod, r.namespace, settings)
    if refusal is not None:
        outcome.warnings.append(refusal[1])
    if outcome.skipped is not None:
        return _response(
            r.api_version,
            r.uid,
            True,
            auditAnnotations={"injection": f"skipped: {outcome.skipped}"},
            warnings=outcome.warnings,
        )
    patch = base64.b64encode(json.dumps(outcome.patch, separators=(",", ":")).encode()).decode()
    return _response(
        r.api_version,
        r.uid,
        True,
        patchType="JSONPatch",
        patch=patch,
        auditAnnotations={"injection": f"injected: {settings.mode}"},
        warnings=outcome.warnings,
    )


def _boundary(pod: Mapping[str, Any], namespace: str, settings: InjectSettings) -> tuple[bool, str] | None:
    """None when the pod keeps the app/sidecar boundary (or is not governed at all: opted
    out, or the injector's own namespace); else (allowed anyway?, the message)."""
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    if (namespace == settings.own_namespace or annotations.get(ANNOTATION_INJECT) == "false"
            or labels.get(LABEL_INJECT) == "disabled"):
        return None
    problems = boundary_problems(pod, settings)
    if not problems:
        return None
    if annotations.get(ANNOTATION_ALLOW_WEAK) == "true":
        return True, (f"extproc: this pod weakens the boundary between the app and the gateway "
                      f"({'; '.join(problems)}); allowed by annotation {ANNOTATION_ALLOW_WEAK}")
    return False, (f"extproc: refused, this pod spec would let the app reach the gateway's credentials or "
                   f"controls: {'; '.join(problems)}. Fix the spec, opt the pod out "
                   f'({ANNOTATION_INJECT}: "false"), or accept the risk with {ANNOTATION_ALLOW_WEAK}: "true"')


def handle_admission(body: bytes, settings: InjectSettings) -> tuple[int, dict[str, Any]]:
    """The whole ``/mutate`` endpoint minus HTTP: raw body -> (status, JSON document)."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return 400, {"error": f"request body is not JSON: {exc}"}
    try:
        return 200, mutate(review, settings)
    except ReviewError as exc:
        return 400, {"error": exc.message}
