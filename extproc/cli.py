"""The ``extproc`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from extproc import __version__
from extproc.errors import ConfigError

if TYPE_CHECKING:
    from extproc.config.model import Config

__all__ = ["main"]

EXAMPLES = """\
examples:
  extproc config check examples/extproc.yaml
  extproc envoy render examples/extproc.yaml -o envoy/envoy.yaml --validate
  extproc serve --config examples/extproc.yaml
  extproc token --sub alice --groups engineering
  extproc status --admin 127.0.0.1:50052
  echo 'call +44 20 7946 0018' | extproc mask --explain
  extproc dev --config examples/extproc.yaml        # what `make run` does
"""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _load(path: str) -> Config:
    # Imported here: building the configuration types costs start-up time that commands
    # without a configuration file (approvals, sessions, token) should not pay.
    from extproc.config.load import load_config

    cfg = load_config(path)
    _validate_extensions(cfg)
    return cfg


def _validate_extensions(cfg: Config) -> None:
    """Sections owned by later modules (policy, masking, ...) are validated by them."""
    from extproc.datapath.runtime import validate_sections

    validate_sections(cfg)


# -- commands -------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    print(f"{args.file}: OK (config version {cfg.version}; {len(cfg.providers)} provider(s), "
          f"{len(cfg.issuers)} issuer(s))")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from extproc.config.schema import render_schema

    text = render_schema()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from extproc.workers import exec_supervisor, resolve_workers, worker_index

    cfg = _load(args.config)
    workers = resolve_workers(cfg.workers, unix=cfg.ext_proc.unix_path is not None)
    if workers > 1 and worker_index() is None:
        # The supervisor: N copies of this very command, each told its index.
        argv = [sys.executable, "-m", "extproc", "--log-level", args.log_level, "--log-format", args.log_format,
                "serve", "--config", args.config]
        exec_supervisor(argv, workers)
    from extproc.server import serve

    asyncio.run(serve(cfg))
    return 0


def cmd_envoy_render(args: argparse.Namespace) -> int:
    from extproc.config.envoy import dump_yaml

    cfg = _load(args.file)
    text = dump_yaml(cfg, dev_tls=not args.no_dev_tls)
    if args.output and args.output != "-":
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        where = str(out)
    else:
        sys.stdout.write(text)
        where = "stdout"
    if args.validate:
        from extproc.dev.keys import ensure_dev_tls
        from extproc.dev.procs import validate_envoy_config

        if cfg.tls is not None and cfg.tls.generated and not args.no_dev_tls:
            ensure_dev_tls(cfg.tls.cert_file, cfg.tls.key_file)
        target = args.output if args.output and args.output != "-" else None
        if target is None:
            import tempfile

            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
                fh.write(text)
                target = fh.name
        ok, output = validate_envoy_config(target)
        print(f"envoy --mode validate: {'OK' if ok else 'FAILED'}", file=sys.stderr)
        if not ok:
            print(output, file=sys.stderr)
            return 1
    if where != "stdout":
        print(f"wrote {where}", file=sys.stderr)
    return 0


def cmd_envoy_run(args: argparse.Namespace) -> int:
    from extproc.config.envoy_launch import run

    extra = list(args.extra)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    run(args.config, args.bootstrap, args.log_level, extra)
    return 1  # not reached: run() replaces the process


def _find_dev_key(args: argparse.Namespace) -> Path | str:
    """The development signing key the running gateway trusts, or why there is none.

    Never created here: a fresh key would sign tokens the gateway rejects (``bad_signature``).
    With ``--config``, the key sits beside the dev issuer's ``jwks_file`` (what the server
    reads); else in ``--run-dir``, or in ``.run/`` of the working directory or a parent (the
    repository root when called from a subdirectory).
    """
    from extproc.config.load import load_config
    from extproc.dev.keys import DEV_ISSUER
    from extproc.errors import ConfigError

    name = "dev-signing-key.pem"
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            return str(exc)
        files = [i.jwks_file for i in cfg.issuers if i.issuer == DEV_ISSUER and i.jwks_file]
        if not files:
            return f"{args.config} trusts no development issuer ({DEV_ISSUER} with a jwks_file)"
        candidates = [Path(files[0]).parent / name]
    elif args.run_dir is not None:
        candidates = [Path(args.run_dir) / name]
    else:
        here = Path.cwd().resolve()
        candidates = [d / ".run" / name for d in (here, *here.parents)]
    for c in candidates:
        if c.is_file():
            return c
    return (f"no development signing key ({candidates[0]}"
            f"{' or in any parent directory' if len(candidates) > 1 else ''}); start the local stack with "
            f"`make run` first (it creates .run/), then run this from the repository, or pass --run-dir "
            f"or --config")


def cmd_token(args: argparse.Namespace) -> int:
    from extproc.dev.keys import DEV_AUDIENCE, DEV_ISSUER, mint_token

    key_path = _find_dev_key(args)
    if not isinstance(key_path, Path):
        print(f"error: {key_path}", file=sys.stderr)
        return 2
    token = mint_token(
        key_path.read_text(),
        subject=args.sub,
        groups=[g for g in (args.groups or "").split(",") if g],
        issuer=args.issuer or DEV_ISSUER,
        audience=args.audience or DEV_AUDIENCE,
        ttl_seconds=args.ttl,
    )
    print(token)
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from extproc.dev.demo import serve_demo

    key = os.environ.get(args.api_key_env) if args.api_key_env else None

    async def run() -> None:
        server = await serve_demo(args.host, args.port, key)
        logging.getLogger("extproc.demo").info(
            "demo model on http://%s:%d/v1 (%s)", args.host, args.port,
            "expects the injected key" if key else "no key check",
        )
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from extproc.admin.client import AdminCallError, channel
    from extproc.api.admin.v1 import admin_pb2, admin_pb2_grpc

    target = args.admin
    if args.config:
        from extproc.config.load import load_config

        cfg = load_config(args.config)
        target = f"{cfg.admin.grpc.address}:{cfg.admin.grpc.port}"
    try:
        with channel(target) as ch:
            st = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    except AdminCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(MessageToDict(st, preserving_proto_field_name=True), indent=2))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from extproc.dev.stack import run_dev

    return run_dev(args.config, run_dir=Path(args.run_dir))


# -- parser ---------------------------------------------------------------------

#: Subcommand groups contributed by other modules: each takes the subparsers object.
#: Commands registered by their capability's module (``register(subparsers)``), by name.
REGISTRARS: dict[str, str] = {
    "policy": "extproc.policy.cli",
    "mask": "extproc.masking.cli",
    "approvals": "extproc.approvals.cli",
    "sessions": "extproc.recording.cli",
    "inject": "extproc.inject.server",
}
_VALUED_OPTIONS = ("--log-level", "--log-format")


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (None for help, version or a missing one)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the module of the command it names is imported (the
    others, and the configuration types they bring, cost start-up time for nothing)."""
    p = argparse.ArgumentParser(
        prog="extproc",
        description="AI-governance egress sidecar for Envoy: authenticates callers, injects provider "
        "credentials, enforces policy, masks streamed answers and records every interaction.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"extproc {__version__}")
    p.add_argument("--log-level", default=os.environ.get("EXTPROC_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    p.add_argument("--log-format", default=os.environ.get("EXTPROC_LOG_FORMAT", "text"), choices=["text", "json"],
                   help="log line format (default: text; json for log shippers)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the ext_proc gRPC server (and its admin endpoints)")
    s.add_argument("--config", "-c", required=True, help="the extproc configuration file (YAML)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("config", help="work with the configuration file")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cc = csub.add_parser("check", help="validate a configuration file; points at the offending key")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)
    cs = csub.add_parser("schema", help="print the JSON Schema of the configuration file (generated from its types)")
    cs.add_argument("-o", "--output", help="write here instead of stdout")
    cs.set_defaults(func=cmd_config_schema)

    e = sub.add_parser("envoy", help="Envoy configuration derived from the extproc configuration")
    esub = e.add_subparsers(dest="envoy_command", metavar="ACTION", required=True)
    er = esub.add_parser("render", help="render Envoy's bootstrap YAML from an extproc configuration")
    er.add_argument("file", help="the extproc configuration file")
    er.add_argument("-o", "--output", help="write here instead of stdout")
    er.add_argument("--validate", action="store_true", help="also run `envoy --mode validate` on the result")
    er.add_argument("--no-dev-tls", action="store_true",
                    help="leave out a TLS listener whose certificate is generated for development (.run/tls)")
    er.set_defaults(func=cmd_envoy_render)
    erun = esub.add_parser(
        "run",
        help="exec Envoy with --concurrency from envoy.concurrency, else the container's CPU limit",
    )
    erun.add_argument("--config", "-c", required=True, help="the extproc configuration file")
    erun.add_argument("--bootstrap", "-b", required=True, help="the rendered Envoy bootstrap (envoy.yaml)")
    erun.add_argument("--log-level", default="info", help="Envoy's --log-level (default: info)")
    erun.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more Envoy arguments")
    erun.set_defaults(func=cmd_envoy_run)

    t = sub.add_parser("token", help="mint a token from the development issuer (local stack only)")
    t.add_argument("--sub", default="dev-user", help="subject / user name (default: dev-user)")
    t.add_argument("--groups", default="", help="comma-separated groups")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    t.add_argument("--audience", help="audience (default: extproc)")
    t.add_argument("--issuer", help="issuer (default: the development issuer)")
    t.add_argument("--run-dir", help="where the development key lives (default: .run here or in a parent)")
    t.add_argument("--config", help="find the key the gateway running this configuration trusts")
    t.set_defaults(func=cmd_token)

    d = sub.add_parser("demo-model", help="run the offline demo model endpoint (OpenAI/Anthropic-compatible)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=18080)
    d.add_argument("--api-key-env", default="DEMO_API_KEY",
                   help="environment variable holding the key it expects (empty: no check)")
    d.set_defaults(func=cmd_demo_model)

    st = sub.add_parser("status", help="ask a running server for its status over the admin gRPC API")
    st.add_argument("--admin", default=os.environ.get("EXTPROC_ADMIN", "127.0.0.1:50052"),
                    help="admin gRPC address (default: $EXTPROC_ADMIN or 127.0.0.1:50052)")
    st.add_argument("--config", "-c", help="take the admin address from this configuration file")
    st.set_defaults(func=cmd_status)

    dv = sub.add_parser("dev", help="run the whole local stack in the foreground (Redis, extproc, Envoy, demo model)")
    dv.add_argument("--config", "-c", default="examples/extproc.yaml")
    dv.add_argument("--run-dir", default=".run", help="state and logs (default: .run)")
    dv.set_defaults(func=cmd_dev)

    import importlib

    command = _command(argv) if argv is not None else None
    wanted = [REGISTRARS[command]] if command in REGISTRARS else (
        [] if command is not None and command in sub.choices else list(REGISTRARS.values()))
    for mod_name in wanted:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        except Exception as exc:  # a broken optional module must not take every command down
            print(f"warning: commands from {mod_name} are unavailable: {exc}", file=sys.stderr)
            continue
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = getattr(
            mod, "register", None
        )
        if register is not None:
            register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc: int = func(args)
        return rc
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
