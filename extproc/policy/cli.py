"""``extproc policy check | test | explain``: work on a policy offline, without Envoy or Redis.

``test`` runs a cases file against the policy the way ``opa test`` runs Rego tests: one
line per case, a summary, exit 1 on any mismatch, so policy changes can be gated in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.config.load import load_config
from extproc.config.model import Config
from extproc.errors import ConfigError, ExtprocError
from extproc.policy.engine import Policy
from extproc.policy.model import Decision, PolicyRequest

__all__ = ["decision_json", "load_policy", "register", "request_from_mapping", "run"]

_REQUEST_KEYS = frozenset(
    {"user", "groups", "issuer", "workload", "provider", "method", "path", "content_type", "body"}
)
_EXPECT_KEYS = frozenset({"action", "rule_id", "mode", "status", "shadow_action", "body_contains", "body_excludes",
                          "budgets"})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("policy", help="check, test and explain the policy section of a configuration")
    sub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    c = sub.add_parser("check", help="validate the configuration and its policy; points at the offending key")
    c.add_argument("file", help="the extproc configuration file")
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("test", help="evaluate the cases of a YAML file offline; exit 1 on any mismatch")
    t.add_argument("file", help="the extproc configuration file")
    t.add_argument("cases", help="YAML list of {name, request, expect}")
    t.add_argument("-v", "--verbose", action="store_true", help="print every match of failing cases")
    t.set_defaults(func=cmd_test)

    e = sub.add_parser("explain", help="print the decision for one request, with every matching rule, as JSON")
    e.add_argument("file", help="the extproc configuration file")
    e.add_argument("--request", required=True, help="the request as JSON, or @FILE (JSON or YAML)")
    e.set_defaults(func=cmd_explain)


def run(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m extproc.policy.cli``), also used by the tests."""
    parser = argparse.ArgumentParser(prog="extproc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return rc


def load_policy(file: str) -> tuple[Config, Policy]:
    from extproc.datapath.runtime import policy as runtime_policy

    cfg = load_config(file)
    # The same construction the server uses (masking detectors, an absent section).
    if cfg.file.policy is None:
        return cfg, Policy.from_config(None, file=cfg.source, lines=cfg.lines)
    return cfg, runtime_policy(cfg)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        _, policy = load_policy(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = f"{len(policy.rules)} rule(s), {len(policy.budgets)} budget(s)"
    print(f"{args.file}: OK (policy {policy.version}; {counts})")
    return 0


class CaseError(ExtprocError, ValueError):
    pass


def request_from_mapping(cfg: Config, m: Any, where: str) -> PolicyRequest:
    """A :class:`PolicyRequest` from the ``request`` of a case or of ``explain --request``."""
    if not isinstance(m, Mapping):
        raise CaseError(f"{where}: must be a mapping")
    unknown = sorted(set(m) - _REQUEST_KEYS)
    if unknown:
        raise CaseError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(_REQUEST_KEYS))}")
    provider_name = m.get("provider")
    try:
        provider = cfg.provider(str(provider_name))
    except KeyError:
        names = ", ".join(p.name for p in cfg.providers)
        raise CaseError(f"{where}.provider: unknown provider {provider_name!r}; configured: {names}") from None
    body = m.get("body")
    raw: bytes | None
    if body is None:
        raw = None
    elif isinstance(body, str):
        raw = body.encode("utf-8")
    else:
        raw = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
    groups = m.get("groups") or []
    if isinstance(groups, str):
        groups = [groups]
    path = str(m.get("path", "/"))
    if path.startswith(provider.prefix + "/"):
        path = path[len(provider.prefix) :]  # accept the full gateway path too
    return PolicyRequest(
        user=str(m.get("user", "")),
        groups=tuple(str(g) for g in groups),
        issuer=str(m.get("issuer", "")),
        workload=None if m.get("workload") is None else str(m["workload"]),
        provider=provider.name,
        api=provider.api,
        method=str(m.get("method", "POST")).upper(),
        path=path,
        content_type=str(m.get("content_type", "application/json")),
        body=raw,
    )


