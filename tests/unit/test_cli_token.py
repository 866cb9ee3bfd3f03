"""`extproc token` signs with the key the gateway trusts, or fails with a hint; it never makes one up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jose import jwt

from extproc.cli import main
from extproc.dev.keys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_issuer


def _verify(token: str, jwks: Path) -> dict[str, object]:
    import json

    key = json.loads(jwks.read_text())["keys"][0]
    claims: dict[str, object] = jwt.decode(token, key, algorithms=["RS256"], audience=DEV_AUDIENCE,
                                           issuer=DEV_ISSUER)
    return claims


def test_outside_the_repo_root_it_finds_the_key_in_a_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, jwks = ensure_dev_issuer(tmp_path / ".run")
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "dir")
    assert main(["token", "--sub", "alice"]) == 0
    assert _verify(capsys.readouterr().out.strip(), jwks)["sub"] == "alice"
    assert not (tmp_path / "sub" / "dir" / ".run").exists()  # no new key on the side


def test_without_any_key_it_fails_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["token", "--sub", "alice"]) == 2
    err = capsys.readouterr().err
    assert "make run" in err and "--run-dir" in err
    assert not (tmp_path / ".run").exists()


def test_with_the_config_it_uses_the_key_beside_the_servers_jwks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, jwks = ensure_dev_issuer(tmp_path / "elsewhere")
    repo = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((repo / "examples" / "extproc.yaml").read_text())
    for issuer in cfg["identity"]["issuers"]:
        if issuer["issuer"] == DEV_ISSUER:
            issuer["jwks_file"] = str(jwks)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["token", "--sub", "bob", "--config", str(tmp_path / "cfg.yaml")]) == 0
    assert _verify(capsys.readouterr().out.strip(), jwks)["sub"] == "bob"
