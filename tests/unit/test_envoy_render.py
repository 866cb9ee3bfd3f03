"""Every Envoy config in envoy/ is a fresh render, and passes the real `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extproc.config.envoy import dump_yaml, render_envoy
from extproc.config.load import load_config
from extproc.dev.keys import ensure_dev_tls
from extproc.dev.procs import validate_envoy_config

REPO = Path(__file__).resolve().parents[2]
#: committed Envoy config -> the extproc config it is rendered from
RENDERED = {REPO / "envoy" / "envoy.yaml": REPO / "examples" / "extproc.yaml"}


def test_every_config_in_envoy_dir_is_known() -> None:
    assert set(REPO.joinpath("envoy").glob("*.yaml")) == set(RENDERED)
    assert not (REPO / "envoy" / "__init__.py").exists()


@pytest.mark.parametrize("envoy_yaml", sorted(RENDERED), ids=lambda p: p.name)
def test_committed_config_is_fresh(envoy_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    src = RENDERED[envoy_yaml].relative_to(REPO)
    fresh = dump_yaml(load_config(src, env={}), dev_tls=False)
    assert envoy_yaml.read_text() == fresh, "stale: run `make render`"


@pytest.mark.parametrize("envoy_yaml", sorted(RENDERED), ids=lambda p: p.name)
def test_committed_config_validates_in_a_fresh_clone(envoy_yaml: Path, tmp_path: Path) -> None:
    """A copy in a directory with nothing else (no .run/, as in a fresh clone) loads."""
    clone = tmp_path / "clone"
    (clone / "envoy").mkdir(parents=True)
    copy = clone / "envoy" / envoy_yaml.name
    copy.write_text(envoy_yaml.read_text())
    ok, out = validate_envoy_config(copy, cwd=clone)
    assert ok, out
    assert not (clone / ".run").exists()


def test_the_dev_stack_render_keeps_its_tls_listener() -> None:
    cfg = load_config(REPO / "examples" / "extproc.yaml", env={})
    assert cfg.tls is not None and cfg.tls.generated
    names = [lst["name"] for lst in render_envoy(cfg)["staticResources"]["listeners"]]
    assert names == ["http", "https"]
    assert [lst["name"] for lst in render_envoy(cfg, dev_tls=False)["staticResources"]["listeners"]] == ["http"]


def _find(d: object, key: str) -> list[object]:
    found: list[object] = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(d, list):
        for v in d:
            found += _find(v, key)
    return found


def test_rendered_config_properties() -> None:
    cfg = load_config(REPO / "examples" / "extproc.yaml", env={})
    doc = render_envoy(cfg)
    (proc,) = {yaml.safe_dump(p) for p in _find(doc, "typedConfig")
               if isinstance(p, dict) and p.get("@type", "").endswith("ext_proc.v3.ExternalProcessor")}
    p = yaml.safe_load(proc)
    assert p.get("failureModeAllow", False) is False  # fail closed
    assert p["processingMode"]["responseBodyMode"] == "STREAMED"
    assert p["messageTimeout"] == "2s" and p["maxMessageTimeout"] == "600s"
    all_routes = _find(doc, "routes")[0]
    assert isinstance(all_routes, list)
    *routes, last = all_routes
    assert last["name"] == "no-route" and last["directResponse"]["status"] == 404  # everything else: JSON 404
    assert {r["name"] for r in routes} >= {"openai", "openai-exact"}
    assert all(r["requestHeadersToRemove"] == ["accept-encoding"] for r in routes)
    assert all(r["route"]["timeout"] == "0s" for r in routes)
    clusters = {c["name"]: c for c in doc["staticResources"]["clusters"]}
    tls = clusters["provider_openai"]["transportSocket"]["typedConfig"]
    assert tls["sni"] == "api.openai.com"
    vc = tls["commonTlsContext"]["validationContext"]
    assert vc["trustedCa"]["filename"] == "/etc/ssl/certs/ca-certificates.crt"
    assert vc["matchTypedSubjectAltNames"][0]["matcher"]["exact"] == "api.openai.com"
    assert "transportSocket" not in clusters["provider_demo"]  # plain-HTTP demo upstream


def test_every_example_renders_and_validates(tmp_path: Path) -> None:
    ensure_dev_tls(tmp_path / ".run/tls/gateway.crt", tmp_path / ".run/tls/gateway.key")
    for src in sorted((REPO / "examples").glob("*.yaml")):
        data = yaml.safe_load(src.read_text())
        if not isinstance(data, dict) or "providers" not in data:
            continue  # not an extproc configuration (e.g. a policy test-cases file)
        out = tmp_path / f"{src.stem}.envoy.yaml"
        out.write_text(dump_yaml(load_config(src, env={})))
        ok, msg = validate_envoy_config(out, cwd=tmp_path)
        assert ok, f"{src.name}: {msg}"


def test_paths_are_normalised_and_escaped_slashes_refused() -> None:
    doc = render_envoy(load_config(REPO / "examples" / "extproc.yaml", env={}))
    for hcm in _find(doc, "pathWithEscapedSlashesAction"):
        assert hcm == "REJECT_REQUEST"
    assert _find(doc, "normalizePath") == [True, True] and _find(doc, "mergeSlashes") == [True, True]
    assert len(_find(doc, "pathWithEscapedSlashesAction")) == 2  # both listeners


def test_ext_proc_runs_only_on_routed_requests() -> None:
    """Disabled in the filter chain, enabled on the virtual host: a codec error (no route yet)
    never opens an ext_proc stream, which would swallow Envoy's answer (envoyproxy/envoy#29440)."""
    doc = render_envoy(load_config(REPO / "examples" / "extproc.yaml", env={}))
    chain = _find(doc, "httpFilters")[0]
    assert isinstance(chain, list)
    filters = [f for f in chain if f["name"] == "envoy.filters.http.ext_proc"]
    assert [f.get("disabled") for f in filters] == [True]
    vhosts = _find(doc, "virtualHosts")[0]
    assert isinstance(vhosts, list)
    (vhost,) = vhosts
    assert "envoy.filters.http.ext_proc" in vhost["typedPerFilterConfig"]


