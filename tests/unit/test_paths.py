"""Which paths the ext_proc server refuses as ambiguous (after Envoy's normalisation)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.datapath.paths import path_problem

OK = ["/openai/chat/completions", "/openai/v1/models", "/anthropic/v1/messages?beta=true", "/openai/models/",
      "/openai", "/mcp/crm", "/openai/files/file-abc123/content", "/openai/chat/completions?a=%2F"]
BAD = ["/openai/chat%2Fcompletions", "/openai/chat%2fcompletions", "/openai/chat/completions;x=y",
       "/openai/chat;x=y/completions", "/openai/x/..%2fchat/completions", "/openai/chat%252Fcompletions",
       "/openai/chat%5Ccompletions", "/openai/chat\\completions", "/openai/x/../chat", "/openai/./chat",
       "/openai//chat", "/openai/chat%2e%2e", "/openai/chat%3Bx", "/openai/chat%00", "/openai/chat\x00",
       "/openai/chat\x7f", "*", "http://evil/openai/chat", "/openai/chat#frag", "/openai/.."]


@pytest.mark.parametrize("path", OK)
def test_plain_paths_pass(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize("path", BAD)
def test_ambiguous_paths_are_refused(path: str) -> None:
    assert path_problem(path) is not None


@given(st.text(alphabet="abc/.;%2fF5Cc\\e", max_size=30))
def test_a_passing_path_means_the_same_to_every_decoder(tail: str) -> None:
    """Whatever passes has no escaped separators, parameters or dot segments: decoding it once,
    twice, or splitting it at ';' cannot change which segments it names."""
    from urllib.parse import unquote

    path = "/openai/" + tail
    if path_problem(path) is not None:
        return
    once = unquote(path)
    assert once.count("/") == path.count("/") == unquote(once).count("/")
    assert ";" not in once and "\\" not in once and unquote(once) == once
    assert all(seg not in (".", "..") for seg in once.split("/"))
