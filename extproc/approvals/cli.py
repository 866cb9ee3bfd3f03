"""``extproc approvals list|show|approve|deny|watch``: decide held requests from a terminal.

Talks to the admin gRPC API (``extproc.api.admin.v1.Approvals``) with the approver's own
token (``--token`` or ``EXTPROC_TOKEN``): the server decides who may approve what, this
only sends the request and explains the answer. Exit codes: 0 done, 1 the server refused
or could not be reached (its message is printed), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from extproc.admin.client import AdminCallError, add_admin_arguments, channel, token_metadata

__all__ = ["register"]

def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_admin_arguments(common, token_help="your own bearer token", timeout=10.0)  # noqa: S106 (help text)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = subparsers.add_parser(
        "approvals",
        help="list, show, approve, deny and watch requests held for human approval",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", parents=[common], help="pending approvals you may decide or requested")
    ls.add_argument("--limit", type=int, default=100)
    ls.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", parents=[common], help="one approval in full")
    sh.add_argument("id")
    sh.set_defaults(func=cmd_show)

    ap = sub.add_parser("approve", parents=[common], help="vote to approve a held request")
    ap.add_argument("id")
    ap.add_argument("--reason", default="", help="why (recorded with your vote)")
    ap.set_defaults(func=cmd_decide, verdict="approve")

    dn = sub.add_parser("deny", parents=[common], help="deny a held request (final)")
    dn.add_argument("id")
    dn.add_argument("--reason", required=True, help="why (recorded, and shown to the requester)")
    dn.set_defaults(func=cmd_decide, verdict="deny")

    w = sub.add_parser("watch", parents=[common], help="print approval events as they happen (Ctrl-C stops)")
    w.add_argument("--no-pending", action="store_true", help="do not print what is pending already")
    w.add_argument("--count", type=int, default=0, help="stop after this many events (default: never)")
    w.set_defaults(func=cmd_watch)


# -- commands -----------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from extproc.api.admin.v1 import approvals_pb2 as pb

    def call(stub: Any, md: Sequence[tuple[str, str]]) -> int:
        resp = stub.ListPending(pb.ListPendingRequest(limit=args.limit), metadata=md, timeout=args.timeout)
        if args.json:
            _print_json([_to_dict(a) for a in resp.approvals])
            return 0
        if not resp.approvals:
            print("no pending approvals")
            return 0
        now = time.time()
        rows = [("ID", "USER", "RULE", "REQUEST", "VOTES", "AGE", "EXPIRES IN")]
        for a in resp.approvals:
            rows.append(
                (
                    a.id,
                    a.requester.user,
                    a.binding.rule_id,
                    f"{a.binding.provider} {a.binding.route}",
                    f"{a.approvals}/{a.quorum}",
                    _dur(now - a.created_at),
                    _dur(a.expires_at - now),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return 0

    return _run(args, call)


def cmd_show(args: argparse.Namespace) -> int:
    from extproc.api.admin.v1 import approvals_pb2 as pb

    if (rc := _check_id(args.id)) is not None:
        return rc

    def call(stub: Any, md: Sequence[tuple[str, str]]) -> int:
        a = stub.Get(pb.GetApprovalRequest(id=args.id), metadata=md, timeout=args.timeout)
        _print_approval(a, args.json)
        return 0

    return _run(args, call)


def cmd_decide(args: argparse.Namespace) -> int:
    from extproc.api.admin.v1 import approvals_pb2 as pb

    if (rc := _check_id(args.id)) is not None:
        return rc

    def call(stub: Any, md: Sequence[tuple[str, str]]) -> int:
        req = pb.DecideRequest(id=args.id, reason=args.reason or "")
        method = stub.Approve if args.verdict == "approve" else stub.Deny
        a = method(req, metadata=md, timeout=args.timeout)
        if args.json:
            _print_json(_to_dict(a))
        elif a.state == "pending":
            print(f"{a.id}: your approval is recorded; {a.approvals}/{a.quorum} so far, still pending")
        else:
            print(f"{a.id}: {a.state}")
        return 0

    return _run(args, call)


def cmd_watch(args: argparse.Namespace) -> int:
    from extproc.api.admin.v1 import approvals_pb2 as pb

    def call(stub: Any, md: Sequence[tuple[str, str]]) -> int:
        seen = 0
        # No deadline: a watch runs until Ctrl-C (or --count events).
        stream = stub.Watch(pb.WatchRequest(include_pending=not args.no_pending), metadata=md)
        try:
            for ev in stream:
                if args.json:
                    print(json.dumps({"event": ev.event, "approval": _to_dict(ev.approval)}), flush=True)
                else:
                    a = ev.approval
                    print(
                        f"{_clock(time.time())} {ev.event:<9} {a.id} {a.requester.user} rule={a.binding.rule_id} "
                        f"{a.binding.provider} {a.binding.route} votes={a.approvals}/{a.quorum} state={a.state}",
                        flush=True,
                    )
                seen += 1
                if args.count and seen >= args.count:
                    break
        finally:
            stream.cancel()
        return 0

    return _run(args, call)


# -- plumbing -----------------------------------------------------------------------


def _run(args: argparse.Namespace, call: Any) -> int:
    from extproc.api.admin.v1 import approvals_pb2_grpc as pb_grpc

    try:
        md = token_metadata(args, who="your own JWT")
        with channel(args.admin) as ch:
            rc: int = call(pb_grpc.ApprovalsStub(ch), md)
            return rc
    except AdminCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.usage else 1


def _check_id(approval_id: str) -> int | None:
    from extproc.approvals.model import APPROVAL_ID_RE

    if APPROVAL_ID_RE.match(approval_id):
        return None
    print(f"error: {approval_id!r} is not an approval id (apr_ followed by 20 characters)", file=sys.stderr)
    return 2


def _to_dict(msg: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    out: dict[str, Any] = MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _print_approval(a: Any, as_json: bool) -> None:
    if as_json:
        _print_json(_to_dict(a))
        return
    b, now = a.binding, time.time()
    approvers = [*(f"group {g}" for g in a.approver_groups), *(f"user {u}" for u in a.approver_users)]
    lines = [
        f"id:         {a.id}",
        f"state:      {a.state}",
        f"requester:  {a.requester.user} ({a.requester.issuer})"
        + (f" workload {a.requester.workload}" if a.requester.workload else "")
        + (f" groups {','.join(a.requester.groups)}" if a.requester.groups else ""),
        f"request:    {b.provider} {b.route}",
        f"rule:       {b.rule_id} (policy {b.policy_version})",
        f"content:    {b.content_digest}",
        f"approvers:  {', '.join(approvers) or '-'}; {a.approvals}/{a.quorum} approval(s)",
        f"created:    {_clock(a.created_at)} ({_dur(now - a.created_at)} ago)",
        f"expires:    {_clock(a.expires_at)}",
        f"grant:      {a.grant}"
        + (f", usable until {_clock(a.grant_expires_at)}, used {a.uses}x" if a.grant_expires_at else ""),
    ]
    for v in a.decisions:
        why = f": {v.reason}" if v.reason else ""
        lines.append(f"vote:       {v.verdict} by {v.approver.user} at {_clock(v.at)}{why}")
    print("\n".join(lines))


def _dur(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
