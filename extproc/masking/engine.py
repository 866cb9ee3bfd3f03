"""The matching engine: candidates per start position, resolved greedily left to right.

Semantics (the contract the streaming masker's proof rests on):

* For every detector and every byte position ``s`` there is at most one candidate: the
  detector's preferred RE2 match starting at ``s`` among matches of at most
  ``max_length`` bytes, accepted by its validator and not on the allow-list. It depends
  only on ``LEFT_CONTEXT`` bytes before ``s`` and on the text up to
  ``s + max_length + HOLD_MARGIN``. (RE2 evaluates ``\b`` at a window's edge against
  the real neighbouring byte, so windows never invent matches.)
* A validator may turn a candidate into a *claim* (``Keep``): it is resolved like any
  candidate but left unmasked, so nothing else matches inside it.
* Candidates are sorted by (start, longest first, detector priority) and taken greedily,
  skipping any that overlap an already taken one. That is causal: whether a candidate
  is taken depends only on candidates that start earlier or at the same place.

So a match is decided by a bounded window around it, and text can be scanned in pieces.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from extproc.masking.detectors import RIGHT_CONTEXT, Detector, Keep
from extproc.masking.spans import Span

__all__ = ["HOLD_MARGIN", "KEPT", "Decision", "Engine", "Pin", "compile_pattern"]

#: Entity of a claimed-but-kept span in ``Engine.resolve`` results; never rendered.
KEPT = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """One span ``--explain`` reports: masked, kept by a claim, or a rejected candidate."""

    start: int
    end: int
    entity: str
    outcome: str  # "masked" | "kept"
    rule: str
    reason: str

#: A candidate is final once ``max_length + HOLD_MARGIN`` characters follow its start: the
#: window holds ``max_length + 1`` bytes (one more, so a validator can trim an over-long
#: greedy match) and validators read up to ``RIGHT_CONTEXT`` bytes past its end (each
#: detector declares its own ``right_context``; this is the bound over all of them).
HOLD_MARGIN = RIGHT_CONTEXT + 1

#: Held texts up to this many characters get the cheap "cannot hold" checks.
_SHORT = 64
#: Characters of ordinary prose: a dominance group must not need any of them absent.
_PROSE = frozenset(string.ascii_letters + " ")

_OPTIONS = re2.Options()
_OPTIONS.max_mem = 64 << 20


def compile_pattern(pattern: str, *, case_insensitive: bool = False) -> Any:
    """Compile with RE2; raises ``re2.error`` with RE2's own message when it cannot."""
    options = re2.Options()
    options.max_mem = _OPTIONS.max_mem
    options.case_sensitive = not case_insensitive
    options.log_errors = False
    return re2.compile(pattern, options)


