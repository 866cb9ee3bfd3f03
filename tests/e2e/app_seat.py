"""The app's seat in an injected pod: a hostile app process that tries every door.

Run as a process of its own, in the pod's network namespace, under the app's uid (the test
starts it with ``setpriv``). It lists every listening TCP socket (``/proc/net/tcp{,6}``) and
every unix socket (``/proc/net/unix``) it can see and, on each, tries:

* HTTP: Envoy admin's mutating endpoints (``/quitquitquit``, ``/drain_listeners``,
  ``/runtime_modify``, ``/logging``, ``/healthcheck/fail``) and its read endpoints;
* ext_proc gRPC: a ``Process`` stream with request headers carrying the app's own valid token,
  exactly what Envoy sends; an answer would carry the provider key in a header mutation;
* admin gRPC: ``GetStatus``.

It prints one JSON report with every status and every byte it got back (base64), so the test
can look for the credential in all of it. Argument: a JSON object with ``token``, ``skip_ports``
(the outside world: Redis, the fake upstream), ``gateway_port`` and, for a client pod in
gateway mode, ``remote_host`` (the gateway pod's address: every port on it is tried).
"""

from __future__ import annotations

import base64
import encodings.idna  # noqa: F401 - loaded while still root: the app's uid cannot read the stdlib here
import http.client
import json
import os
import socket
import sys
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.api.admin.v1 import admin_pb2, admin_pb2_grpc

HTTP_PROBES = [("POST", "/quitquitquit"), ("POST", "/drain_listeners"), ("POST", "/runtime_modify?x=1"),
               ("POST", "/logging?level=trace"), ("POST", "/healthcheck/fail"), ("GET", "/config_dump"),
               ("GET", "/ready"), ("GET", "/stats/prometheus"), ("GET", "/")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tcp_listeners() -> list[tuple[str, int]]:
    out = set()
    for name, family in (("/proc/net/tcp", "4"), ("/proc/net/tcp6", "6")):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = parts[1].split(":")
            port = int(port_hex, 16)
            if family == "4":
                host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
            else:
                raw = bytes.fromhex(addr_hex)
                host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            # 0.0.0.0 / :: listeners are reachable on loopback too
            if host in ("0.0.0.0", "::", "::ffff:0.0.0.0"):
                host = "127.0.0.1"
            elif host.startswith("::ffff:"):
                host = host[len("::ffff:"):]
            elif ":" in host:
                host = f"[{host}]"
            out.add((host, port))
    return sorted(out)


def remote_listeners(host: str) -> list[tuple[str, int]]:
    """Every TCP port that accepts a connection on another pod's address (a client pod's
    view of the gateway pod: its loopback is not ours to list)."""
    found = []
    for port in range(1, 65536):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            if s.connect_ex((host, port)) == 0:
                found.append((host, port))
        finally:
            s.close()
    return found


def unix_sockets() -> list[str]:
    paths = set()
    for line in open("/proc/net/unix").read().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8:
            paths.add(parts[7])  # "@name" for abstract sockets
    return sorted(paths)


def try_http(conn: http.client.HTTPConnection) -> list[dict[str, Any]]:
    out = []
    for method, path in HTTP_PROBES:
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            body = r.read()
            out.append({"method": method, "path": path, "status": r.status,
                        "data": b64(json.dumps(r.getheaders()).encode() + body)})
        except Exception as exc:
            out.append({"method": method, "path": path, "error": type(exc).__name__})
            conn.close()
    return out


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=3)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(self._path if not self._path.startswith("@") else "\0" + self._path[1:])
        self.sock = s


def try_ext_proc(target: str, token: str) -> dict[str, Any]:
    headers = [(":method", "POST"), (":path", "/fake/chat/completions"), (":authority", "gateway"),
               ("authorization", f"Bearer {token}"), ("content-type", "application/json")]
    req = ep.ProcessingRequest(request_headers=ep.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]),
        end_of_stream=True))
    try:
        with grpc.insecure_channel(target) as ch:
            got = [r.SerializeToString() for r in ep_grpc.ExternalProcessorStub(ch).Process(iter([req]), timeout=4)]
        return {"answered": bool(got), "data": b64(b"".join(got))}
    except grpc.RpcError as exc:
        return {"answered": False, "code": exc.code().name}


def try_admin_grpc(target: str) -> dict[str, Any]:
    try:
        with grpc.insecure_channel(target) as ch:
            st = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.GetStatusRequest(), timeout=4)
        return {"answered": True, "data": b64(st.SerializeToString())}
    except grpc.RpcError as exc:
        return {"answered": False, "code": exc.code().name}


def probe_unix(path: str, token: str) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(path if not path.startswith("@") else "\0" + path[1:])
    except OSError as exc:
        return {"path": path, "connect": os.strerror(exc.errno or 0) if exc.errno else type(exc).__name__}
    finally:
        s.close()
    out: dict[str, Any] = {"path": path, "connect": "ok"}
    if not path.startswith("@"):
        out["ext_proc"] = try_ext_proc(f"unix:{path}", token)
        out["admin_grpc"] = try_admin_grpc(f"unix:{path}")
    out["http"] = try_http(UnixHTTP(path))
    return out


def main() -> int:
    args = json.loads(sys.argv[1])
    # Started as root so the interpreter and every module load; from here on, the app.
    os.setgroups(args.get("groups", []))
    os.setgid(args["gid"])
    os.setuid(args["uid"])
    token, skip = args["token"], set(args["skip_ports"])
    report: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                              "tcp": [], "unix": []}
    remote = args.get("remote_host")
    for host, port in (remote_listeners(remote) if remote else tcp_listeners()):
        if port in skip:
            continue
        entry: dict[str, Any] = {"host": host, "port": port}
        entry["http"] = try_http(http.client.HTTPConnection(host, port, timeout=3))
        entry["ext_proc"] = try_ext_proc(f"{host}:{port}", token)
        entry["admin_grpc"] = try_admin_grpc(f"{host}:{port}")
        report["tcp"].append(entry)
    for path in unix_sockets():
        report["unix"].append(probe_unix(path, token))
    # The one door that should open: the gateway, with the app's own token.
    conn = http.client.HTTPConnection(remote or "127.0.0.1", args["gateway_port"], timeout=10)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    try:
        conn.request("POST", "/fake/chat/completions", body=body,
                     headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
        r = conn.getresponse()
        report["gateway"] = {"status": r.status, "data": b64(json.dumps(r.getheaders()).encode() + r.read())}
    except OSError as exc:  # e.g. the probing above stopped Envoy
        report["gateway"] = {"error": type(exc).__name__}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
