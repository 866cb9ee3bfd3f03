"""The start-up issuer check: which issuers are checked, and what counts as a mismatch."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from extproc.config.model import IssuerConfig
from extproc.identity.issuer import discovery_url, issuer_mismatches

BASE = IssuerConfig(issuer="https://kubernetes.default.svc.cluster.local", audiences=("extproc",),
                    jwks_url="https://kubernetes.default.svc/openid/v1/jwks", jwks_file=None,
                    jwks_ca_file="/ca", jwks_token_file="/token", user_claim="sub", groups_claim="groups",
                    clock_skew_seconds=30, algorithms=())


def replace(cfg: IssuerConfig, **changes: Any) -> IssuerConfig:
    return cfg.model_copy(update=changes)


def test_only_kubernetes_jwks_urls_are_checked() -> None:
    assert discovery_url(BASE) == "https://kubernetes.default.svc/.well-known/openid-configuration"
    assert discovery_url(replace(BASE, jwks_url="https://idp.example/keys")) is None
    assert discovery_url(replace(BASE, jwks_url=None, jwks_file="/jwks.json")) is None


def test_mismatch_is_one_error_line(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, Any, Any]] = []

    def get(url: str, ca: str | None, token: str | None) -> dict[str, str]:
        seen.append((url, ca, token))
        return {"issuer": "https://oidc.eks.example/id/X"}

    caplog.set_level(logging.DEBUG, logger="extproc.identity")
    got = asyncio.run(issuer_mismatches([BASE], get))
    assert got == [(BASE.issuer, "https://oidc.eks.example/id/X")]
    assert seen == [("https://kubernetes.default.svc/.well-known/openid-configuration", "/ca", "/token")]
    (line,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "EXTPROC_TOKEN_ISSUER=https://oidc.eks.example/id/X" in line.getMessage()


def test_match_or_unreachable_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    assert asyncio.run(issuer_mismatches([BASE], lambda *a: {"issuer": BASE.issuer})) == []

    def down(*a: Any) -> Any:
        raise OSError("unreachable")

    assert asyncio.run(issuer_mismatches([BASE], down)) == []
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


def test_discover_takes_the_announced_issuer_or_fails() -> None:
    from extproc.identity.issuer import DISCOVER, IssuerDiscoveryError, discover_issuers

    cfg = replace(BASE, issuer=DISCOVER)
    (got,) = asyncio.run(discover_issuers([cfg], lambda *a: {"issuer": "https://oidc.eks.example/id/X"}))
    assert got.issuer == "https://oidc.eks.example/id/X" and got.jwks_url == BASE.jwks_url
    assert asyncio.run(discover_issuers([BASE], lambda *a: {"issuer": "https://other"})) == (BASE,)  # pinned

    def down(*a: Any) -> Any:
        raise OSError("unreachable")

    for get in (down, lambda *a: {"issuer": "http://plain"}, lambda *a: []):
        with pytest.raises(IssuerDiscoveryError):
            asyncio.run(discover_issuers([cfg], get))
    with pytest.raises(IssuerDiscoveryError, match="Kubernetes jwks_url"):
        asyncio.run(discover_issuers([replace(cfg, jwks_url="https://idp/keys")], get))
