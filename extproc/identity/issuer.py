"""Start-up check of Kubernetes token issuers against the cluster's own discovery document.

A wrong issuer makes every caller's token fail with 401 ``unknown_issuer``, silently from
the pod's point of view. When an issuer's keys come from a Kubernetes API server
(``.../openid/v1/jwks``), the same server publishes the issuer its tokens carry at
``/.well-known/openid-configuration``: compare, and say so in one line at start-up.
The issuer URL is public information (it is in every token), so logging it is fine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from extproc.config.model import IssuerConfig

__all__ = ["DISCOVER", "IssuerDiscoveryError", "discover_issuers", "discovery_url", "issuer_mismatches"]

#: ``issuer: discover`` takes the issuer from the API server's discovery document at start.
DISCOVER = "discover"


class IssuerDiscoveryError(RuntimeError):
    """``issuer: discover`` and the API server did not say."""

log = logging.getLogger("extproc.identity")

KUBE_JWKS_PATH = "/openid/v1/jwks"


def discovery_url(cfg: IssuerConfig) -> str | None:
    """The API server's discovery document for an issuer whose JWKS is the API server's."""
    if not cfg.jwks_url:
        return None
    parts = urlsplit(cfg.jwks_url)
    if not parts.path.endswith(KUBE_JWKS_PATH):
        return None
    base = parts.path[: -len(KUBE_JWKS_PATH)]
    return urlunsplit((parts.scheme, parts.netloc, base + "/.well-known/openid-configuration", "", ""))


async def issuer_mismatches(
    issuers: Sequence[IssuerConfig], get_json: Callable[[str, str | None, str | None], Any]
) -> list[tuple[str, str]]:
    """(configured, announced) for every Kubernetes issuer whose API server announces another
    issuer. Unreachable discovery is logged at debug level and skipped (the JWKS fetch
    reports reachability already)."""
    out: list[tuple[str, str]] = []
    for cfg in issuers:
        url = discovery_url(cfg)
        if url is None:
            continue
        try:
            doc = await asyncio.to_thread(get_json, url, cfg.jwks_ca_file, cfg.jwks_token_file)
        except Exception as exc:  # any failure only skips an advisory check
            log.debug("issuer discovery at %s failed: %s", url, type(exc).__name__)
            continue
        announced = doc.get("issuer") if isinstance(doc, dict) else None
        if isinstance(announced, str) and announced and announced != cfg.issuer:
            log.error(
                "token issuer mismatch: configured %s, but the cluster's API server issues tokens as %s; "
                "every caller will get 401 unknown_issuer. Set EXTPROC_TOKEN_ISSUER=%s (docs/kubernetes.md)",
                cfg.issuer, announced, announced,
            )
            out.append((cfg.issuer, announced))
    return out


async def discover_issuers(
    issuers: Sequence[IssuerConfig], get_json: Callable[[str, str | None, str | None], Any]
) -> tuple[IssuerConfig, ...]:
    """Replace ``issuer: discover`` by what the cluster's API server announces (only for a
    Kubernetes ``jwks_url``). Fails, rather than guesses, when it cannot be read: without
    the right issuer no caller could be authenticated."""
    out = []
    for cfg in issuers:
        if cfg.issuer != DISCOVER:
            out.append(cfg)
            continue
        url = discovery_url(cfg)
        if url is None:
            raise IssuerDiscoveryError(f"issuer: {DISCOVER} needs a Kubernetes jwks_url (.../openid/v1/jwks)")
        try:
            doc = await asyncio.to_thread(get_json, url, cfg.jwks_ca_file, cfg.jwks_token_file)
        except Exception as exc:
            raise IssuerDiscoveryError(f"cannot read {url}: {type(exc).__name__}: {exc}") from None
        announced = doc.get("issuer") if isinstance(doc, dict) else None
        if not isinstance(announced, str) or not announced.startswith("https://"):
            raise IssuerDiscoveryError(f"{url} announces no https issuer")
        log.info("token issuer discovered from the API server: %s", announced)
        out.append(cfg.model_copy(update={"issuer": announced}))
    return tuple(out)