def decision_json(d: Decision) -> dict[str, Any]:
    body: Any = None
    if d.body is not None:
        try:
            body = json.loads(d.body)
        except ValueError:
            body = d.body.decode("utf-8", "replace")
    return {
        "action": d.action,
        # ``action`` is what is enforced; Decision.mode says "shadow" when a shadow rule would
        # have been stricter, which beside an enforced action reads as if it were not enforced.
        "mode": "enforce",
        "rule_id": d.rule_id,
        "shadow": {"action": d.shadow_action, "rule_id": d.shadow_rule_id} if d.shadow_action else None,
        "message": d.message,
        "status": d.status,
        "shadow_action": d.shadow_action,
        "shadow_rule_id": d.shadow_rule_id,
        "matches": [{"rule_id": m.rule_id, "action": m.action, "mode": m.mode} for m in d.matches],
        "operation": d.operation,
        "model": d.model,
        "stream": d.stream,
        "prompt_tokens": d.prompt_tokens,
        "max_output_tokens": d.max_output_tokens,
        "mask_counts": dict(d.mask_counts),
        "budgets": [
            {
                "budget_id": b.budget_id,
                "key": b.key,
                "window_seconds": b.window_seconds,
                "requests_limit": b.requests_limit,
                "tokens_limit": b.tokens_limit,
                "fail": b.fail,
            }
            for b in d.budgets
        ],
        "error": d.error,
        "body": body,
        "policy_version": d.policy_version,
    }


@dataclass(frozen=True, slots=True)
class _Case:
    name: str
    request: PolicyRequest
    expect: Mapping[str, Any]


def _load_cases(cfg: Config, file: str) -> list[_Case]:
    try:
        data = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CaseError(f"{file}: cannot read cases: {exc}") from None
    if isinstance(data, Mapping) and "cases" in data:
        data = data["cases"]
    if not isinstance(data, list) or not data:
        raise CaseError(f"{file}: must be a non-empty list of cases (or a mapping with 'cases')")
    cases = []
    for i, item in enumerate(data):
        where = f"{file}: [{i}]"
        if not isinstance(item, Mapping):
            raise CaseError(f"{where}: must be a mapping with name, request and expect")
        name = str(item.get("name") or f"case {i}")
        expect = item.get("expect")
        if not isinstance(expect, Mapping) or "action" not in expect:
            raise CaseError(f"{where}.expect: must be a mapping with at least 'action'")
        unknown = sorted(set(expect) - _EXPECT_KEYS)
        if unknown:
            raise CaseError(f"{where}.expect.{unknown[0]}: unknown key; allowed: {', '.join(sorted(_EXPECT_KEYS))}")
        cases.append(_Case(name, request_from_mapping(cfg, item.get("request"), f"{where}.request"), expect))
    return cases


def _mismatches(d: Decision, expect: Mapping[str, Any]) -> list[str]:
    out = []
    got_values = {"action": d.action, "rule_id": d.rule_id, "mode": "enforce", "status": d.status,
                  "shadow_action": d.shadow_action}
    for key, got_value in got_values.items():
        if key in expect and expect[key] != got_value:
            out.append(f"{key}: expected {expect[key]!r}, got {got_value!r}")
    if "budgets" in expect:
        want = _as_list(expect["budgets"])
        got = list(dict.fromkeys(b.budget_id for b in d.budgets))
        if want != got:
            out.append(f"budgets: expected {want!r}, got {got!r}")
    sent = (d.body or b"").decode("utf-8", "replace")
    for s in _as_list(expect.get("body_contains")):
        if s not in sent:
            out.append(f"body does not contain {s!r}")
    for s in _as_list(expect.get("body_excludes")):
        if d.body is None or s in sent:
            out.append(f"body still contains {s!r}" if d.body is not None else "body was not rewritten")
    return out


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def cmd_test(args: argparse.Namespace) -> int:
    try:
        cfg, policy = load_policy(args.file)
        cases = _load_cases(cfg, args.cases)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for case in cases:
        d = policy.evaluate(case.request)
        problems = _mismatches(d, case.expect)
        if problems:
            failed += 1
            print(f"FAIL {case.name}: {'; '.join(problems)}")
            if args.verbose:
                print("     matches: " + (", ".join(f"{m.rule_id}({m.action},{m.mode})" for m in d.matches) or "none"))
        else:
            print(f"PASS {case.name}: {d.action}" + (f" by {d.rule_id}" if d.rule_id else ""))
    passed = len(cases) - failed
    print(f"{'PASS' if not failed else 'FAIL'}: {passed}/{len(cases)} cases (policy {policy.version})")
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        cfg, policy = load_policy(args.file)
        spec = args.request
        if spec.startswith("@"):
            text = Path(spec[1:]).read_text(encoding="utf-8")
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        else:
            data = json.loads(spec)
        req = request_from_mapping(cfg, data, "request")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CaseError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision_json(policy.evaluate(req)), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(run())
