"""Session recording: the record model, masking of recorded bodies, truncation, the hash chain.

Pure: no gRPC, no Redis, no clock (every time is passed in). ``extproc.recording.store`` writes
what this module builds; ``extproc.recording.api`` and ``extproc.recording.cli`` read it back.

One *interaction* is one HTTP request through the gateway. It is recorded as two entries:

* ``start`` -- built by :meth:`InteractionRecorder.forwarded` just before the request goes
  upstream (or by :meth:`InteractionRecorder.refused` when the gateway answers itself): who,
  where, which policy decision, the request body as forwarded;
* ``complete`` -- built by :meth:`InteractionRecorder.complete` once the response has ended:
  status, timing, token usage, the response as delivered (for streams chunk by chunk, with
  millisecond offsets, so ``extproc sessions replay`` can re-emit it faithfully).

A ``start`` without a ``complete`` is an *incomplete* interaction (the process died, or the
stream was cut before the data path could finish it); readers show it as such.

Bodies pass through a recording masking profile (every built-in detector by default) that
also masks the injected provider credentials and the caller's raw token literally, so a record
never holds raw PII or a credential. Masking runs over the whole delivered text at completion,
so a value split across chunks is caught; each masked value is attributed to the chunk in
which it ends.

Tamper evidence: every stored entry carries ``prev_hash`` and
``hash = sha256(prev_hash + sha256(canonical_json(entry)))`` (hex strings), chained over one
global Redis stream. See ``docs/recording.md`` for why the link is split in two.
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.config.types import validate_section
from extproc.identity.model import Identity
from extproc.llmapi.usage import Usage
from extproc.masking import HOLD_MARGIN, MaskingProfile, default_profile
from extproc.policy.model import Decision
from extproc.recording.config import MODES, AuditorSettings, RecordingSection, RetentionSettings, SpoolSettings

__all__ = [
    "ENTRY_VERSION",
    "GENESIS_HASH",
    "MODES",
    "AuditorSettings",
    "ChainEntry",
    "InteractionRecorder",
    "RecordingSettings",
    "RetentionSettings",
    "SpoolSettings",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "entry_digest",
    "interaction_log_line",
    "mask_pieces",
    "merge_interaction",
    "next_session",
    "record_body",
    "recording_profile",
    "safe_label",
    "safe_token",
    "session_from_header",
    "summarize",
    "verify_chain",
]

ENTRY_VERSION = 1
#: ``prev_hash`` of the very first entry of a stream.
GENESIS_HASH = "0" * 64

_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
#: What a caller-supplied identifier (request id, model, tool name) may look like to be stored as
#: given: no spaces, no ``@``, nothing that needs escaping; anything else is masked or replaced.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_LABEL_CHARS = 128
_MAX_PATH_CHARS = 2048
#: Extra bytes collected past ``max_body_bytes`` so a value straddling the cut is still seen
#: whole by the detectors (on top of the profile's longest match).
_CONTEXT_BYTES = 64


# ---------------------------------------------------------------------------
# settings


@dataclass(frozen=True, slots=True)
class RecordingSettings:
    """The ``recording:`` section compiled (its masking profile built)."""

    enabled: bool = True
    mode: str = "required"
    session_header: str = "x-session-id"
    session_gap_seconds: int = 1800
    max_body_bytes: int = 256 * 1024
    max_chunks: int = 2000
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    masking: MaskingProfile = field(default_factory=default_profile)
    auditors: AuditorSettings = field(default_factory=AuditorSettings)

    @classmethod
    def from_config(
        cls,
        raw: object,
        *,
        path: str = "recording",
        file: str = "",
        lines: Mapping[str, int] | None = None,
    ) -> RecordingSettings:
        """Validate and compile a ``recording:`` mapping; errors carry file, line and key path."""
        return cls.from_section(validate_section(RecordingSection, raw, path=path, file=file, lines=lines))

    @classmethod
    def from_section(cls, s: RecordingSection) -> RecordingSettings:
        return cls(
            enabled=s.enabled,
            mode=s.mode,
            session_header=s.session_header,
            session_gap_seconds=s.session_gap_seconds,
            max_body_bytes=s.max_body_bytes,
            max_chunks=s.max_chunks,
            retention=s.retention,
            spool=s.spool,
            masking=MaskingProfile.from_spec(s.masking),
            auditors=s.auditors,
        )


def recording_profile(base: MaskingProfile, secrets: Iterable[str | None]) -> MaskingProfile:
    """``base`` plus the literal ``secrets`` (injected credentials, the caller's raw token)."""
    return base.with_literals([s for s in secrets if s], entity="SECRET")


# ---------------------------------------------------------------------------
# canonical form and the hash chain


def canonical_json(obj: object) -> bytes:
    """The one serialization that is hashed: sorted keys, no spaces, UTF-8. Entries hold no
    floats (times are integer milliseconds), so re-serializing a parsed entry is exact."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_digest(entry: Mapping[str, Any] | bytes) -> str:
    data = entry if isinstance(entry, bytes) else canonical_json(entry)
    return hashlib.sha256(data).hexdigest()


def chain_hash(prev_hash: str, digest: str) -> str:
    """The link: ``sha256(prev_hash || digest)`` over the two 64-character hex strings.

    Computed by the append script inside Redis (a 128-byte input, cheap in Lua) and again
    by every verifier in Python."""
    return hashlib.sha256((prev_hash + digest).encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """A stored entry as the chain sees it: stream id, chain fields, the exact entry bytes."""

    id: str
    prev_hash: str
    hash: str
    entry: bytes


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_break_id: str | None = None
    reason: str = ""


def verify_chain(
    entries: Iterable[ChainEntry],
    *,
    expected_prev: str | None,
    head: tuple[str, str] | None = None,
) -> VerifyResult:
    """Walk ``entries`` in stream order and report the first break.

    ``expected_prev`` is what the first entry must point to (the previous entry's hash, the
    trim anchor or :data:`GENESIS_HASH`); ``None`` accepts whatever it says. ``head`` is
    ``(last id, last hash)`` as the store recorded it, checked against the last entry (a
    deletion at the end leaves the head pointing at an entry that is no longer there).

    An edited entry fails its own ``hash``; a deleted entry (or one rewritten together with
    its own hash) breaks the next entry's ``prev_hash``.
    """
    expected = expected_prev
    checked = 0
    last: ChainEntry | None = None
    for e in entries:
        if expected is not None and e.prev_hash != expected:
            return VerifyResult(
                False, checked, e.id,
                "prev_hash does not match the hash of the entry before it: an entry before this one "
                "was deleted, or rewritten together with its hash",
            )
        if chain_hash(e.prev_hash, entry_digest(e.entry)) != e.hash:
            return VerifyResult(False, checked, e.id, "hash does not match the entry's content: the entry was edited")
        expected = e.hash
        checked += 1
        last = e
    if head is not None:
        head_id, head_hash = head
        if last is None:
            if expected is not None and head_hash and head_hash != expected:
                return VerifyResult(False, checked, head_id or None,
                                    "the stream is empty but the head points at an entry: entries were deleted")
        elif (last.id, last.hash) != (head_id, head_hash):
            return VerifyResult(
                False, checked, head_id or last.id,
                f"the head points at {head_id or '?'} but the last entry is {last.id}: entries at the end "
                "were deleted or added outside the append script",
            )
    return VerifyResult(True, checked)


# ---------------------------------------------------------------------------
# sessions


def session_from_header(value: str | None, profile: MaskingProfile | None = None) -> str | None:
    """A caller-supplied session id, if usable as one (else the time-gap rule applies): the
    right shape and, with ``profile``, nothing in it that the recording profile would mask."""
    if value is None:
        return None
    value = value.strip()
    if not _SESSION_RE.match(value):
        return None
    if profile is not None and profile.find(value):
        return None
    return value


def _unglued(value: str) -> str:
    # Detectors anchor on word boundaries, and ``_`` is a word character: ``lookup_4242...``
    # would hide a card number from them.
    return value.replace("_", " ")


#: The gateway's request ids (``uuid4()``, with or without hyphens): nothing a person typed.
_GATEWAY_ID_RE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")


def safe_token(value: str | None, profile: MaskingProfile) -> str | None:
    """``value`` if it is a plain identifier that holds nothing ``profile`` masks, else None."""
    if value is None:
        return None
    value = value.strip()
    if not _TOKEN_RE.match(value) or profile.find(value) or profile.find(_unglued(value)):
        return None
    return value


#: Per profile, the recorded form of short strings that repeat from request to request (model
#: and tool names, paths, routes): running the detectors over them was a fifth of a record's
#: cost. Bounded (cleared when full); keyed by the profile object itself, which it keeps alive.
_MEMO: dict[int, tuple[MaskingProfile, dict[tuple[str, str], str | None]]] = {}
_MEMO_PROFILES = 64
_MEMO_ENTRIES = 4096


def _memo(profile: MaskingProfile) -> dict[tuple[str, str], str | None]:
    hit = _MEMO.get(id(profile))
    if hit is None or hit[0] is not profile:
        if len(_MEMO) >= _MEMO_PROFILES:
            _MEMO.clear()
        hit = _MEMO[id(profile)] = (profile, {})
    if len(hit[1]) >= _MEMO_ENTRIES:
        hit[1].clear()
    return hit[1]


def safe_label(value: str | None, profile: MaskingProfile) -> str | None:
    """A caller-supplied name (model, tool) as it may be stored and indexed: as given when it is
    a plain identifier without PII, else masked (``_`` read as a space), without control
    characters, cut to 128."""
    if value is None:
        return None
    memo = _memo(profile) if len(value) <= _MAX_LABEL_CHARS else {}
    key = ("label", value)
    if key in memo:
        return memo[key]
    if safe_token(value, profile) is not None:
        out: str | None = value.strip()
    else:
        masked, _ = profile.mask(_unglued(value[: 4 * _MAX_LABEL_CHARS]))
        out = _CONTROL_RE.sub("", masked)[:_MAX_LABEL_CHARS]
    memo[key] = out
    return out


def masked_path(value: str, profile: MaskingProfile) -> str:
    """A request path (or route) as it may be recorded: masked, cut to its bound."""
    value = value[:_MAX_PATH_CHARS]
    memo = _memo(profile)
    key = ("path", value)
    got = memo.get(key)
    if got is None:
        got = memo[key] = profile.mask(value)[0]
    return got


def next_session(
    last: tuple[str, float] | None, now: float, gap_seconds: float, new_id: str
) -> tuple[str, float]:
    """The caller's session for a request at ``now``, and the state to keep: ``(session, seen)``.

    ``last`` is ``(session id, last seen)`` of the same user. Within ``gap_seconds`` of the last
    request it is the same session; otherwise ``new_id`` starts one. An earlier ``now`` (a
    spooled entry flushed late) joins the current session without moving ``seen`` back.
    The store's Lua script implements exactly this (a test holds them together).
    """
    if last is not None:
        sid, seen = last
        if now - seen <= gap_seconds:
            return sid, max(seen, now)
    return new_id, now


# ---------------------------------------------------------------------------
# masking with truncation


def mask_pieces(
    profile: MaskingProfile, pieces: Sequence[bytes], max_bytes: int, *, complete: bool
) -> tuple[list[str], bool, Counter[str]]:
    """Mask the concatenation of ``pieces`` and split the result along the original pieces.

    Returns ``(masked pieces, truncated, counts)``. A masked value that straddles a piece
    boundary is emitted whole in the piece where it ends. ``complete=False`` says the pieces
    are a cut-off prefix of a longer body: the last stretch that could be the start of a
    value is then dropped instead of being emitted unmasked. The output is cut at
    ``max_bytes`` (UTF-8), and ``truncated`` says whether anything was dropped.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(p) for p in pieces]
    tail = decoder.decode(b"", final=True)
    if tail:
        if texts:
            texts[-1] += tail
        else:
            texts.append(tail)
    text = "".join(texts)
    bounds = [0]
    for t in texts:
        bounds.append(bounds[-1] + len(t))
    truncated = not complete
    end = len(text)
    if not complete:
        end = max(0, end - (profile.max_match_length + HOLD_MARGIN + _CONTEXT_BYTES))
    spans = [s for s in profile.find(text) if s.start < end]
    if spans and spans[-1].end > end:
        end = spans[-1].end

    starts = [s.start for s in spans]

    def adjust(b: int) -> int:
        # Spans are sorted and disjoint: only the last one starting before b can contain it.
        b = min(b, end)
        i = bisect.bisect_left(starts, b) - 1
        if i >= 0 and spans[i].end > b:
            return spans[i].start
        return b

    counts: Counter[str] = Counter()
    out: list[str] = []
    used = 0
    si = 0
    cut = False
    for i in range(len(texts)):
        lo, hi = adjust(bounds[i]), adjust(bounds[i + 1])
        if cut:
            break
        if hi <= lo:
            out.append("")
            continue
        inside = []
        while si < len(spans) and spans[si].end <= hi:
            if spans[si].start >= lo:
                inside.append(spans[si])
            si += 1
        piece = profile.render(text, inside, lo, hi, counts)
        size = len(piece.encode("utf-8"))
        if used + size > max_bytes:
            room = max_bytes - used
            piece = piece.encode("utf-8")[:room].decode("utf-8", "ignore")
            cut = True
            truncated = True
        used += len(piece.encode("utf-8"))
        out.append(piece)
    while out and out[-1] == "" and cut:
        out.pop()
    return out, truncated, counts


