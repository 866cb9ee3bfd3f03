"""Attachments are opened and inspected (issue 17, item 4)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from extproc.errors import ConfigError
from extproc.policy import Policy, PolicyRequest
from tests.pdfs import pdf

BLOCK = {"id": "codename", "action": "block", "match": {"content": {"keywords": ["project bluebird"]}}}
MASK = {"id": "pii", "action": "mask", "match": {"content": {"detectors": ["EMAIL"]}}}
SECRET = "notes: project bluebird, contact jane@example.com\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def req(path: str, body: dict[str, Any], api: str = "openai") -> PolicyRequest:
    return PolicyRequest(user="a", groups=(), issuer="i", workload=None, provider=api, api=api, method="POST",
                         path=path, content_type="application/json", body=json.dumps(body).encode())


def chat_file(data_url: str, filename: str = "notes.txt") -> PolicyRequest:
    return req("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": filename, "file_data": data_url}}]}]})


def responses_file(data_url: str) -> PolicyRequest:
    return req("/v1/responses", {"model": "gpt-4.1", "input": [{"role": "user", "content": [
        {"type": "input_file", "filename": "n.txt", "file_data": data_url}]}]})


def anthropic_doc(media: str, data: bytes) -> PolicyRequest:
    return req("/v1/messages", {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": media, "data": b64(data)}}]}]},
        api="anthropic")


TEXT_TYPES = ["text/plain", "text/markdown", "text/csv", "application/json", "application/xml", "text/html"]


@pytest.mark.parametrize("media", TEXT_TYPES)
def test_text_attachments_are_read_by_block_rules(media: str) -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    url = f"data:{media};base64,{b64(SECRET.encode())}"
    assert p.evaluate(chat_file(url)).action == "block"
    assert p.evaluate(responses_file(url)).action == "block"
    assert p.evaluate(anthropic_doc(media, SECRET.encode())).action == "block"


def test_text_attachments_are_masked_and_encoded_back() -> None:
    p = Policy.from_config({"rules": [MASK]})
    d = p.evaluate(chat_file(f"data:text/plain;base64,{b64(SECRET.encode())}"))
    assert d.action == "mask" and d.body is not None
    url = json.loads(d.body)["messages"][0]["content"][1]["file"]["file_data"]
    assert url.startswith("data:text/plain;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).decode() == "notes: project bluebird, contact [EMAIL]\n"
    d = p.evaluate(anthropic_doc("text/plain", SECRET.encode()))
    assert d.body is not None
    data = json.loads(d.body)["messages"][0]["content"][0]["source"]["data"]
    assert base64.b64decode(data).decode() == "notes: project bluebird, contact [EMAIL]\n"


def test_disguised_text_inside_an_attachment() -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    hidden = "project blue\u200bbird".encode()
    assert p.evaluate(chat_file(f"data:text/plain;base64,{b64(hidden)}")).action == "block"


def test_pdf_text_is_read_and_a_needed_mask_refuses() -> None:
    doc = pdf("project bluebird jane@example.com")
    assert Policy.from_config({"rules": [BLOCK]}).evaluate(anthropic_doc("application/pdf", doc)).action == "block"
    url = f"data:application/pdf;base64,{b64(doc)}"
    assert Policy.from_config({"rules": [BLOCK]}).evaluate(chat_file(url, "a.pdf")).action == "block"
    d = Policy.from_config({"rules": [MASK]}).evaluate(anthropic_doc("application/pdf", doc))
    assert d.action == "block" and d.status == 403 and "cannot be rewritten" in d.message
    clean = pdf("nothing to see")
    assert Policy.from_config({"rules": [MASK]}).evaluate(anthropic_doc("application/pdf", clean)).action == "allow"


def test_pdf_bomb_and_bad_base64_are_refused() -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    d = p.evaluate(anthropic_doc("application/pdf", pdf("", bomb=True)))
    assert d.action == "block" and d.status == 400 and "decompression bomb" in d.message
    d = p.evaluate(chat_file("data:text/plain;base64,@@not base64@@"))
    assert d.action == "block" and d.status == 400


def test_unreadable_documents_are_refused_by_default_when_content_rules_exist() -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    d = p.evaluate(chat_file(f"data:application/zip;base64,{b64(b'PK')}", "a.zip"))
    assert d.action == "block" and d.rule_id == "attachments-default"
    assert Policy.from_config({"rules": []}).evaluate(
        chat_file(f"data:application/zip;base64,{b64(b'PK')}", "a.zip")).action == "allow"


def image_request(size: int) -> PolicyRequest:
    return req("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(b'x' * size)}"}}]}]})


def test_attachment_rules_by_media_type_and_size() -> None:
    rules = [
        {"id": "big-images", "media_types": ["image/*"], "max_bytes": 1000, "action": "refuse",
         "message": "images over 1 kB are not allowed"},
        {"id": "audio-approval", "media_types": ["audio/*"], "action": "require_approval"},
    ]
    p = Policy.from_config({"rules": [BLOCK], "attachments": rules})
    assert p.evaluate(image_request(100)).action == "allow"  # images default to allow
    d = p.evaluate(image_request(5000))
    assert d.action == "block" and d.rule_id == "big-images" and d.message == "images over 1 kB are not allowed"
    audio = req("/v1/chat/completions", {"model": "gpt-4o-audio", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(b"RIFF"), "format": "wav"}}]}]})
    d = p.evaluate(audio)
    assert d.action == "require_approval" and d.rule_id == "audio-approval"


def test_attachment_rule_validation() -> None:
    with pytest.raises(ConfigError, match="action"):
        Policy.from_config({"attachments": [{"media_types": ["image/*"]}]})
    with pytest.raises(ConfigError, match="action"):
        Policy.from_config({"attachments": [{"action": "maybe"}]})
    with pytest.raises(ConfigError, match="max_bytes"):
        Policy.from_config({"attachments": [{"action": "refuse", "max_bytes": -1}]})