def test_every_local_reply_has_a_documented_code() -> None:
    from extproc.config.envoy import LOCAL_REPLIES

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Errors"):readme.index("## Configuration reference")]
    for lr in LOCAL_REPLIES:
        assert f"`{lr.code}`" in table, f"{lr.code} is not in the README's error table"
        assert "ext_proc" not in lr.message and "gRPC" not in lr.message
    assert LOCAL_REPLIES[-1].when == "true"  # nothing Envoy says falls through unmapped


def test_envoy_never_keeps_the_clients_request_id() -> None:
    """The client's x-request-id is moved aside before Envoy's request-id logic, so Envoy's
    own id (and the gateway's, set by ext_proc) is never the caller's choice."""
    from extproc.config.envoy import CLIENT_REQUEST_ID_HEADER
    from extproc.datapath import machine

    assert CLIENT_REQUEST_ID_HEADER == machine.CLIENT_REQUEST_ID_HEADER
    doc = render_envoy(load_config(REPO / "examples" / "extproc.yaml", env={}))
    hcms = [h for h in _find(doc, "typedConfig")
            if isinstance(h, dict) and h.get("@type", "").endswith("HttpConnectionManager")]
    assert hcms
    for hcm in hcms:
        assert hcm.get("alwaysSetRequestIdInResponse", False) is False  # it would overwrite the gateway's id
        (early,) = hcm["earlyHeaderMutationExtensions"]
        steps = early["typedConfig"]["mutations"]
        assert steps[-1] == {"remove": "x-request-id"}
        assert steps[0] == {"remove": CLIENT_REQUEST_ID_HEADER}


def test_sidecar_internals_render_as_unix_sockets_and_a_read_only_probe(tmp_path: Path) -> None:
    from extproc.config.envoy import ENVOY_ADMIN_CLUSTER, EXT_PROC_CLUSTER, PROBE_PATHS, dump_yaml
    from extproc.config.model import parse_config

    data = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())
    data["listeners"].update(
        ext_proc={"address": f"unix:{tmp_path}/ext_proc.sock"},
        envoy_admin={"address": f"unix:{tmp_path}/admin.sock", "socket_mode": "0600"},
        envoy_probe={"address": "0.0.0.0", "port": 15021},
    )
    data["listeners"].pop("tls", None)
    cfg = parse_config(data, env={})
    doc = render_envoy(cfg)
    clusters = {c["name"]: c for c in doc["staticResources"]["clusters"]}
    ep = clusters[EXT_PROC_CLUSTER]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert ep == {"pipe": {"path": f"{tmp_path}/ext_proc.sock"}}
    admin_ep = clusters[ENVOY_ADMIN_CLUSTER]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    assert admin_ep["address"] == {"pipe": {"path": f"{tmp_path}/admin.sock"}}
    assert doc["admin"]["address"] == {"pipe": {"path": f"{tmp_path}/admin.sock", "mode": 0o600}}
    (probe,) = [li for li in doc["staticResources"]["listeners"] if li["name"] == "probe"]
    hcm = probe["filterChains"][0]["filters"][0]["typedConfig"]
    assert [f["name"] for f in hcm["httpFilters"]] == ["envoy.filters.http.router"]  # no ext_proc there
    routes = hcm["routeConfig"]["virtualHosts"][0]["routes"]
    forwarded = [r for r in routes if "route" in r]
    assert sorted(r["match"]["path"] for r in forwarded) == sorted(PROBE_PATHS)
    assert all(r["match"]["headers"] == [{"name": ":method", "stringMatch": {"exact": "GET"}}] for r in forwarded)
    assert routes[-1]["directResponse"]["status"] == 404
    out = tmp_path / "envoy.yaml"
    out.write_text(dump_yaml(cfg))
    ok, msg = validate_envoy_config(out, cwd=tmp_path)
    assert ok, msg


def test_ext_proc_streams_are_closed_gracefully_not_reset() -> None:
    # A reset cancels the stream under grpc.aio and leaks native memory per request
    # (grpc/grpc#43360; docs/performance.md, "Memory"): Envoy half-closes and waits instead.
    doc = render_envoy(load_config(REPO / "examples" / "extproc.yaml", env={}))
    layers = doc["layeredRuntime"]["layers"]
    static = {k: v for layer in layers for k, v in layer.get("staticLayer", {}).items()}
    assert static["envoy.reloadable_features.ext_proc_graceful_grpc_close"] is True
