from __future__ import annotations

import os
from pathlib import Path

from extproc.config.model import AuthConfig, CredentialConfig, ProviderConfig
from extproc.identity.credentials import CredentialStore


def provider(name: str, cred: CredentialConfig | None) -> ProviderConfig:
    return ProviderConfig(name=name, api="openai", base_url="https://x", prefix=f"/{name}", credential=cred,
                          auth=AuthConfig(header="authorization", scheme="Bearer "))


def test_env_and_file_sources(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("file-secret-1\n")
    now = [0.0]
    store = CredentialStore(
        [provider("a", CredentialConfig(env="A_KEY")), provider("b", CredentialConfig(file=str(f))),
         provider("c", None)],
        environ={"A_KEY": " env-secret "}, clock=lambda: now[0],
    )
    assert store.get("a") == "env-secret"
    assert store.get("b") == "file-secret-1"
    assert store.get("c") is None
    # Rotation is picked up after the re-check interval, not before.
    f.write_text("file-secret-2-longer")
    os.utime(f, ns=(1, 10**18))
    assert store.get("b") == "file-secret-1"
    now[0] += 1.5
    assert store.get("b") == "file-secret-2-longer"
    assert sorted(store.all_values()) == ["env-secret", "file-secret-2-longer"]
    f.unlink()
    now[0] += 1.5
    assert store.get("b") is None


def test_missing_env_is_none() -> None:
    store = CredentialStore([provider("a", CredentialConfig(env="NOPE"))], environ={})
    assert store.get("a") is None
    assert store.all_values() == []
