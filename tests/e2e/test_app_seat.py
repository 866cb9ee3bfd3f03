"""From the app's seat: an injected pod's processes in a network namespace of their own, with
the uids, groups, socket paths and modes of the sidecar configuration, and a hostile app.

Built on the shipped sidecar configuration (``k8s/base/config/extproc.yaml``: the same
listeners, socket modes and peer check; paths moved under a temporary directory), not on the
injector's pod spec run by a kubelet emulation: the pod here is

* Envoy as uid/gid 101 and ext_proc with gid 101 (the injector's defaults; ext_proc keeps
  uid 0 here, see ``Pod.start``), ext_proc accepting only uid 101 as its peer,
* their private directory mode 0777 like an ``emptyDir``, which the app does not have mounted
  (a tmpfs over it in the app's mount namespace, as a container without that volume sees it),
* the app as uid/gid 1000, with its own valid token.

The app tries every listening TCP socket and every unix socket in the namespace
(``tests/e2e/app_seat.py``). Redis and the fake provider stand for the outside world (in a
real pod they are not on the pod's loopback) and are not probed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.envoy import dump_yaml
from extproc.config.load import load_config
from extproc.dev.keys import ensure_dev_issuer, mint_token
from extproc.dev.procs import Proc, envoy_binary, find_redis_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENVOY_UID, APP_UID = 101, 1000
GATEWAY, ADMIN, PROBE, REDIS, UPSTREAM = 10000, 9100, 15021, 6379, 18080
GATEWAY_POD_IP, CLIENT_POD_IP = "10.211.0.1", "10.211.0.2"
CANNED = json.dumps({"id": "c", "object": "chat.completion", "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the app's-seat test needs root (network namespace, setpriv, mounts); run the suite as root")


def upstream_config() -> dict[str, Any]:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "up",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
               "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": CANNED}},
               "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"static_resources": {"listeners": [{
        "name": "up", "address": {"socket_address": {"address": "127.0.0.1", "port_value": UPSTREAM}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]}]}}


@dataclass
class Pod:
    work: Path
    ns: str
    key: str = field(default_factory=lambda: "sk-seat-" + secrets.token_urlsafe(24))
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def private(self) -> Path:
        return self.work / "private"

    def in_ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def as_user(self, uid: int, gid: int, *argv: str) -> list[str]:
        return self.in_ns("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv)

    def ns_get(self, url: str) -> int:
        code = ("import sys, urllib.request as u\ntry:\n    print(u.urlopen(sys.argv[1], timeout=2).status)\n"
                "except Exception as e:\n    print(getattr(e, 'code', 0))\n")
        out = subprocess.run(self.in_ns(sys.executable, "-c", code, url), capture_output=True, text=True,
                             timeout=30, check=False)
        return int(out.stdout.strip() or 0)

    def wait(self, url: str, proc: Proc, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while self.ns_get(url) != 200:
            if not proc.alive or time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} not ready at {url}:\n{proc.log_path.read_text()[-4000:]}")
            time.sleep(0.3)

    #: Where Envoy says it is ready (the probe listener in the sidecar).
    ready_port = PROBE

    def listeners(self) -> dict[str, Any]:
        """The shipped sidecar config's listeners, with the private paths under this pod's directory."""
        cfg: dict[str, Any] = yaml.safe_load((REPO / "k8s/base/config/extproc.yaml").read_text())
        lst: dict[str, Any] = cfg["listeners"]
        for name in ("ext_proc", "envoy_admin"):
            lst[name]["address"] = lst[name]["address"].replace("/var/run/extproc/private", str(self.private))
        assert (lst["http"]["port"], lst["admin"]["port"], lst["envoy_probe"]["port"]) == (GATEWAY, ADMIN, PROBE)
        return lst

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"version": 1, "listeners": self.listeners()}
        _, jwks = ensure_dev_issuer(self.work / "dev")
        cfg["redis"] = {"url": f"redis://127.0.0.1:{REDIS}/0"}
        cfg["identity"] = {"issuers": [{"issuer": "https://extproc.local/dev", "audiences": ["extproc"],
                                        "jwks_file": str(jwks)}]}
        cfg["providers"] = [{"name": "fake", "api": "openai", "base_url": f"http://127.0.0.1:{UPSTREAM}/v1",
                             "prefix": "/fake", "credential": {"env": "FAKE_PROVIDER_KEY"}}]
        return cfg

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(self.in_ns("ip", "link", "set", "lo", "up"), check=True)
        self.private.mkdir()
        os.chmod(self.private, 0o777)  # an emptyDir's mode: only the mount keeps the app out
        logs = self.work / "logs"
        redis = find_redis_server()
        assert redis is not None
        self.procs["redis"] = Proc("redis", self.in_ns(redis, "--port", str(REDIS), "--bind", "127.0.0.1",
                                                       "--save", "", "--appendonly", "no", "--dir", str(logs)),
                                   logs / "redis.log").start()
        # Shared memory is not per network namespace: each Envoy picks a free base id itself
        # (a fixed or guessed one can meet a region a killed Envoy left behind).
        (self.work / "upstream.yaml").write_text(yaml.safe_dump(upstream_config()))
        self.procs["upstream"] = Proc("upstream", self.in_ns(envoy_binary(), "-c", str(self.work / "upstream.yaml"),
                                                             "--use-dynamic-base-id", "--log-level", "error"),
                                      logs / "upstream.log").start()
        cfg_path = self.work / "extproc.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config()))
        env = {**os.environ, "FAKE_PROVIDER_KEY": self.key, "EXTPROC_ENVOY_UID": str(ENVOY_UID)}
        (self.work / "envoy.yaml").write_text(dump_yaml(load_config(cfg_path, env=env)))
        # ext_proc keeps uid 0 here (with Envoy's gid, as in the pod): on the test machines a
        # non-root process gets another Python than the venv's. The app's uid differs from
        # every sidecar's either way, and uid 0 is not in the peer allow-list (only Envoy's).
        self.procs["extproc"] = Proc("extproc", self.as_user(0, ENVOY_UID, sys.executable, "-m", "extproc",
                                                             "serve", "--config", str(cfg_path)),
                                     logs / "extproc.log", env=env, cwd=str(REPO)).start()
        self.wait(f"http://127.0.0.1:{ADMIN}/readyz", self.procs["extproc"])
        self.procs["envoy"] = Proc("envoy", self.as_user(ENVOY_UID, ENVOY_UID, envoy_binary(), "-c",
                                                         str(self.work / "envoy.yaml"), "--use-dynamic-base-id",
                                                         "--log-level", "warn"),
                                   logs / "envoy.log").start()
        self.wait(f"http://127.0.0.1:{self.ready_port}/ready", self.procs["envoy"])

    def token(self, sub: str) -> str:
        key, _ = ensure_dev_issuer(self.work / "dev")
        return mint_token(key.read_text(), subject=sub, groups=("engineering",))

    def app(self, *, sees_private: bool = False, groups: tuple[int, ...] = (), ns: str | None = None,
            remote_host: str | None = None) -> dict[str, Any]:
        """Run the hostile app; by default as the injected pod has it (no private volume).
        ``ns``/``remote_host``: a client pod in namespace ``ns`` calling this pod at that address."""
        args = json.dumps({"uid": APP_UID, "gid": APP_UID, "groups": list(groups), "token": self.token("app"),
                           "skip_ports": [REDIS, UPSTREAM], "gateway_port": GATEWAY, "remote_host": remote_host})
        script = str(REPO / "tests/e2e/app_seat.py")
        hide = "" if sees_private else f"mount -t tmpfs -o mode=0755 none {self.private} && "
        cmd = ["ip", "netns", "exec", ns or self.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'{hide}exec "$0" "$@"', sys.executable, script, args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(REPO),
                             env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        assert out.returncode == 0, out.stderr[-4000:]
        report: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        assert (report["uid"], report["gid"]) == (APP_UID, APP_UID)
        return report

    def stop(self) -> None:
        for name in ("envoy", "extproc", "upstream", "redis"):
            if name in self.procs:
                self.procs[name].stop()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


class GatewayPod(Pod):
    """The shared gateway (``k8s/overlays/gateway``): its listeners as shipped, and a client
    pod in a network namespace of its own joined to this one by a veth pair."""

    ready_port = 9901  # Envoy's admin, on the gateway pod's own loopback

    @property
    def client_ns(self) -> str:
        return self.ns + "-c"

    def listeners(self) -> dict[str, Any]:
        cfg: dict[str, Any] = yaml.safe_load((REPO / "k8s/overlays/gateway/config/extproc.yaml").read_text())
        lst: dict[str, Any] = cfg["listeners"]
        assert (lst["http"]["port"], lst["admin"]["port"], lst["envoy_admin"]["port"]) == (GATEWAY, ADMIN, 9901)
        return lst

    def start(self) -> None:
        super().start()
        subprocess.run(["ip", "netns", "add", self.client_ns], check=True)
        tag = secrets.token_hex(3)
        for cmd in (["ip", "link", "add", f"xg{tag}", "type", "veth", "peer", "name", f"xc{tag}"],
                    ["ip", "link", "set", f"xg{tag}", "netns", self.ns],
                    ["ip", "link", "set", f"xc{tag}", "netns", self.client_ns],
                    self.in_ns("ip", "addr", "add", f"{GATEWAY_POD_IP}/30", "dev", f"xg{tag}"),
                    self.in_ns("ip", "link", "set", f"xg{tag}", "up"),
                    ["ip", "netns", "exec", self.client_ns, "ip", "addr", "add", f"{CLIENT_POD_IP}/30", "dev",
                     f"xc{tag}"],
                    ["ip", "netns", "exec", self.client_ns, "ip", "link", "set", f"xc{tag}", "up"],
                    ["ip", "netns", "exec", self.client_ns, "ip", "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True)

    def stop(self) -> None:
        super().stop()  # deleting a namespace deletes its end of the veth pair, and so the pair
        subprocess.run(["ip", "netns", "del", self.client_ns], check=False)


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    require_root()
    work = Path(tempfile.mkdtemp(prefix="extproc-seat-"))
    os.chmod(work, 0o755)  # the sidecars' uids read their config here
    p = Pod(work, f"extproc-seat-{secrets.token_hex(4)}")
    try:
        p.start()
        yield p
    finally:
        p.stop()
        shutil.rmtree(work, ignore_errors=True)


def everything_received(report: dict[str, Any]) -> bytes:
    """Every byte the app got back, anywhere."""
    found: list[bytes] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "data":
                    found.append(base64.b64decode(x))
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(report)
    return b"\n".join(found)


MUTATING = {("POST", "/quitquitquit"), ("POST", "/drain_listeners"), ("POST", "/runtime_modify?x=1"),
            ("POST", "/logging?level=trace"), ("POST", "/healthcheck/fail")}


def test_from_the_apps_seat_only_the_gateway_answers(pod: Pod) -> None:
    report = pod.app()
    received = everything_received(report)
    assert pod.key.encode() not in received  # no credential, from anywhere
    # What the app can reach at all: the gateway and the two read-only endpoints.
    assert {e["port"] for e in report["tcp"]} == {GATEWAY, ADMIN, PROBE}
    for entry in report["tcp"]:
        assert entry["ext_proc"]["answered"] is False, entry["port"]  # no ext_proc session anywhere
        assert entry["admin_grpc"]["answered"] is False, entry["port"]  # no admin gRPC anywhere
        for h in entry["http"]:
            if (h["method"], h["path"]) in MUTATING or h["path"] == "/config_dump":
                assert h.get("status") != 200, (entry["port"], h)
    # The private sockets exist (the kernel lists them) but are not reachable from the app's mounts.
    paths = {u["path"]: u for u in report["unix"]}
    for sock in ("ext_proc.sock", "envoy_admin.sock"):
        assert paths[str(pod.private / sock)]["connect"] == "No such file or directory"
    for u in report["unix"]:
        assert u.get("ext_proc", {}).get("answered") is not True and u["connect"] != "ok", u
    # The app-facing listener works for the app's own token, with the key swapped in upstream.
    assert report["gateway"]["status"] == 200
    # And Envoy is still serving: nothing above stopped, drained or reconfigured it.
    assert pod.procs["envoy"].alive and pod.ns_get(f"http://127.0.0.1:{PROBE}/ready") == 200


def test_an_app_that_sees_the_private_directory_is_still_kept_out_by_the_socket_modes(pod: Pod) -> None:
    report = pod.app(sees_private=True)
    paths = {u["path"]: u for u in report["unix"]}
    for sock in ("ext_proc.sock", "envoy_admin.sock"):
        assert paths[str(pod.private / sock)]["connect"] == "Permission denied"
    assert pod.key.encode() not in everything_received(report)


def test_an_app_in_the_sockets_group_is_refused_by_the_peer_check(pod: Pod) -> None:
    """Group 101 opens ext_proc.sock at the file level; SO_PEERCRED (uid 1000 is not Envoy's)
    still refuses the session, and the admin socket (0600) stays shut."""
    report = pod.app(sees_private=True, groups=(ENVOY_UID,))
    paths = {u["path"]: u for u in report["unix"]}
    ext = paths[str(pod.private / "ext_proc.sock")]
    assert ext["connect"] == "ok" and ext["ext_proc"]["answered"] is False
    assert paths[str(pod.private / "envoy_admin.sock")]["connect"] == "Permission denied"
    assert pod.key.encode() not in everything_received(report)
    assert "refused a connection from uid 1000" in pod.procs["extproc"].log_path.read_text()
    assert pod.procs["envoy"].alive and pod.ns_get(f"http://127.0.0.1:{PROBE}/ready") == 200


@pytest.fixture(scope="module")
def gateway_pod() -> Iterator[GatewayPod]:
    require_root()
    work = Path(tempfile.mkdtemp(prefix="extproc-seat-gw-"))
    os.chmod(work, 0o755)
    p = GatewayPod(work, f"extproc-gw-{secrets.token_hex(4)}")
    try:
        p.start()
        yield p
    finally:
        p.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_from_a_client_pods_seat_the_gateway_pod_offers_only_the_gateway(gateway_pod: GatewayPod) -> None:
    """Gateway mode: a client pod tries every TCP port of the gateway pod's address."""
    p = gateway_pod
    report = p.app(ns=p.client_ns, remote_host=GATEWAY_POD_IP)
    assert p.key.encode() not in everything_received(report)
    assert {e["port"] for e in report["tcp"]} == {GATEWAY, ADMIN}  # loopback-bound listeners are not the pod IP
    for entry in report["tcp"]:
        assert entry["ext_proc"]["answered"] is False and entry["admin_grpc"]["answered"] is False, entry["port"]
        for h in entry["http"]:
            if (h["method"], h["path"]) in MUTATING or h["path"] == "/config_dump":
                assert h.get("status") != 200, (entry["port"], h)
    assert report["gateway"]["status"] == 200
    assert p.procs["envoy"].alive
