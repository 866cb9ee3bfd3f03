"""A local OIDC issuer: discovery document and JWKS over HTTP, and tokens signed by its keys.

Keys can be rotated in place to exercise the gateway's refresh on an unknown ``kid``.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk

from extproc.admin.http import Request, Response, serve_http
from extproc.dev.keys import mint_token


def new_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def new_ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_jwk(pem: str, kid: str, alg: str = "RS256") -> dict[str, Any]:
    d: dict[str, Any] = jwk.construct(pem, algorithm=alg).public_key().to_dict()
    d.update({"kid": kid, "use": "sig", "alg": alg})
    return d


class FakeIssuer:
    def __init__(self, audience: str = "extproc") -> None:
        self.audience = audience
        self.port = 0
        self.keys: dict[str, tuple[str, str]] = {}  # kid -> (pem, alg)
        self.jwks_hits = 0
        self.add_key("k1")

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_key(self, kid: str, alg: str = "RS256") -> None:
        self.keys[kid] = (new_ec_pem() if alg.startswith("ES") else new_rsa_pem(), alg)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(pem, kid, alg) for kid, (pem, alg) in self.keys.items()]}

    def token(self, sub: str = "alice", kid: str = "k1", **kw: Any) -> str:
        pem, alg = self.keys[kid]
        kw.setdefault("audience", self.audience)
        return mint_token(pem, subject=sub, issuer=self.issuer, kid=kid, algorithm=alg, **kw)

    async def start(self) -> None:
        self._server = await serve_http(self.handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def handle(self, req: Request) -> Response:
        if req.path == "/.well-known/openid-configuration":
            return Response.json(200, json.dumps({"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks"}).encode())
        if req.path == "/jwks":
            self.jwks_hits += 1
            return Response.json(200, json.dumps(self.jwks()).encode())
        return Response.json(404, b"{}")
