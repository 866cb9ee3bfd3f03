"""A stand-in for ``kubectl`` and the API server behind it, for testing k8s/quickstart.sh.

It keeps the cluster's objects in a JSON file (``FAKE_KUBE_STATE``) and enforces what the
API server would: every applied object validates strictly against the Kubernetes 1.34
schema (cert-manager kinds against their field lists, and only once the CRDs exist), a
namespaced object needs its namespace, a Deployment rollout needs the ConfigMaps and
Secrets its pods mount, a namespace is labelled for injection only once its ConfigMap and
provider-keys Secret are there. Only the commands the quickstart uses are implemented;
anything else exits 3 with a message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from extproc.inject.patch import apply_json_patch
from tests.k8s.kustomize import CLUSTER_SCOPED, build

CERT_MANAGER = {
    "Issuer": {"selfSigned", "ca"},
    "Certificate": {"isCA", "commonName", "secretName", "duration", "renewBefore", "privateKey", "issuerRef",
                    "dnsNames"},
}


class Refused(Exception):
    pass


def validate(obj: dict[str, Any], state: dict[str, Any]) -> None:
    kind = obj.get("kind", "")
    if str(obj.get("apiVersion", "")).startswith("cert-manager.io/"):
        if not state.get("cert_manager"):
            raise Refused(f'no matches for kind "{kind}" in version "{obj["apiVersion"]}" (cert-manager not installed)')
        extra = set(obj.get("spec", {})) - CERT_MANAGER[kind]
        if extra or set(obj) - {"apiVersion", "kind", "metadata", "spec"}:
            raise Refused(f"{kind}: unknown fields {sorted(extra)}")
        return
    import kubernetes_validate  # type: ignore[import-untyped]  # slow to import: only where needed

    try:
        kubernetes_validate.validate(obj, "1.34", strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise Refused(f"invalid object {key(obj)}: {exc}") from None


def key(obj: dict[str, Any]) -> str:
    ns = "" if obj["kind"] in CLUSTER_SCOPED else obj["metadata"].get("namespace", "")
    return f"{obj['kind']}/{ns}/{obj['metadata']['name']}"


def store(state: dict[str, Any], obj: dict[str, Any], ns: str | None) -> None:
    if obj["kind"] not in CLUSTER_SCOPED:
        meta = obj.setdefault("metadata", {})
        if ns and meta.get("namespace") not in (None, ns):
            raise Refused(f"the namespace from the object ({meta['namespace']}) does not match -n {ns}")
        meta.setdefault("namespace", ns or "default")
        if f"Namespace//{meta['namespace']}" not in state["objects"]:
            raise Refused(f'namespaces "{meta["namespace"]}" not found')
    validate(obj, state)
    state["objects"][key(obj)] = obj
    state["log"].append(key(obj))


def get(state: dict[str, Any], kind: str, ns: str, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state["objects"].get(f"{kind}/{ns}/{name}")
    return found


def jsonpath(obj: Any, expr: str) -> str:
    m = re.fullmatch(r"\{(.*)\}", expr)
    assert m, expr
    path = m.group(1)
    if path == ".items[*].metadata.name":
        return " ".join(o["metadata"]["name"] for o in obj)
    cur = obj
    for part in re.findall(r"\.((?:[^.\\]|\\.)+)", path):
        cur = cur.get(part.replace("\\.", "."), "") if isinstance(cur, dict) else ""
    return str(cur)


def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    pos: list[str] = []
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts.setdefault(k, []).append(v)
        elif a in ("-n", "--namespace", "-f", "-k", "-o", "-p", "-l", "--type", "--timeout", "--for", "--raw"):
            opts.setdefault(a.lstrip("-"), []).append(argv[i + 1])
            i += 1
        elif a.startswith("--"):
            opts.setdefault(a[2:], []).append("")
        else:
            pos.append(a)
        i += 1
    if "namespace" in opts:
        opts.setdefault("n", []).extend(opts.pop("namespace"))
    return pos, opts


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def file_arg(spec: str) -> tuple[str, bytes]:
    k, _, path = spec.partition("=")
    data = sys.stdin.buffer.read() if path == "/dev/stdin" else Path(path).read_bytes()
    return k, data


def run(argv: list[str], state: dict[str, Any]) -> int:
    pos, opts = parse(argv)
    ns = (opts.get("n") or [None])[-1]
    verb = pos[0] if pos else ""
    dry = opts.get("dry-run") == ["client"]
    out = (opts.get("o") or [""])[-1]
    if verb == "apply":
        if "k" in opts:
            objs = build(Path(opts["k"][0]))
        else:
            src = opts["f"][0]
            text = sys.stdin.read() if src == "-" else Path(src).read_text()
            objs = [d for d in yaml.safe_load_all(text) if d]
        for obj in objs:
            store(state, obj, ns)
        return 0
    if verb == "create":
        what = pos[1]
        if what == "namespace":
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": pos[2]}}
        elif what == "secret" and pos[2] == "tls":
            obj = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": pos[3]},
                   "data": {"tls.crt": b64(Path(opts["cert"][0]).read_bytes()),
                            "tls.key": b64(Path(opts["key"][0]).read_bytes())}}
        elif what == "secret" and pos[2] == "generic":
            obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": pos[3]},
                   "data": {k: b64(v) for k, v in map(file_arg, opts.get("from-file", []))}}
        elif what == "configmap":
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": pos[2]},
                   "data": {k: v.decode() for k, v in map(file_arg, opts.get("from-file", []))}}
        else:
            raise Refused(f"create {what}: not implemented")
        if ns and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = ns
        if dry:
            assert out == "yaml"
            emit(obj)
            return 0
        if key({**obj, "metadata": {**obj["metadata"], "namespace": ns or "default"}}) in state["objects"]:
            raise Refused(f"{obj['kind']} {pos[-1]} already exists")
        store(state, obj, ns)
        return 0
    if verb == "get":
        if "raw" in opts:
            if opts["raw"][0] == "/.well-known/openid-configuration":
                issuer = os.environ.get("FAKE_ISSUER", "https://kubernetes.default.svc.cluster.local")
                print(json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/openid/v1/jwks"}))
                return 0
            return 1
        kind = {"crd": "CustomResourceDefinition", "secret": "Secret", "configmap": "ConfigMap",
                "namespace": "Namespace"}[pos[1]]
        if kind == "CustomResourceDefinition":
            return 0 if state.get("cert_manager") else 1
        if kind == "Namespace" and "l" in opts:
            k, v = opts["l"][0].split("=")
            items = [o for o in state["objects"].values()
                     if o["kind"] == "Namespace" and o["metadata"].get("labels", {}).get(k) == v]
            print(jsonpath(items, out.split("=", 1)[1]))
            return 0
        found = get(state, kind, ns or "default", pos[2])
        if found is None:
            print(f'Error from server (NotFound): {pos[1]} "{pos[2]}" not found', file=sys.stderr)
            return 1
        if out.startswith("jsonpath="):
            value = jsonpath(found, out.split("=", 1)[1])
            sys.stdout.write(value)
        return 0
    if verb == "patch":
        kind = {"mutatingwebhookconfiguration": "MutatingWebhookConfiguration"}[pos[1]]
        found = get(state, kind, "", pos[2])
        if found is None:
            raise Refused(f"{pos[1]} {pos[2]} not found")
        patched = apply_json_patch(found, json.loads(opts["p"][0]))
        validate(patched, state)
        state["objects"][key(patched)] = patched
        state["log"].append("patch " + key(patched))
        return 0
    if verb == "wait":
        kind, name = pos[1].split("/")
        if get(state, kind.capitalize(), ns or "default", name) is None:
            raise Refused(f"{pos[1]} not found")
        # cert-manager would now have written the Secret.
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                  "metadata": {"name": "extproc-injector-tls", "namespace": ns},
                  "data": {"tls.crt": b64(b"cert"), "tls.key": b64(b"key"), "ca.crt": b64(b"ca")}}
        store(state, secret, ns)
        return 0
    if verb == "rollout":
        kind, name = pos[2].split("/")
        dep = get(state, "Deployment", ns or "default", name)
        if dep is None:
            raise Refused(f"deployments {name} not found")
        if pos[1] == "status":
            for v in dep["spec"]["template"]["spec"].get("volumes", []):
                for ref_kind, field, ref in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
                    if field in v and get(state, ref_kind, dep["metadata"]["namespace"], v[field][ref]) is None:
                        raise Refused(f"deployment {name} never becomes ready: {ref_kind} {v[field][ref]} is missing")
            state["log"].append(f"ready {key(dep)}")
        else:
            state["log"].append(f"restart {key(dep)}")
        return 0
    if verb == "label":
        assert pos[1] == "namespace"
        target = get(state, "Namespace", "", pos[2])
        if target is None:
            raise Refused(f"namespaces {pos[2]} not found")
        k, v = pos[3].split("=")
        if k == "extproc.io/inject":
            for kind, name in (("ConfigMap", "extproc-config"), ("Secret", "extproc-provider-keys")):
                if get(state, kind, pos[2], name) is None:
                    raise Refused(f"labelled before {kind} {name} exists in {pos[2]}: its pods would not start")
        target["metadata"].setdefault("labels", {})[k] = v
        state["log"].append(f"label {key(target)} {k}={v}")
        return 0
    raise Refused(f"kubectl {' '.join(argv)}: not implemented by the fake")


def main() -> int:
    path = Path(os.environ["FAKE_KUBE_STATE"])
    # Pipelines (`kubectl create --dry-run ... | kubectl apply -f -`) run two of these at
    # once: only commands that change the cluster write, atomically.
    before = path.read_text() if path.exists() else json.dumps({"objects": {}, "log": []})
    state = json.loads(before)
    try:
        rc = run(sys.argv[1:], state)
    except Refused as exc:
        print(f"Error from server: {exc}", file=sys.stderr)
        rc = 1
    after = json.dumps(state)
    if after != before:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(after)
        tmp.replace(path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
