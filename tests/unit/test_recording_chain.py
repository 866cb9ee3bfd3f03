"""The hash chain: verify finds the first edit or deletion; CLI helpers (replay timing, times)."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.recording.cli import parse_time, replay_chunks, verify_export
from extproc.recording.model import GENESIS_HASH, ChainEntry, canonical_json, chain_hash, entry_digest, verify_chain


def build(n: int) -> list[ChainEntry]:
    out = []
    prev = GENESIS_HASH
    for i in range(n):
        data = canonical_json({"kind": "start", "i": i, "text": f"entry {i}"})
        h = chain_hash(prev, entry_digest(data))
        out.append(ChainEntry(f"{1000 + i}-0", prev, h, data))
        prev = h
    return out


def head(chain: list[ChainEntry]) -> tuple[str, str]:
    return (chain[-1].id, chain[-1].hash) if chain else ("", "")


def test_link_definition() -> None:
    data = canonical_json({"b": 1, "a": "é"})
    assert data == '{"a":"é","b":1}'.encode()
    d = hashlib.sha256(data).hexdigest()
    assert chain_hash(GENESIS_HASH, d) == hashlib.sha256((GENESIS_HASH + d).encode()).hexdigest()


def test_intact_chain_verifies() -> None:
    chain = build(5)
    assert verify_chain(chain, expected_prev=GENESIS_HASH, head=head(chain)).ok
    res = verify_chain(chain[2:], expected_prev=chain[1].hash, head=head(chain))
    assert res.ok and res.checked == 3
    assert verify_chain([], expected_prev=GENESIS_HASH, head=("", "")).ok


@settings(deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_any_edit_or_deletion_is_found_at_the_right_place(n: int, data: st.DataObject) -> None:
    chain = build(n)
    true_head = head(chain)
    i = data.draw(st.integers(0, n - 1), label="index")
    op = data.draw(st.sampled_from(["edit", "edit_and_rehash", "delete", "delete_run"]), label="op")
    victim = chain[i]
    tampered = list(chain)
    if op == "edit":
        doc: dict[str, Any] = json.loads(victim.entry)
        doc["text"] = data.draw(st.text(max_size=8).filter(lambda t: t != doc["text"]), label="text")
        tampered[i] = ChainEntry(victim.id, victim.prev_hash, victim.hash, canonical_json(doc))
        expect = victim.id
    elif op == "edit_and_rehash":
        new = canonical_json({"kind": "start", "i": i, "text": "forged"})
        tampered[i] = ChainEntry(victim.id, victim.prev_hash, chain_hash(victim.prev_hash, entry_digest(new)), new)
        expect = chain[i + 1].id if i + 1 < n else true_head[0]
    elif op == "delete":
        del tampered[i]
        expect = chain[i + 1].id if i + 1 < n else true_head[0]
    else:
        k = data.draw(st.integers(1, n - i), label="run")
        del tampered[i : i + k]
        expect = chain[i + k].id if i + k < n else true_head[0]
    res = verify_chain(tampered, expected_prev=GENESIS_HASH, head=true_head)
    assert not res.ok
    assert res.first_break_id == expect, (op, i, res)
    assert res.checked <= n


def test_break_reasons() -> None:
    chain = build(3)
    edited = [chain[0], ChainEntry(chain[1].id, chain[1].prev_hash, chain[1].hash, b'{"x":1}'), chain[2]]
    assert "edited" in verify_chain(edited, expected_prev=GENESIS_HASH).reason
    assert "deleted" in verify_chain([chain[0], chain[2]], expected_prev=GENESIS_HASH).reason
    assert "head" in verify_chain(chain[:2], expected_prev=GENESIS_HASH, head=head(chain)).reason


def test_verify_export_round_trip() -> None:
    chain = build(4)
    lines = [json.dumps({"id": e.id, "prev_hash": e.prev_hash, "hash": e.hash, "entry": json.loads(e.entry)})
             for e in chain]
    assert verify_export(lines).ok and verify_export(lines).checked == 4
    doc = json.loads(lines[2])
    doc["entry"]["text"] = "changed"
    lines[2] = json.dumps(doc)
    res = verify_export(lines)
    assert not res.ok and res.first_break_id == chain[2].id


def test_replay_timing() -> None:
    chunks = [[0, "a"], [100, "b"], [100, "c"], [350, "d"]]
    out: list[str] = []
    sleeps: list[float] = []
    replay_chunks(chunks, speed=2.0, write=out.append, sleep=sleeps.append)
    assert "".join(out) == "abcd"
    assert sleeps == [pytest.approx(0.05), pytest.approx(0.125)]
    out.clear()
    sleeps.clear()
    replay_chunks(chunks, speed=0, write=out.append, sleep=sleeps.append)
    assert "".join(out) == "abcd" and sleeps == []


def test_parse_time() -> None:
    assert parse_time(None) is None and parse_time("") is None
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")
