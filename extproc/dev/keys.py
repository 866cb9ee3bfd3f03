"""Development material, generated on first use and kept in ``.run/`` (never committed):
a self-signed TLS certificate for the gateway's TLS listener, and the signing key and JWKS of
the development token issuer that ``extproc token`` mints with.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from extproc.certs import self_signed

__all__ = [
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "DEV_KID",
    "ensure_dev_issuer",
    "ensure_dev_tls",
    "mint_token",
]

DEV_ISSUER = "https://extproc.local/dev"
DEV_AUDIENCE = "extproc"
DEV_KID = "extproc-dev-1"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ensure_dev_tls(
    cert_file: str | Path, key_file: str | Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1")
) -> bool:
    """Create a self-signed certificate for ``hosts`` unless both files exist. True if created."""
    cert_path, key_path = Path(cert_file), Path(key_file)
    if cert_path.exists() and key_path.exists():
        return False
    cert_pem, key_pem = self_signed(hosts, common_name="extproc development gateway", days=365)
    _write_private(key_path, key_pem)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert_pem)
    return True


def ensure_dev_issuer(run_dir: str | Path) -> tuple[Path, Path]:
    """The dev issuer's private key and JWKS in ``run_dir``; created when missing."""
    run = Path(run_dir)
    key_path, jwks_path = run / "dev-signing-key.pem", run / "dev-jwks.json"
    if not key_path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(key_path, pem)
        jwks_path.unlink(missing_ok=True)
    if not jwks_path.exists():
        pem = key_path.read_bytes()
        public = jwk.construct(pem.decode(), algorithm="RS256").public_key().to_dict()
        public.update({"kid": DEV_KID, "use": "sig", "alg": "RS256"})
        jwks_path.write_text(json.dumps({"keys": [public]}, indent=2))
    return key_path, jwks_path


def mint_token(
    key_pem: str | bytes,
    *,
    subject: str,
    groups: Sequence[str] = (),
    issuer: str = DEV_ISSUER,
    audience: str | Sequence[str] = DEV_AUDIENCE,
    ttl_seconds: int = 3600,
    kid: str = DEV_KID,
    algorithm: str = "RS256",
    extra: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    t = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": t,
        "nbf": t,
        "exp": t + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "groups": list(groups),
    }
    claims.update(extra or {})
    pem = key_pem.decode() if isinstance(key_pem, bytes) else key_pem
    token: str = jwt.encode(claims, pem, algorithm=algorithm, headers={"kid": kid})
    return token