_SpanFn = Callable[[bytes, int, int], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    detector: Detector
    regex: Any
    alphabet: str | None
    prefix_regex: Any  # full header regex for prefix detectors (PEM), else None
    search: _SpanFn
    match: _SpanFn
    #: ``alphabet``, ``ends`` and ``starts`` as sets (membership of one character is
    #: what the hold-back rule asks, per character of the tail).
    alpha_set: frozenset[str] | None = None
    ends_set: frozenset[str] | None = None
    starts_set: frozenset[str] | None = None
    #: ``triggers`` and ``needs`` as byte regexes (one C-level search each decides
    #: whether the detector's own regex runs at all).
    triggers: re.Pattern[bytes] | None = None
    needs: re.Pattern[bytes] | None = None
    #: ``starts`` as a character-class regex (a search finds the first one).
    starts_re: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Pin:
    """A detector's hold-back, seen from a held text that is one run of its alphabet.

    If the held text (the characters after the emitted ones) is non-empty, consists of
    ``alphabet`` characters only, begins with one of ``starts`` (when set) and is at most
    ``cap`` (``max_length + right_context + 1``) characters long, the detector's
    hold-back (``_alphabet_hold``) begins at the first held character: the run touches
    the end of the text (or ends within its right context), it is not capped, and its
    first character may begin a match. So ``undetermined_start`` returns the buffer
    start and nothing can be emitted. That stays true after appending more ``alphabet``
    characters, and, when the detector ends a match on any alphabet character, after
    appending up to ``slack`` (``right_context - 1``) others: the run's last character
    is then still within the final ``right_context`` characters.
    """

    alphabet: frozenset[str]
    cap: int
    starts: frozenset[str] | None
    slack: int


class Engine:
    """Immutable, shareable: all per-stream state lives in the caller."""

    __slots__ = ("_allow", "_any_gate", "_compiled", "_dominator_cap", "_extra", "_fast", "_hold_order",
                 "allow_list", "max_length", "pins")

    def __init__(self, detectors: Sequence[Detector], allow_list: frozenset[str] = frozenset()) -> None:
        compiled = []
        for det in detectors:
            alphabet = det.alphabet
            if alphabet is not None and det.case_insensitive:
                alphabet = "".join(sorted(set(alphabet.lower() + alphabet.upper())))
            prefix_regex = None
            if det.prefix is not None:
                prefix_regex = compile_pattern(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
            regex = compile_pattern(det.pattern, case_insensitive=det.case_insensitive)
            alpha_set = frozenset(alphabet) if alphabet is not None else None
            triggers = needs = None
            if det.triggers:
                triggers = re.compile(b"|".join(re.escape(t) for t in det.triggers))
            if det.needs:
                needs = re.compile(b"[" + b"".join(re.escape(ch.encode("utf-8")) for ch in det.needs) + b"]")
            compiled.append(_Compiled(
                det, regex, alphabet, prefix_regex, *_spans(regex), alpha_set,
                frozenset(det.ends) if det.ends is not None else alpha_set,
                frozenset(det.starts) if det.starts is not None else None, triggers, needs,
                _char_class(det.starts)))
        self._compiled: tuple[_Compiled, ...] = tuple(compiled)
        # Any trigger or needed character of any detector (None when a detector has
        # neither: it always runs): text without one skips every gated detector at once.
        gates = [g.pattern for c in compiled for g in (c.triggers, c.needs) if g is not None]
        ungated = any(c.triggers is None and c.needs is None for c in compiled)
        self._any_gate: re.Pattern[bytes] | None = None if ungated or not gates else re.compile(b"|".join(gates))
        # The hold-back is a minimum over detectors and cannot go below the buffer start:
        # detectors that usually hold the most (no alphabet, then the widest alphabets)
        # come first, so most calls stop after one or two of them.
        self._hold_order: tuple[_Compiled, ...] = tuple(sorted(
            compiled, key=lambda c: (c.detector.prefix is not None,
                                     -(len(c.alpha_set) if c.alpha_set is not None else 1 << 20))))
        # Dominance (see ``undetermined_start``): the first detector in hold order with an
        # alphabet that ends a match on any of it; for every other alphabet detector, the
        # characters that would let it hold more than the dominator.
        dom = next((c for c in self._hold_order if c.alpha_set is not None and c.detector.prefix is None
                    and c.detector.ends is None), None)
        self._dominator_cap = 0
        extra: list[frozenset[str] | None] = [None] * len(self._hold_order)
        if dom is not None and dom.alpha_set is not None:
            d_alpha, d_right = dom.alpha_set, dom.detector.right_context
            d_starts = dom.starts_set if dom.starts_set is not None else d_alpha
            self._dominator_cap = dom.detector.max_length + d_right + 1
            for i, c in enumerate(self._hold_order):
                if c is dom or c.alpha_set is None or c.detector.prefix is not None:
                    continue
                starts = c.starts_set if c.starts_set is not None else c.alpha_set
                ends = c.ends_set if c.ends_set is not None else c.alpha_set
                extra[i] = (c.alpha_set - d_alpha) | (starts - d_starts) | (
                    ends if c.detector.right_context > d_right else frozenset())
        self._extra: tuple[frozenset[str] | None, ...] = tuple(extra)
        # The two skips above, grouped: detectors whose extra characters prose lacks are
        # skipped together when the tail has none of their extras, those with ``starts``
        # together when nothing held is a start of any of them; only the rest (the
        # dominator, PEM, detectors without an alphabet) are asked one by one.
        self._fast: tuple[frozenset[str], frozenset[str], tuple[int, ...]] | None = None
        if dom is not None:
            by_extra: set[str] = set()
            by_starts: set[str] = set()
            rest: list[int] = []
            for i, c in enumerate(self._hold_order):
                x = extra[i]
                if x is not None and x.isdisjoint(_PROSE):
                    by_extra |= x
                elif c.alpha_set is not None and c.starts_set is not None and c is not dom:
                    by_starts |= c.starts_set
                else:
                    rest.append(i)
            self._fast = (frozenset(by_extra), frozenset(by_starts), tuple(rest))
        #: ``Pin`` of every detector with an alphabet, widest first: while the undecided
        #: text is one run of that alphabet (see ``StreamingMasker``), appending more of it
        #: cannot decide anything.
        self.pins: tuple[Pin, ...] = tuple(
            Pin(c.alpha_set, c.detector.max_length + c.detector.right_context + 1, c.starts_set,
                c.detector.right_context - 1 if c.detector.ends is None else 0)
            for c in self._hold_order
            if c.alpha_set is not None and c.detector.prefix is None)
        self._allow = allow_list
        self.allow_list = allow_list
        self.max_length: int = max((d.max_length for d in detectors), default=0)

    # -- matching --------------------------------------------------------------------

    def find(self, text: str, lo: int = 0, hi: int | None = None) -> list[Span]:
        """Taken matches that start in ``[lo, hi)``; ``text`` beyond ``hi`` is right context.

        Callers must guarantee no taken match (or claim) before ``lo`` reaches past ``lo``.
        """
        return [span for span in self.resolve(text, lo, hi) if span.entity != KEPT]

    def resolve(self, text: str, lo: int = 0, hi: int | None = None) -> list[Span]:
        """Like ``find``, but claims are included too, with entity ``KEPT``."""
        if hi is None:
            hi = len(text)
        if hi <= lo or not self._compiled:
            return []
        data = text.encode("utf-8", "surrogatepass")
        is_ascii = len(data) == len(text)
        if is_ascii:
            blo, bhi = lo, hi
        else:
            blo = len(text[:lo].encode("utf-8", "surrogatepass"))
            bhi = blo + len(text[lo:hi].encode("utf-8", "surrogatepass"))
        candidates: list[tuple[int, int, int, str]] = []  # (start, -end, priority, entity)
        # Triggers and needed characters lie inside every match, which starts at or after blo.
        if self._any_gate is not None and len(data) - blo <= _SHORT and self._any_gate.search(data, blo) is None:
            return []  # (one regex over a long text costs more than the per-detector checks)
        for priority, comp in enumerate(self._compiled):
            det = comp.detector
            if det.triggers and not _any_from(data, det.triggers, blo):
                continue
            # Every match starts at or after blo and contains one of ``needs``.
            if comp.needs is not None and comp.needs.search(data, blo) is None:
                continue
            self._scan_one(comp, priority, data, blo, bhi, candidates)
        if not candidates:
            return []
        candidates.sort()
        taken: list[tuple[int, int, str]] = []
        last_end = blo
        for start, neg_end, _prio, entity in candidates:
            if start >= last_end:
                taken.append((start, -neg_end, entity))
                last_end = -neg_end
        if is_ascii:
            return [Span(s, e, ent) for s, e, ent in taken]
        return _to_char_spans(data, taken)

    def _scan_one(
        self,
        comp: _Compiled,
        priority: int,
        data: bytes,
        blo: int,
        bhi: int,
        out: list[tuple[int, int, int, str]],
    ) -> None:
        det = comp.detector
        search, match = comp.search, comp.match
        limit = det.max_length
        size = len(data)
        pos = blo
        while pos < bhi:
            found = search(data, pos, size)
            if found is None:
                return
            start, end = found
            if start >= bhi:
                return
            if end - start > limit:
                # Re-match inside the window the engine promises (limit + 1 bytes, so a
                # validator can still trim it), so the answer does not depend on how much
                # text follows.
                w = match(data, start, min(size, start + limit + 1))
                end = w[1] if w is not None else -1
            entity = det.entity
            if end > start and det.validate is not None:
                verdict = det.validate(data, start, end)
                if isinstance(verdict, Keep):
                    end, entity = verdict.end, KEPT
                else:
                    end = verdict or -1
            if end - start > limit:
                end = -1
            if end > start and entity and self._allow and _decode(data[start:end]) in self._allow:
                end = -1
            if end > start:
                out.append((start, -end, priority, entity))
            pos = start + 1

    # -- explanations ------------------------------------------------------------------

    def explain(self, text: str) -> list[Decision]:
        """Every taken span (masked or kept by a claim) and every candidate a validator
        turned down that no taken span covers, each with the detector's rule and reason."""
        data = text.encode("utf-8", "surrogatepass")
        taken = self.resolve(text)
        spans = [(s.start, s.end) for s in taken]
        out: list[Decision] = []
        starts = _byte_offsets(text)
        for span in taken:
            bs, be = starts[span.start], starts[span.end]
            det, reason = self._reason(data, bs, be, span.entity)
            out.append(Decision(span.start, span.end, span.entity or det.entity,
                                "kept" if span.entity == KEPT else "masked", det.rule, reason))
        # Candidates the pattern proposed and the validator rejected outright.
        char_at = {b: c for c, b in enumerate(starts)}
        for comp in self._compiled:
            det = comp.detector
            if det.validate is None:
                continue
            pos = 0
            while pos < len(data):
                m = comp.regex.search(data, pos)
                if m is None:
                    break
                bs, be = m.span()
                pos = bs + 1
                if be - bs > det.max_length or be <= bs or det.validate(data, bs, be) is not None:
                    continue
                cs, ce = char_at.get(bs), char_at.get(be)
                if cs is None or ce is None or any(a < ce and cs < b for a, b in spans):
                    continue
                reason = det.explain(data, bs, be) if det.explain is not None else "validator rejected it"
                out.append(Decision(cs, ce, det.entity, "kept", det.rule, reason))
                spans.append((cs, ce))
        out.sort(key=lambda d: (d.start, -d.end))
        return out

    def _reason(self, data: bytes, bs: int, be: int, entity: str) -> tuple[Detector, str]:
        for comp in self._compiled:
            det = comp.detector
            if entity and det.entity != entity:
                continue
            if det.validate is None:
                m = comp.regex.match(data, bs)
                if m is not None and m.end() == be:
                    return det, "matched the pattern" + (" (not on the allow list)" if self._allow else "")
                continue
            m = comp.regex.match(data, bs, min(len(data), bs + det.max_length + 1))
            if m is None:
                continue
            verdict = det.validate(data, bs, m.end())
            if isinstance(verdict, Keep) and not entity and verdict.end == be:
                return det, verdict.reason
            if entity and verdict == be:
                return det, det.explain(data, bs, be) if det.explain is not None else "pattern and validator agree"
        return self._compiled[0].detector, "matched"

    # -- streaming support -----------------------------------------------------------

    def undetermined_start(self, text: str, lo: int, bounds: list[int] | None = None, base: int = 0) -> int:
        """Smallest position >= lo where a match could still start or change with more text.

        Everything before it is decided: no candidate that starts there depends on
        characters not yet in ``text``.

        ``bounds`` (optional, one per detector, from ``new_bounds``) carries what an
        earlier call on the same stream found, in stream positions (``base`` is the
        stream position of ``text[0]``). A detector's hold-back never moves back as text
        is appended (its run and window only move forward, its floor only grows), so an
        earlier answer is a lower bound, and a detector whose bound is already at or past
        the minimum found so far cannot lower it and is skipped.
        """
        n = len(text)
        result = n
        # Dominance. Let E be the dominator (widest alphabet, any of it may end a match) and
        # D another alphabet detector. While E's cap does not bind (n - lo <= its cap) and
        # the tail text[min(lo, n - RIGHT_CONTEXT):] holds none of D's ``extra`` characters
        # (alphabet or starts outside E's, or D's ends when D reads more right context),
        # D's hold-back is never before E's: D's hold-back p is a D-start character after
        # the start of a D-run ending at q_D (a D-end in D's window, or the last character);
        # q_D is then an E character in E's window, so E has a run ending at some q_E <= q_D,
        # starting no later than the D-run's part after lo (those characters are E's too),
        # and p, an E-start character, is at or after it: E holds from p or earlier. The
        # minimum is at most E's hold-back, so D is skipped.
        # (Checked per held character, so only for short held texts, like "none held" below.)
        dominated = n - lo <= min(self._dominator_cap, _SHORT)
        tail = text[max(0, min(lo, n - RIGHT_CONTEXT)):] if dominated else ""
        # The cheap "none held" checks below pay per held character: worth it only for the
        # short texts small feeds leave (a 4 KB chunk is cheaper to ask directly).
        held = text[lo:] if n - lo <= _SHORT else None
        order: Sequence[int] = range(len(self._hold_order))
        fast = self._fast
        if dominated and held is not None and fast is not None \
                and fast[0].isdisjoint(tail) and fast[1].isdisjoint(held):
            order = fast[2]
        hold_order = self._hold_order
        for i in order:
            comp = hold_order[i]
            if dominated:
                extra = self._extra[i]
                if extra is not None and extra.isdisjoint(tail):
                    continue
            # An alphabet detector's hold-back is one of its ``starts`` characters at or
            # after lo, or the end: none held, nothing held.
            if held is not None and comp.starts_set is not None and comp.alpha_set is not None \
                    and comp.starts_set.isdisjoint(held):
                continue
            if bounds is not None:
                bound = bounds[i] - base
                if bound >= result:
                    continue
                if comp.starts_re is not None and comp.alpha_set is not None:
                    # The hold-back is at a ``starts`` character at or after the old one
                    # (or the end): the first such character is a tighter bound.
                    first = comp.starts_re.search(text, max(0, bound))
                    bound = n if first is None else first.start()
                    bounds[i] = base + bound
                    if bound >= result:
                        continue
            det = comp.detector
            floor = n - det.max_length - det.right_context - 1
            if floor < lo:
                floor = lo
            if floor >= result:
                continue
            if comp.alpha_set is not None:
                start = _alphabet_hold(text, n, comp, floor, det.right_context)
                if bounds is not None:
                    bounds[i] = base + start
            elif det.prefix is not None:
                # A block (or the start of its marker) begins with the marker's first
                # character: none held, nothing held.
                if det.prefix[0] not in text[lo:]:
                    continue
                start = self._prefix_hold(comp, text, n, floor)
            else:
                start = floor
                if bounds is not None:
                    bounds[i] = base + start
            if start < result:
                result = start
                if result <= lo:
                    return lo  # the minimum cannot go lower: skip the other detectors
        return max(result, lo)

    def new_bounds(self) -> list[int]:
        """Fresh per-stream ``bounds`` for ``undetermined_start`` (nothing known yet)."""
        return [0] * len(self._hold_order)

    def _prefix_hold(self, comp: _Compiled, text: str, n: int, floor: int) -> int:
        prefix = comp.detector.prefix
        assert prefix is not None
        start = n
        # The tail may be the beginning of the marker ("...-----BEG"); only if it holds
        # the marker's first character.
        if prefix[0] in text[max(0, n - len(prefix) + 1):]:
            for k in range(min(len(prefix) - 1, n), 0, -1):
                if text.endswith(prefix[:k]):
                    start = n - k
                    break
        i = text.find(prefix, floor)
        while i != -1 and i < start:
            if _prefix_open(comp, text, i, n):
                return max(i, floor)
            i = text.find(prefix, i + 1)
        return max(start, floor)


def _prefix_open(comp: _Compiled, text: str, i: int, n: int) -> bool:
    """Could a block starting at ``i`` still become (or change) a match?"""
    tail = text[i:]
    if comp.prefix_regex.match(tail) is None:
        # Header not (yet) a private-key header: open only while it is still incomplete.
        rest = tail[len("-----BEGIN ") :]
        if "-----" in rest or "\n" in rest or "\r" in rest or len(rest) > 64:
            return False
        return all(ch.isupper() or ch.isdigit() or ch in " -" for ch in rest)
    m = comp.regex.match(tail)
    # Complete and followed by enough context: decided.
    return m is None or i + m.end() + comp.detector.right_context > n


def _alphabet_hold(text: str, n: int, comp: _Compiled, floor: int, right: int) -> int:
    # A match is a run of alphabet characters ending in one of ``ends``. It can still
    # change if it may grow (its run touches the end of the text) or if its last
    # character is among the final ``right`` characters (its validator has not seen all
    # its right context): hold from the start of the earliest such run.
    alphabet, ends = comp.alpha_set, comp.ends_set
    assert alphabet is not None and ends is not None and comp.alphabet is not None
    q = -1
    for i in range(max(0, n - right), n):  # at most RIGHT_CONTEXT characters
        if text[i] in ends:
            q = i
            break
    if q < 0:
        if n == 0 or text[n - 1] not in alphabet:
            return n
        q = n - 1  # the run touching the end may still grow into a match
    # Start of the run ending at q: look at a short slice first (runs in prose are
    # short), the whole window only when the run fills it.
    chars = comp.alphabet
    stop = max(0, floor - 1)
    near = max(stop, q - 31)
    head = len(text[near : q + 1].rstrip(chars))
    if head == 0 and near > stop:
        near = stop
        head = len(text[near : q + 1].rstrip(chars))
    start = max(near + head, floor)
    starts = comp.starts_set
    if starts is not None and start < n and text[start] not in starts:
        # A match begins with one of ``starts``: the head of the held text before the
        # first such character ("ext note " before "+44") can be let go.
        assert comp.starts_re is not None
        first = comp.starts_re.search(text, start)
        start = n if first is None else first.start()
    return start


def _any_from(data: bytes, needles: tuple[bytes, ...], start: int) -> bool:
    """Does any needle occur in ``data[start:]`` (memchr/memmem, no regex)."""
    for needle in needles:
        if data.find(needle, start) >= 0:
            return True
    return False


def _char_class(chars: str | None) -> re.Pattern[str] | None:
    """A regex matching any one of ``chars`` (None: None)."""
    if chars is None:
        return None
    if not chars:
        return re.compile("(?!)")  # no character at all
    return re.compile("[" + "".join(re.escape(ch) for ch in sorted(set(chars))) + "]")


def _spans(regex: Any) -> tuple[_SpanFn, _SpanFn]:
    """``search`` and anchored ``match`` returning the match's byte span or None.

    For RE2 this calls the compiled regexp directly: the ``re2`` module's Python layer
    (a generator and a Match object per call) costs more than the scan itself when a
    detector has many candidates. Falls back to the public API if that layer changes.
    """
    low = getattr(regex, "_regexp", None)
    anchor = getattr(re2, "_Anchor", None)
    if low is not None and anchor is not None and hasattr(low, "Match"):
        unanchored, start = anchor.UNANCHORED, anchor.ANCHOR_START

        def low_search(data: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
            span = low.Match(unanchored, data, pos, endpos)[0]
            return None if span[0] < 0 else (span[0], span[1])

        def low_match(data: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
            span = low.Match(start, data, pos, endpos)[0]
            return None if span[0] < 0 else (span[0], span[1])

        return low_search, low_match

    def search(data: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
        m = regex.search(data, pos, endpos)
        return None if m is None else (m.start(), m.end())

    def match(data: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
        m = regex.match(data, pos, endpos)
        return None if m is None else (m.start(), m.end())

    return search, match


def _byte_offsets(text: str) -> list[int]:
    """Byte offset of every character position (and of the end) of ``text`` in UTF-8."""
    out = [0]
    total = 0
    for ch in text:
        total += len(ch.encode("utf-8", "surrogatepass"))
        out.append(total)
    return out


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _to_char_spans(data: bytes, taken: list[tuple[int, int, str]]) -> list[Span]:
    offsets = sorted({o for s, e, _ in taken for o in (s, e)})
    mapping: dict[int, int] = {}
    chars = 0
    prev = 0
    for off in offsets:
        chars += len(data[prev:off].decode("utf-8", "surrogatepass"))
        prev = off
        mapping[off] = chars
    return [Span(mapping[s], mapping[e], ent) for s, e, ent in taken]

