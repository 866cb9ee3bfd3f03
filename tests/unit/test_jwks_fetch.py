"""JWKS fetching the way a Kubernetes API server needs it: HTTPS with the cluster CA and the
pod's own service-account token as a bearer (both files), and OIDC discovery."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from extproc.admin.http import Request, Response, serve_http
from extproc.config.model import IssuerConfig
from extproc.dev.keys import ensure_dev_tls
from extproc.identity.jwt import fetch_jwks
from tests.fakes.oidc import new_rsa_pem, public_jwk

JWKS = {"keys": [public_jwk(new_rsa_pem(), "sa-1")]}


def issuer(**kw: Any) -> IssuerConfig:
    base: dict[str, Any] = dict(issuer="https://kubernetes.default.svc.cluster.local", audiences=("extproc",),
                                jwks_url=None, jwks_file=None, jwks_ca_file=None, jwks_token_file=None,
                                user_claim="sub", groups_claim="groups", clock_skew_seconds=30, algorithms=())
    base.update(kw)
    return IssuerConfig(**base)


def test_https_jwks_with_cluster_ca_and_bearer_token(tmp_path: Path) -> None:
    crt, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    ensure_dev_tls(crt, key, hosts=("127.0.0.1",))
    token_file = tmp_path / "token"
    token_file.write_text("sa-token-value\n")
    seen: list[str | None] = []

    async def handle(req: Request) -> Response:
        seen.append(req.headers.get("authorization"))
        if req.headers.get("authorization") != "Bearer sa-token-value":
            return Response.json(401, b"{}")
        if req.path == "/.well-known/openid-configuration":
            port = server.sockets[0].getsockname()[1]
            return Response.json(200, json.dumps({"jwks_uri": f"https://127.0.0.1:{port}/openid/v1/jwks"}).encode())
        return Response.json(200, json.dumps(JWKS).encode())

    async def run() -> tuple[Any, Any]:
        nonlocal server
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        server = await serve_http(handle, "127.0.0.1", 0, ssl_context=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            direct = await fetch_jwks(issuer(jwks_url=f"https://127.0.0.1:{port}/openid/v1/jwks",
                                             jwks_ca_file=str(crt), jwks_token_file=str(token_file)))
            discovered = await fetch_jwks(issuer(issuer=f"https://127.0.0.1:{port}", jwks_ca_file=str(crt),
                                                 jwks_token_file=str(token_file)))
            with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # without the cluster CA
                await fetch_jwks(issuer(jwks_url=f"https://127.0.0.1:{port}/openid/v1/jwks",
                                        jwks_token_file=str(token_file)))
            return direct, discovered
        finally:
            server.close()

    server: Any = None
    direct, discovered = asyncio.run(run())
    assert direct == JWKS and discovered == JWKS
    assert seen.count("Bearer sa-token-value") >= 3