def _ms(t: float) -> int:
    return round(t * 1000)


def _decision_fields(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "action": d.action,
        "mode": d.mode,
        "rule_id": d.rule_id,
        "rules": [{"rule_id": m.rule_id, "action": m.action, "mode": m.mode} for m in d.matches],
        "shadow_action": d.shadow_action,
        "shadow_rule_id": d.shadow_rule_id,
        "status": d.status,
        "policy_version": d.policy_version,
        "mask_counts": {k: int(v) for k, v in sorted(d.mask_counts.items())},
        "error": d.error,
    }


def _usage_fields(usage: Usage | Mapping[str, int] | None) -> dict[str, int] | None:
    if usage is None:
        return None
    if isinstance(usage, Usage):
        return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "total_tokens": usage.total}
    out = {str(k): int(v) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    if "total_tokens" not in out and ("input_tokens" in out or "output_tokens" in out):
        out["total_tokens"] = out.get("input_tokens", 0) + out.get("output_tokens", 0)
    return out


def record_body(profile: MaskingProfile, limit: int, body: bytes) -> dict[str, Any]:
    """The ``request`` field of a ``start`` entry: ``body`` masked with ``profile``, cut at ``limit``.

    A function of its arguments only, so a worker process can compute it for a large body
    (``extproc.datapath.inspect``) and the recorder take it as given."""
    keep = body[: limit + profile.max_match_length + HOLD_MARGIN + _CONTEXT_BYTES]
    pieces, truncated, counts = mask_pieces(profile, [keep], limit, complete=len(keep) == len(body))
    return {
        "body": "".join(pieces),
        "bytes": len(body),
        "truncated": truncated,
        "masked": dict(sorted(counts.items())),
    }


# ---------------------------------------------------------------------------
# the builder the data path uses


class InteractionRecorder:
    """Builds the two entries of one interaction, incrementally, without I/O.

    ``profile`` is the recording profile (``settings.masking`` by default); ``secrets`` are
    masked literally on top of it (pass the injected credential and the caller's raw token).
    Every method that returns an entry returns a fresh JSON-able dict the store appends.
    """

    def __init__(
        self,
        settings: RecordingSettings,
        profile: MaskingProfile | None = None,
        *,
        now: float,
        interaction_id: str,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.settings = settings
        self.profile = recording_profile(profile or settings.masking, secrets)
        self.interaction_id = interaction_id
        self.received_at = now
        self.forwarded_at: float | None = None
        self.request_id = "-"
        self.session_id: str | None = None
        self.user: str | None = None
        self._stream = False
        self._status: int | None = None
        self._content_type = ""
        self._headers_at: float | None = None
        self._first_byte_at: float | None = None
        self._chunks: list[tuple[int, bytearray]] = []
        self._collected = 0
        self._body_bytes = 0
        self._chunks_truncated = False
        self._collect_complete = True
        self._start: dict[str, Any] = {}
        #: Tool calls in the request (MCP): name, server, argument digest, decision. Set by the
        #: data path before ``forwarded``/``refused``; the arguments themselves are in the
        #: (masked) request body.
        self.tools: list[dict[str, Any]] | None = None

    # -- request side --------------------------------------------------------------

    def request(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        provider: str | None,
        route: str = "",
        caller: Identity | None = None,
        session_header: str | None = None,
        client_request_id: str | None = None,
    ) -> None:
        """What is known from the request headers. ``session_header`` is the raw value of
        ``settings.session_header`` (None when absent). ``request_id`` is the gateway's;
        ``client_request_id`` the caller's already validated correlation id (not a key)."""
        # The gateway's own id (a UUID) is taken by its shape, not judged by the detectors: a
        # UUID's digit groups can look like a national phone number, and the id must stay the
        # one the caller was given. Any other value is stored only if it holds nothing the
        # recording profile masks.
        rid = request_id or "-"
        if rid != "-" and not _GATEWAY_ID_RE.fullmatch(rid):
            rid = safe_token(rid, self.profile) or f"iid-{self.interaction_id}"
        self.request_id = rid
        # A caller's correlation id is stored only when it cannot carry PII (docs/recording.md).
        client_request_id = safe_token(client_request_id, self.profile)
        self.user = caller.user if caller is not None else None
        self.session_id = session_from_header(session_header, self.profile)
        method = method if _METHOD_RE.match(method or "") else "-"
        path_recorded = masked_path(path, self.profile)
        route_recorded = masked_path(route.split("?", 1)[0], self.profile)
        self._start = {
            "v": ENTRY_VERSION,
            "kind": "start",
            "interaction_id": self.interaction_id,
            "request_id": self.request_id,
            "client_request_id": client_request_id,
            "session_id": self.session_id,
            "session_source": "header" if self.session_id else "gap",
            "received_at_ms": _ms(self.received_at),
            "caller": None if caller is None else {
                "user": caller.user,
                "groups": list(caller.groups),
                "issuer": caller.issuer,
                "workload": caller.workload,
            },
            "method": method,
            "path": path_recorded,
            "provider": provider,
            "route": route_recorded,
        }

    def forwarded(
        self,
        body: bytes | None,
        *,
        decision: Decision | None = None,
        approval_id: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        now: float,
        recorded: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``start`` entry, just before the request goes upstream; ``body`` is the body as
        forwarded (after any policy rewrite). ``recorded`` is ``record_body`` of it, when a
        worker already computed it."""
        self.forwarded_at = now
        self._stream = bool(decision.stream) if decision is not None else False
        return self._start_entry(body, decision, approval_id, model, operation, forwarded=True, now=now,
                                 recorded=recorded)

    def refused(
        self,
        status: int,
        code: str,
        *,
        body: bytes | None = None,
        reply: bytes = b"",
        decision: Decision | None = None,
        approval_id: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        now: float,
        recorded: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both entries of an interaction the gateway answered itself (blocked, denied, 503...).
        ``body`` is the request body as received, ``reply`` the gateway's own answer."""
        start = self._start_entry(body, decision, approval_id, model, operation, forwarded=False, now=now,
                                  recorded=recorded)
        self._status = status
        self._content_type = "application/json"
        if reply:
            self._first_byte_at = now
            self.response_chunk(reply, now)
        return start, self.complete(now=now, error=code)

    def _start_entry(
        self,
        body: bytes | None,
        decision: Decision | None,
        approval_id: str | None,
        model: str | None,
        operation: str | None,
        *,
        forwarded: bool,
        now: float,
        recorded: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if not self._start:
            raise RuntimeError("InteractionRecorder.request() must be called first")
        entry = dict(self._start)
        entry.update({
            "forwarded": forwarded,
            "forwarded_at_ms": _ms(now) if forwarded else None,
            "model": self.label(model if model is not None else (decision.model if decision is not None else None)),
            "operation": operation if operation is not None else (
                decision.operation if decision is not None else None),
            "stream": self._stream,
            "decision": _decision_fields(decision),
            "approval_id": approval_id,
            "request": recorded if recorded is not None and body is not None else self._body(body),
        })
        if self.tools is not None:
            entry["tools"] = [{**t, "tool": self.label(t.get("tool"))} for t in self.tools]
        self._start = entry
        return dict(entry)

    def _body(self, body: bytes | None) -> dict[str, Any] | None:
        if body is None:
            return None
        return record_body(self.profile, self.settings.max_body_bytes, body)

    def label(self, value: str | None) -> str | None:
        """A caller- or model-supplied name (model, tool) as it may be recorded: see ``safe_label``."""
        return safe_label(value, self.profile)

    # -- response side -------------------------------------------------------------

    def response_headers(self, status: int, *, now: float, content_type: str = "") -> None:
        self._status = status
        self._headers_at = now
        self._content_type = content_type
        if content_type.split(";", 1)[0].strip().lower() == "text/event-stream":
            self._stream = True

    def response_chunk(self, data: bytes, now: float) -> None:
        """One body chunk exactly as delivered to the caller (after scrubbing and masking)."""
        if not data:
            return
        if self._first_byte_at is None:
            self._first_byte_at = now
        self._body_bytes += len(data)
        limit = self.settings.max_body_bytes + self.profile.max_match_length + HOLD_MARGIN + _CONTEXT_BYTES
        room = limit - self._collected
        if room <= 0:
            self._collect_complete = False
            return
        if len(data) > room:
            data = data[:room]
            self._collect_complete = False
        self._collected += len(data)
        offset = _ms(now - self._first_byte_at)
        if len(self._chunks) < self.settings.max_chunks:
            self._chunks.append((offset, bytearray(data)))
        else:
            # Keep the text, lose the timing: later chunks join the last one.
            self._chunks_truncated = True
            self._chunks[-1][1].extend(data)

    def complete(
        self,
        usage: Usage | Mapping[str, int] | None = None,
        *,
        now: float,
        error: str | None = None,
    ) -> dict[str, Any]:
        """The ``complete`` entry, once the response has ended (or was cut: pass ``error``)."""
        pieces, truncated, counts = mask_pieces(
            self.profile, [bytes(c) for _, c in self._chunks], self.settings.max_body_bytes,
            complete=self._collect_complete,
        )
        chunks = [[off, text] for (off, _), text in zip(self._chunks, pieces, strict=False) if text]
        start = self.forwarded_at if self.forwarded_at is not None else self.received_at
        return {
            "v": ENTRY_VERSION,
            "kind": "complete",
            "interaction_id": self.interaction_id,
            "request_id": self.request_id,
            "status": self._status,
            "error": error,
            "content_type": self._content_type,
            "stream": self._stream,
            "response_headers_at_ms": None if self._headers_at is None else _ms(self._headers_at),
            "first_byte_at_ms": None if self._first_byte_at is None else _ms(self._first_byte_at),
            "completed_at_ms": _ms(now),
            "latency_ms": _ms(now - self.received_at),
            "ttfb_ms": None if self._first_byte_at is None else _ms(self._first_byte_at - start),
            "usage": _usage_fields(usage),
            "response": {
                "chunks": chunks,
                "bytes": self._body_bytes,
                "truncated": truncated,
                "chunks_truncated": self._chunks_truncated,
                "masked": dict(sorted(counts.items())),
            },
        }


# ---------------------------------------------------------------------------
# reading


def merge_interaction(start: Mapping[str, Any] | None, complete: Mapping[str, Any] | None) -> dict[str, Any]:
    """One view of an interaction: the start fields, ``response``/timing from the complete
    entry, and ``complete: bool`` (False = the request was recorded but never finished)."""
    out: dict[str, Any] = dict(start or {})
    out.pop("kind", None)
    out["complete"] = complete is not None
    out["start_missing"] = start is None
    if complete is not None:
        for k, v in complete.items():
            if k in ("kind", "v"):
                continue
            if k == "stream":
                out["stream"] = bool(out.get("stream")) or bool(v)
                continue
            if k in out and out[k] is not None and k in ("interaction_id", "request_id"):
                continue
            out[k] = v
    return out


def summarize(view: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a listing shows (no bodies)."""
    caller = view.get("caller") or {}
    decision = view.get("decision") or {}
    usage = view.get("usage") or {}
    return {
        "request_id": view.get("request_id"),
        "client_request_id": view.get("client_request_id"),
        "interaction_id": view.get("interaction_id"),
        "session_id": view.get("session_id"),
        "user": caller.get("user"),
        "provider": view.get("provider"),
        "route": view.get("route"),
        "model": view.get("model"),
        "operation": view.get("operation"),
        "action": decision.get("action"),
        "status": view.get("status"),
        "received_at_ms": view.get("received_at_ms"),
        "latency_ms": view.get("latency_ms"),
        "total_tokens": usage.get("total_tokens"),
        "stream": bool(view.get("stream")),
        "complete": bool(view.get("complete")),
        "forwarded": bool(view.get("forwarded")),
    }


def interaction_log_line(entry: Mapping[str, Any], complete: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A structured log line for one interaction, without bodies or chunk text.

    Pass the ``start`` entry and the ``complete`` entry (or an already merged view)."""
    view = merge_interaction(entry, complete) if entry.get("kind") == "start" else dict(entry)
    if entry.get("kind") == "complete" and complete is None:
        view = merge_interaction(None, entry)
    caller = view.get("caller") or {}
    decision = view.get("decision") or {}
    request = view.get("request") or {}
    response = view.get("response") or {}
    usage = view.get("usage") or {}
    return {
        "event": "interaction",
        "request_id": view.get("request_id"),
        "client_request_id": view.get("client_request_id"),
        "interaction_id": view.get("interaction_id"),
        "session_id": view.get("session_id"),
        "user": caller.get("user"),
        "groups": caller.get("groups"),
        "issuer": caller.get("issuer"),
        "workload": caller.get("workload"),
        "provider": view.get("provider"),
        "route": view.get("route"),
        "method": view.get("method"),
        "model": view.get("model"),
        "operation": view.get("operation"),
        "stream": bool(view.get("stream")),
        "forwarded": bool(view.get("forwarded")),
        "action": decision.get("action"),
        "mode": decision.get("mode"),
        "rule_id": decision.get("rule_id"),
        "rules": [r.get("rule_id") for r in decision.get("rules") or []],
        "shadow_action": decision.get("shadow_action"),
        "approval_id": view.get("approval_id"),
        "status": view.get("status"),
        "error": view.get("error"),
        "latency_ms": view.get("latency_ms"),
        "ttfb_ms": view.get("ttfb_ms"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "request_bytes": request.get("bytes"),
        "response_bytes": response.get("bytes"),
        "response_chunks": len(response.get("chunks") or []),
        "truncated": bool(request.get("truncated")) or bool(response.get("truncated")),
        "masked": dict(Counter(request.get("masked") or {}) + Counter(response.get("masked") or {})),
        "complete": bool(view.get("complete")),
    }
