"""``extproc dev`` (what ``make run`` runs): the whole local stack in the foreground.

Redis (``REDIS_URL``, else a throwaway ``redis-server``), the demo model, the ext_proc server
and Envoy, with the development issuer and certificate generated in ``.run/``. Ctrl-C stops
every process; so does any one of them exiting.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from extproc.config.envoy import dump_yaml
from extproc.config.load import load_config
from extproc.dev.keys import DEV_AUDIENCE, ensure_dev_issuer, ensure_dev_tls
from extproc.dev.procs import Proc, envoy_binary, free_port, port_in_use, start_redis, validate_envoy_config, wait_http

__all__ = ["run_dev"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_dev(config_path: str, *, run_dir: Path) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    env = dict(os.environ)
    procs: list[Proc] = []

    def stop_all() -> None:
        for p in reversed(procs):
            p.stop()

    try:
        if not env.get("REDIS_URL"):
            port = free_port()
            procs.append(start_redis(port, logs))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            _say(f"redis:      throwaway redis-server on 127.0.0.1:{port} (set REDIS_URL to use your own)")
        else:
            _say("redis:      using REDIS_URL")
        # The demo provider's key: generated per run unless given, so it is never a constant.
        env.setdefault("DEMO_API_KEY", "demo-" + secrets.token_urlsafe(24))
        cfg = load_config(config_path, env=env)
        busy = [
            f"{name} {a.address}:{a.port}"
            for name, a in (("http", cfg.listener), ("ext_proc", cfg.ext_proc), ("admin", cfg.admin.http),
                            ("admin_grpc", cfg.admin.grpc), ("envoy_admin", cfg.envoy_admin))
            if port_in_use(a.address, a.port)
        ]
        if busy:
            _say("error: ports already in use: " + ", ".join(busy) + " (is another stack running?)")
            stop_all()
            return 1
        ensure_dev_issuer(run_dir)
        if cfg.tls is not None and cfg.tls.generated:
            ensure_dev_tls(cfg.tls.cert_file, cfg.tls.key_file)
        envoy_yaml = run_dir / "envoy.yaml"
        envoy_yaml.write_text(dump_yaml(cfg))
        ok, out = validate_envoy_config(envoy_yaml)
        if not ok:
            _say("error: the rendered Envoy config does not validate:\n" + out)
            stop_all()
            return 1

        exe = [sys.executable, "-m", "extproc"]
        demo = next((p for p in cfg.providers if p.name == "demo"), None)
        if demo is not None:
            _, host, port, _ = demo.upstream
            procs.append(Proc("demo-model", [*exe, "demo-model", "--host", host, "--port", str(port)],
                              logs / "demo-model.log", env=env).start())
            wait_http(f"http://{host}:{port}/healthz", 20, procs[-1])
        procs.append(Proc("extproc", [*exe, "serve", "--config", config_path], logs / "extproc.log", env=env).start())
        wait_http(f"http://{cfg.admin.http.address}:{cfg.admin.http.port}/readyz", 30, procs[-1])
        procs.append(Proc("envoy", [envoy_binary(), "-c", str(envoy_yaml), "--log-level", "warn"],
                          logs / "envoy.log", env=env).start())
        wait_http(f"http://{cfg.envoy_admin.address}:{cfg.envoy_admin.port}/ready", 30, procs[-1])

        gw = f"http://{cfg.listener.address}:{cfg.listener.port}"
        _say("")
        _say("extproc local stack is up.")
        _say(f"  gateway (HTTP):  {gw}")
        if cfg.tls is not None:
            _say(f"  gateway (TLS):   https://{cfg.tls.address}:{cfg.tls.port}   (CA: {cfg.tls.cert_file})")
        for p in cfg.providers:
            _say(f"  provider {p.name:<10} {gw}{p.prefix}  ->  {p.base_url}")
        _say(f"  metrics/health:  http://{cfg.admin.http.address}:{cfg.admin.http.port}/metrics  /healthz  /readyz")
        _say(f"  admin gRPC:      {cfg.admin.grpc.address}:{cfg.admin.grpc.port}   (extproc status)")
        _say(f"  logs:            {logs}/")
        _say("")
        _say("Get a token from the development issuer and call the demo model:")
        _say(f"  export TOKEN=$(.venv/bin/extproc token --sub alice --groups engineering)   # aud={DEV_AUDIENCE}")
        _say(f"  curl -s {gw}/demo/chat/completions -H \"Authorization: Bearer $TOKEN\" \\")
        _say("       -H 'content-type: application/json' \\")
        _say("       -d '{\"model\":\"extproc-demo-1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'")
        _say("")
        _say("Press Ctrl-C to stop.")

        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            dead = [p for p in procs if not p.alive]
            if dead:
                _say(f"{dead[0].name} exited; stopping the stack. Last output:\n{dead[0].output(3000)}")
                stop_all()
                return 1
            time.sleep(0.25)
        _say("stopping...")
        stop_all()
        return 0
    except BaseException:
        stop_all()
        raise
