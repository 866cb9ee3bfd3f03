"""``extproc sessions ...``: list, show, replay, export and verify session records.

Talks to the admin gRPC API (``extproc.api.admin.v1.Sessions``) with an auditor's token
(``--token`` or ``EXTPROC_TOKEN``). ``verify --file`` checks an export offline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from extproc.admin.client import AdminCallError, add_admin_arguments, explain, token_metadata
from extproc.errors import ExtprocError
from extproc.recording.model import ChainEntry, VerifyResult, canonical_json, verify_chain

__all__ = ["parse_time", "register", "render_interaction", "replay_chunks", "verify_export"]

_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | None, *, now: float | None = None) -> float | None:
    """``None``/empty, unix seconds, a duration ago (``30m``, ``2h``, ``7d``) or ISO 8601 (UTC
    when no offset is given) -> unix seconds."""
    if not value:
        return None
    value = value.strip()
    m = _REL.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read time {value!r}: use unix seconds, 30m/2h/7d ago, or ISO 8601"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


def _iso(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def replay_chunks(
    chunks: Iterable[Sequence[Any]],
    *,
    speed: float,
    write: Callable[[str], Any],
    flush: Callable[[], Any] = lambda: None,
    sleep: Callable[[float], Any] = time.sleep,
) -> None:
    """Write each ``[offset_ms, text]`` chunk, waiting the recorded gap divided by ``speed``
    (``speed <= 0``: no waiting)."""
    prev: float | None = None
    for chunk in chunks:
        offset, text = float(chunk[0]), str(chunk[1])
        if prev is not None and speed > 0:
            delay = (offset - prev) / 1000.0 / speed
            if delay > 0:
                sleep(delay)
        write(text)
        flush()
        prev = offset


def render_interaction(view: Mapping[str, Any]) -> str:
    """The header part of ``show``/``replay``: who, when, what was decided, the request."""
    caller = view.get("caller") or {}
    decision = view.get("decision") or {}
    usage = view.get("usage") or {}
    request = view.get("request") or {}
    lines = [
        f"request   {view.get('request_id')}   session {view.get('session_id') or '-'}",
        f"caller    {caller.get('user') or '-'}"
        + (f" (groups: {', '.join(caller.get('groups') or [])})" if caller.get("groups") else "")
        + (f" workload {caller['workload']}" if caller.get("workload") else ""),
        f"received  {_iso(view.get('received_at_ms'))}   {view.get('method') or ''} {view.get('path') or ''}",
        f"provider  {view.get('provider') or '-'}   model {view.get('model') or '-'}   "
        f"operation {view.get('operation') or '-'}",
    ]
    if decision:
        d = f"decision  {decision.get('action')} (rule {decision.get('rule_id') or '-'}, mode {decision.get('mode')})"
        if decision.get("shadow_action"):
            d += f", shadow: {decision['shadow_action']} ({decision.get('shadow_rule_id') or '-'})"
        lines.append(d)
    if view.get("approval_id"):
        lines.append(f"approval  {view['approval_id']}")
    if view.get("complete"):
        tokens = ""
        if usage:
            tokens = f"   tokens {usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
        lines.append(
            f"status    {view.get('status')}{' (' + str(view['error']) + ')' if view.get('error') else ''}   "
            f"latency {view.get('latency_ms')} ms   first byte {view.get('ttfb_ms')} ms{tokens}"
        )
    else:
        lines.append("status    INCOMPLETE: the request was recorded but its completion never was")
    if not view.get("forwarded", True):
        lines.append("forwarded no: the gateway answered itself")
    if request:
        mark = " TRUNCATED" if request.get("truncated") else ""
        lines.append(f"--- request body (masked, {request.get('bytes')} bytes{mark}) ---")
        lines.append(str(request.get("body", "")))
    return "\n".join(lines) + "\n"


def verify_export(lines: Iterable[str]) -> VerifyResult:
    """Check the chain of an ``export`` file (the first entry's ``prev_hash`` is taken as given)."""
    entries = []
    for line in lines:
        if not line.strip():
            continue
        doc = json.loads(line)
        entries.append(ChainEntry(doc["id"], doc["prev_hash"], doc["hash"], canonical_json(doc["entry"])))
    return verify_chain(entries, expected_prev=None)


# -- gRPC plumbing ---------------------------------------------------------------------


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    import grpc

    from extproc.api.admin.v1 import sessions_pb2_grpc

    try:
        md = token_metadata(args, who="an auditor's JWT")
    except AdminCallError as exc:
        raise _CliError(str(exc)) from None
    ch = grpc.insecure_channel(args.admin)
    stub = sessions_pb2_grpc.SessionsStub(ch)
    try:
        result = getattr(stub, method)(request, metadata=md, timeout=args.timeout)
        if method == "Export":
            return _Closing(result, ch, args.admin)
    except grpc.RpcError as exc:
        ch.close()
        raise _CliError(explain(exc, args.admin, api="sessions")) from None
    ch.close()
    return result


class _Closing:
    """An export stream that closes its channel when it ends, and explains a broken stream."""

    def __init__(self, it: Any, ch: Any, target: str) -> None:
        self._it = it
        self._channel = ch
        self._target = target

    def __iter__(self) -> Any:
        import grpc

        try:
            yield from self._it
        except grpc.RpcError as exc:
            raise _CliError(explain(exc, self._target, api="sessions")) from None
        finally:
            self._channel.close()


class _CliError(ExtprocError):
    pass


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _out(args: argparse.Namespace) -> TextIO:
    out: TextIO = getattr(args, "stdout", None) or sys.stdout
    return out


# -- commands --------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from extproc.api.admin.v1 import sessions_pb2

    req = sessions_pb2.ListRecordsRequest(
        user=args.user or "", session=args.session or "", decision=args.decision or "",
        provider=args.provider or "", model=args.model or "",
        since=parse_time(args.since) or 0, until=parse_time(args.until) or 0, limit=args.limit,
    )
    res = _call(args, "List", req)
    out = _out(args)
    if args.json:
        for r in res.records:
            d = MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                              unquote_int64_if_possible=True)
            out.write(json.dumps(d) + "\n")
        return 0
    out.write(f"{'received (UTC)':24} {'request':36} {'user':16} {'session':24} {'provider':10} "
              f"{'model':20} {'action':16} {'status':>6} {'ms':>7}\n")
    for r in res.records:
        status = str(r.status) if r.complete else "INCOMPLETE"
        out.write(f"{_iso(r.received_at_ms):24} {r.request_id:36} {r.user:16} {r.session_id:24} {r.provider:10} "
                  f"{r.model:20} {r.action or '-':16} {status:>6} {r.latency_ms:>7}\n")
    return 0


