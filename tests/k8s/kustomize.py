"""A small, strict kustomize renderer for the subset k8s/ uses (no kustomize binary here).

Supported, with kustomize's semantics:

* ``resources``: files (multi-document YAML) and directories holding a kustomization.yaml,
  with kustomize's default load restriction (files must live under the kustomization root);
* ``namespace``: set on namespaced objects; cluster-scoped kinds are left alone, and
  ``subjects[].namespace`` of ServiceAccount subjects and webhook ``clientConfig.service``
  namespaces are set too (as kustomize's namespace transformer does);
* ``labels`` with ``pairs`` (``includeSelectors``/``includeTemplates`` false only);
* ``configMapGenerator`` / ``secretGenerator`` with ``files`` (``key=path`` or ``path``) and
  ``literals``, ``behavior`` create/replace/merge, and ``generatorOptions`` — only with
  ``disableNameSuffixHash: true`` (the hash suffix is refused, not imitated);
* ``patches`` with ``target`` (kind/name/namespace/group/version) and an inline ``patch``
  or ``path``: a YAML list is an RFC 6902 JSON patch, a mapping a strategic merge patch
  (lists of containers/volumes/env/ports/volumeMounts merged by their key).

Anything else in a kustomization is an error, so the renderer can never silently differ
from ``kustomize build`` by ignoring a field.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}

_ALLOWED = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
}

_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "topologySpreadConstraints": "topologyKey",
}


class KustomizeError(ValueError):
    pass


def _id(obj: dict[str, Any]) -> tuple[str, str, str]:
    md = obj.get("metadata", {})
    return obj["kind"], md.get("name", ""), md.get("namespace", "")


def _load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object")
    return docs


def _inside(root: Path, p: Path) -> Path:
    resolved = p.resolve()
    if root.resolve() not in (resolved, *resolved.parents):
        raise KustomizeError(f"{p}: outside the kustomization root {root} (load restriction)")
    return resolved


def _generated(kind: str, spec: dict[str, Any], root: Path) -> dict[str, Any]:
    unknown = set(spec) - {"name", "files", "literals", "behavior", "type"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported generator keys {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = _inside(root, root / rel).read_text()
    for lit in spec.get("literals", []):
        k, _, v = lit.partition("=")
        data[k] = v
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                merged = strategic_merge(out[k], v, k)
                if merged is None:
                    out.pop(k)
                else:
                    out[k] = merged
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in _MERGE_KEYS:
        mk = _MERGE_KEYS[key]
        out_list = copy.deepcopy(base)
        for item in patch:
            idx = next((i for i, b in enumerate(out_list) if b.get(mk) == item.get(mk)), None)
            if idx is None:
                out_list.append(copy.deepcopy(item))
            else:
                merged = strategic_merge(out_list[idx], item, "")
                if merged is None:
                    del out_list[idx]
                else:
                    out_list[idx] = merged
        return out_list
    return copy.deepcopy(patch)


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "namespace", "group", "version"}
    if unknown:
        raise KustomizeError(f"unsupported patch target keys {sorted(unknown)}")
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {
        "kind": obj["kind"],
        "name": obj["metadata"].get("name"),
        "namespace": obj["metadata"].get("namespace", ""),
        "group": group,
        "version": version,
    }
    return all(checks[k] == v for k, v in target.items())


def build(directory: str | Path) -> list[dict[str, Any]]:
    """Render a kustomization directory to its list of objects (kustomize's order: as loaded)."""
    root = Path(directory)
    kfile = root / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - _ALLOWED
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: only kind Kustomization is supported")

    objects: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        p = root / res
        if p.is_dir():
            objects += build(p)  # directories may live outside the root
        else:
            objects += _load_docs(_inside(root, p))

    opts = k.get("generatorOptions", {})
    if set(opts) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{kfile}: unsupported generatorOptions {sorted(opts)}")
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(field, []):
            gen = _generated(kind, spec, root)
            behavior = spec.get("behavior", "create")
            ns = k.get("namespace", "")
            existing = [
                i
                for i, o in enumerate(objects)
                if o["kind"] == kind
                and o["metadata"]["name"] == spec["name"]
                and o["metadata"].get("namespace", ns) == ns
            ]
            if behavior == "create":
                if not opts.get("disableNameSuffixHash"):
                    raise KustomizeError(f"{kfile}: name suffix hashes are not implemented; disable them")
                if existing:
                    raise KustomizeError(f"{kfile}: {kind} {spec['name']} already exists (use behavior)")
                objects.append(gen)
            elif behavior in ("replace", "merge"):
                if len(existing) != 1:
                    raise KustomizeError(f"{kfile}: {behavior}: no single {kind} {spec['name']} to act on")
                old = objects[existing[0]]
                new = copy.deepcopy(old)
                new["data"] = gen["data"] if behavior == "replace" else {**old.get("data", {}), **gen["data"]}
                objects[existing[0]] = new
            else:
                raise KustomizeError(f"{kfile}: unknown behavior {behavior!r}")

    # kustomize's built-in transformer order: patches, then namespace, then labels.
    for p in k.get("patches", []):
        if set(p) - {"target", "patch", "path"} or ("patch" in p) == ("path" in p):
            raise KustomizeError(f"{kfile}: a patch needs exactly one of patch/path (and an optional target)")
        text = p["patch"] if "patch" in p else _inside(root, root / p["path"]).read_text()
        body = yaml.safe_load(text)
        target = p.get("target")
        if isinstance(body, list):
            if target is None:
                raise KustomizeError(f"{kfile}: a JSON 6902 patch needs a target")
            hits = [i for i, o in enumerate(objects) if _matches(o, target)]
            for i in hits:
                objects[i] = jsonpatch.apply_patch(objects[i], body)
        elif isinstance(body, dict):
            if target is None:
                target = {"kind": body["kind"], "name": body["metadata"]["name"]}
            hits = [i for i, o in enumerate(objects) if _matches(o, target)]
            for i in hits:
                objects[i] = strategic_merge(objects[i], body)
        else:
            raise KustomizeError(f"{kfile}: a patch must be a list (JSON 6902) or a mapping")
        if not hits:
            raise KustomizeError(f"{kfile}: patch target {target} matched nothing")

    ns = k.get("namespace")
    if ns:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
            for s in o.get("subjects", []) or []:
                if s.get("kind") == "ServiceAccount":
                    s["namespace"] = ns
            for w in o.get("webhooks", []) or []:
                svc = w.get("clientConfig", {}).get("service")
                if svc is not None:
                    svc["namespace"] = ns

    for entry in k.get("labels", []):
        if (
            entry.get("includeSelectors")
            or entry.get("includeTemplates")
            or set(entry)
            - {
                "pairs",
                "includeSelectors",
                "includeTemplates",
            }
        ):
            raise KustomizeError(f"{kfile}: only labels with pairs (no selectors/templates) are supported")
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(entry["pairs"])

    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        if _id(o) in seen:
            raise KustomizeError(f"{kfile}: duplicate object {_id(o)}")
        seen.add(_id(o))
    return objects


def referenced_files(directory: str | Path) -> set[Path]:
    """Every file a kustomization (recursively) reads: resources, generator inputs, patches."""
    root = Path(directory)
    k = yaml.safe_load((root / "kustomization.yaml").read_text()) or {}
    out = {(root / "kustomization.yaml").resolve()}
    for res in k.get("resources", []):
        p = root / res
        out |= referenced_files(p) if p.is_dir() else {p.resolve()}
    for field in ("configMapGenerator", "secretGenerator"):
        for spec in k.get(field, []):
            for entry in spec.get("files", []):
                out.add((root / entry.partition("=")[2 if "=" in entry else 0]).resolve())
    for p in k.get("patches", []):
        if "path" in p:
            out.add((root / p["path"]).resolve())
    return out
