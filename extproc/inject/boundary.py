"""The trust boundary between an app and its sidecars, as the injector enforces it (pure).

Inside an injected pod the ext_proc server holds the provider keys and answers whoever speaks
ext_proc to it; Envoy's admin interface can stop or reconfigure Envoy. So:

* the two sidecars talk over unix sockets in a private ``emptyDir`` (``extproc-private``)
  mounted into those two containers only: the app container cannot see the path;
* the ext_proc socket is mode 0660, owned by the ext_proc uid with Envoy's gid as its group
  (the ext_proc container runs with that group), and ext_proc accepts only Envoy's uid as
  its peer (``SO_PEERCRED``; ``EXTPROC_ENVOY_UID`` tells it which);
* pod specs that dissolve that boundary are refused: a shared process namespace (the app
  could reach the sidecars' files through ``/proc/<pid>/root`` and their memory where
  ptrace rules allow), the host's network (loopback listeners shared with the node), an app
  container running as a sidecar's uid or group, a privileged app container, or one with
  ``CAP_SYS_PTRACE``. The annotation ``extproc.io/allow-weak-boundary: "true"`` downgrades
  the refusal to admission warnings, for a namespace admin who accepts the risk knowingly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.inject.settings import InjectSettings

__all__ = [
    "ANNOTATION_ALLOW_WEAK",
    "PRIVATE_DIR",
    "PRIVATE_VOLUME",
    "boundary_problems",
    "private_volume",
    "seal_sidecars",
]

ANNOTATION_ALLOW_WEAK = "extproc.io/allow-weak-boundary"
PRIVATE_VOLUME = "extproc-private"
#: Where the sidecars' sockets live (the shipped extproc.yaml names these paths).
PRIVATE_DIR = "/var/run/extproc/private"

#: Names of the containers the injector itself adds: never "app" containers.
_SIDECARS = frozenset({"extproc-envoy", "extproc-server", "extproc-redirect"})
_PTRACE = frozenset({"SYS_PTRACE", "CAP_SYS_PTRACE", "ALL"})


def private_volume() -> dict[str, Any]:
    # Memory-backed: two sockets, nothing written; never on the node's disk.
    return {"name": PRIVATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}


def seal_sidecars(envoy: dict[str, Any], extproc: dict[str, Any], settings: InjectSettings) -> None:
    """Mount the private volume into the two sidecars (and only them), give the ext_proc
    container Envoy's group (the socket's group) and tell it Envoy's uid (its only peer)."""
    for c in (envoy, extproc):
        c.setdefault("volumeMounts", []).append({"name": PRIVATE_VOLUME, "mountPath": PRIVATE_DIR})
    extproc["securityContext"]["runAsGroup"] = settings.envoy_uid
    extproc.setdefault("env", []).append({"name": "EXTPROC_ENVOY_UID", "value": str(settings.envoy_uid)})


def _app_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for key in ("containers", "initContainers") for c in spec.get(key) or []
            if isinstance(c, Mapping) and c.get("name") not in _SIDECARS]


def boundary_problems(pod: Mapping[str, Any], settings: InjectSettings) -> list[str]:
    """Why this pod spec would let the app reach the sidecars' credentials or controls
    (empty: nothing found). Gateway mode has no sidecars: only ``hostNetwork`` matters
    there (it takes the pod out of the NetworkPolicy that confines it to the gateway)."""
    spec: Mapping[str, Any] = pod.get("spec") or {}
    problems: list[str] = []
    if spec.get("hostNetwork") is True:
        problems.append("hostNetwork: true (the pod's loopback listeners would be the node's, and "
                        "NetworkPolicy does not apply)")
    if settings.mode != "sidecar":
        return problems
    if spec.get("shareProcessNamespace") is True:
        problems.append("shareProcessNamespace: true (the app could reach the sidecars' files and "
                        "memory through /proc)")
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    sidecar_uids = {settings.envoy_uid, settings.extproc_uid}
    socket_gid = settings.envoy_uid  # Envoy runs with gid = its uid; the socket's group
    if pod_sc.get("runAsUser") in sidecar_uids:
        problems.append(f"securityContext.runAsUser: {pod_sc['runAsUser']} is a sidecar's uid")
    if pod_sc.get("runAsGroup") == socket_gid:
        problems.append(f"securityContext.runAsGroup: {socket_gid} is the sidecar socket's group")
    if pod_sc.get("fsGroup") == socket_gid or socket_gid in (pod_sc.get("supplementalGroups") or []):
        problems.append(f"securityContext gives every container group {socket_gid}, the sidecar socket's group")
    for c in _app_containers(spec):
        sc: Mapping[str, Any] = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("runAsUser") in sidecar_uids:
            problems.append(f"container {name} runs as uid {sc['runAsUser']}, a sidecar's uid")
        if sc.get("runAsGroup") == socket_gid:
            problems.append(f"container {name} runs as group {socket_gid}, the sidecar socket's group")
        if sc.get("privileged") is True:
            problems.append(f"container {name} is privileged")
        caps: Mapping[str, Any] = sc.get("capabilities") or {}
        added = {str(x).upper() for x in caps.get("add") or []}
        if added & _PTRACE:
            problems.append(f"container {name} adds {', '.join(sorted(added & _PTRACE))} (can trace other processes)")
    return problems