def _get(args: argparse.Namespace) -> dict[str, Any]:
    from extproc.api.admin.v1 import sessions_pb2

    res = _call(args, "Get", sessions_pb2.GetRecordRequest(request_id=args.id))
    view: dict[str, Any] = json.loads(res.json)
    return view


def cmd_show(args: argparse.Namespace) -> int:
    view = _get(args)
    out = _out(args)
    if args.json:
        out.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
        return 0
    out.write(render_interaction(view))
    response = view.get("response") or {}
    if view.get("complete"):
        out.write(f"--- response ({len(response.get('chunks') or [])} chunk(s), {response.get('bytes')} bytes"
                  f"{', TRUNCATED' if response.get('truncated') else ''}) ---\n")
        out.write("".join(str(c[1]) for c in response.get("chunks") or []) + "\n")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    view = _get(args)
    out = _out(args)
    response = view.get("response") or {}
    chunks = response.get("chunks") or []
    if not args.response_only:
        out.write(render_interaction(view))
        if not view.get("complete"):
            return 0
        flags = [f"{len(chunks)} chunk(s)", "stream" if view.get("stream") else "not streamed"]
        if response.get("truncated"):
            flags.append(f"TRUNCATED ({response.get('bytes')} bytes delivered)")
        if response.get("chunks_truncated"):
            flags.append("chunk timing cut after the chunk limit")
        out.write(f"--- response ({', '.join(flags)}; speed {args.speed:g}) ---\n")
        out.flush()
    replay_chunks(chunks, speed=args.speed, write=out.write, flush=out.flush)
    if not args.response_only:
        out.write("\n--- end ---\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from extproc.api.admin.v1 import sessions_pb2

    req = sessions_pb2.ExportRecordsRequest(since=parse_time(args.since) or 0, until=parse_time(args.until) or 0)
    out = _out(args)
    n = 0
    for chunk in _call(args, "Export", req):
        out.write(chunk.line + "\n")
        n += 1
    print(f"exported {n} entries", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    out = _out(args)
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            res = verify_export(fh)
    else:
        from extproc.api.admin.v1 import sessions_pb2

        r = _call(args, "Verify", sessions_pb2.VerifyRecordsRequest(from_id=args.from_id or "", to_id=args.to_id or ""))
        res = VerifyResult(r.ok, r.checked, r.first_break_id or None, r.reason)
    if res.ok:
        out.write(f"OK: {res.checked} entries, the chain is intact\n")
        return 0
    out.write(f"BROKEN at {res.first_break_id} after {res.checked} good entries: {res.reason}\n")
    return 1


def _positive_speed(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 = no delay)")
    return v


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = subparsers.add_parser("sessions", help="read recorded interactions (auditors only)")
    ssub = s.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_admin_arguments(p, token_help="an auditor's bearer token", timeout=30.0)  # noqa: S106 (help text)

    ls = ssub.add_parser("list", help="interaction summaries, newest first")
    common(ls)
    ls.add_argument("--user")
    ls.add_argument("--session")
    ls.add_argument("--since", help="unix seconds, 30m/2h/7d ago, or ISO 8601")
    ls.add_argument("--until", help="same forms as --since")
    ls.add_argument("--decision", choices=["allow", "mask", "require_approval", "block"])
    ls.add_argument("--provider")
    ls.add_argument("--model")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_guard(cmd_list))

    sh = ssub.add_parser("show", help="one interaction by request id")
    common(sh)
    sh.add_argument("id", help="the request id (x-request-id)")
    sh.add_argument("--json", action="store_true", help="the whole merged record as JSON")
    sh.set_defaults(func=_guard(cmd_show))

    rp = ssub.add_parser("replay", help="print an interaction and re-emit its response with the original timing")
    common(rp)
    rp.add_argument("id", help="the request id (x-request-id)")
    rp.add_argument("--speed", type=_positive_speed, default=1.0,
                    help="timing divisor: 2 = twice as fast, 0 = no delay (default: 1)")
    rp.add_argument("--response-only", action="store_true", help="only the delivered response text")
    rp.set_defaults(func=_guard(cmd_replay))

    ex = ssub.add_parser("export", help="raw chain entries as JSON lines (redirect to a file)")
    common(ex)
    ex.add_argument("--since", help="unix seconds, 30m/2h/7d ago, or ISO 8601")
    ex.add_argument("--until")
    ex.set_defaults(func=_guard(cmd_export))

    vf = ssub.add_parser("verify", help="check the hash chain; exit 1 and show the first break")
    common(vf)
    vf.add_argument("--from", dest="from_id", help="first stream id (default: the oldest)")
    vf.add_argument("--to", dest="to_id", help="last stream id (default: the newest)")
    vf.add_argument("--file", help="verify an export file offline instead")
    vf.set_defaults(func=_guard(cmd_verify))
