"""Caller authentication: OIDC / JWT bearer tokens verified against each issuer's JWKS.

What is checked, in order: a bearer token is present; it has three segments; its ``iss`` is
a configured issuer; its header ``alg`` is asymmetric and allowed for that issuer *and* for the
key it names (so an RSA public key can never be used as an HMAC secret, and ``alg: none`` is
refused); the key id is known (an unknown ``kid`` triggers one JWKS refresh, rate-limited);
the signature; ``exp`` (required), ``nbf`` and ``iat`` with the issuer's clock skew; and that
``aud`` names one of the configured audiences.

Verified tokens are cached until they expire (at most five minutes), so the hot path is a
dictionary look-up; keys are refreshed on unknown ``kid`` or every ten minutes.

No error message or log line ever carries the token itself.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import ssl
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from extproc.config.model import IssuerConfig
from extproc.identity.model import AuthError, Identity, bearer_token

__all__ = ["AuthError", "Authenticator", "Identity", "JwksFetcher", "bearer_token", "fetch_jwks"]

log = logging.getLogger("extproc.identity")

#: Algorithm families a key type may be used with; anything symmetric is absent on purpose.
_ALGS_BY_KTY: dict[str, frozenset[str]] = {
    # python-jose verifies RSASSA-PKCS1-v1_5 and ECDSA; it has no RSASSA-PSS (PS*).
    "RSA": frozenset({"RS256", "RS384", "RS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
}
_EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}

KEY_MAX_AGE = 600.0
TOKEN_CACHE_SIZE = 10_000
TOKEN_CACHE_MAX_TTL = 300.0


JwksFetcher = Callable[[IssuerConfig], Awaitable[Mapping[str, Any]]]


@dataclass(slots=True)
class _KeySet:
    keys: dict[str, tuple[Any, frozenset[str]]] = field(default_factory=dict)
    fetched_at: float = 0.0
    last_attempt: float = -1e18
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Authenticator:
    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        fetcher: JwksFetcher | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._fetch = fetcher or fetch_jwks
        self._clock = clock
        self._keysets: dict[str, _KeySet] = {i.issuer: _KeySet() for i in issuers}
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    @property
    def issuers(self) -> Mapping[str, IssuerConfig]:
        return self._issuers

    def cached(self, token: str | None) -> Identity | None:
        """The identity of a token verified before and still valid, without awaiting anything
        (the data path's common case), else None (then :meth:`authenticate`)."""
        if not token:
            return None
        hit = self._cache.get(token)
        if hit is None or self._clock() >= hit[1]:
            return None
        self._cache.move_to_end(token)
        return hit[0]

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing_token", "missing bearer token: send 'Authorization: Bearer <JWT>'")
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            ident, valid_until = hit
            if now < valid_until:
                self._cache.move_to_end(token)
                return ident
            del self._cache[token]
        ident = await self._verify(token, now)
        cfg = self._issuers[ident.issuer]
        valid_until = min(ident.expires_at + cfg.clock_skew_seconds, now + TOKEN_CACHE_MAX_TTL)
        self._cache[token] = (ident, valid_until)
        if len(self._cache) > TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)
        return ident

    async def preload(self) -> None:
        """Fetch every issuer's keys once at start-up; failures are logged, not fatal."""
        for iss in self._issuers:
            try:
                await self._refresh(iss, force=True)
            except AuthError as exc:
                log.warning("could not load keys for issuer %s: %s", iss, exc.message)

    # -- internals ---------------------------------------------------------

    async def _verify(self, token: str, now: float) -> Identity:
        if token.count(".") != 2 or len(token) > 16_384:
            raise AuthError("malformed_token", "the bearer token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.get_unverified_claims(token)
        except (JWTError, ValueError, TypeError, UnicodeDecodeError):
            raise AuthError("malformed_token", "the bearer token is not a JWT") from None
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise AuthError("malformed_token", "the bearer token is not a JWT")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self._issuers:
            raise AuthError("unknown_issuer", "the token's issuer is not trusted by this gateway")
        cfg = self._issuers[iss]
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGS_BY_KTY["RSA"] | _ALGS_BY_KTY["EC"]:
            raise AuthError("unsupported_alg", "the token's signing algorithm is not accepted")
        if cfg.algorithms and alg not in cfg.algorithms:
            raise AuthError("unsupported_alg", "the token's signing algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed_token", "the token's key id is not a string")

        key, key_algs = await self._key(iss, kid, now)
        if alg not in key_algs:
            raise AuthError("unsupported_alg", "the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=iss,
                # Time and audience are checked below, against this object's clock and a
                # set of audiences; jose checks the signature and the issuer.
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except (ExpiredSignatureError, JWTClaimsError) as exc:
            raise AuthError("invalid_claims", f"the token's claims are not valid: {_safe(exc)}") from None
        except JWTError:
            raise AuthError("bad_signature", "the token's signature does not verify") from None
        _check_times(claims, now, cfg.clock_skew_seconds)
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not auds & set(cfg.audiences):
            raise AuthError("wrong_audience", "the token was not issued for this gateway (audience)")
        return _identity(cfg, claims)

    async def _key(self, iss: str, kid: str | None, now: float) -> tuple[Any, frozenset[str]]:
        ks = self._keysets[iss]
        if not ks.keys or now - ks.fetched_at > KEY_MAX_AGE:
            await self._refresh(iss, force=not ks.keys)
        found = self._pick(ks, kid)
        if found is None and now - ks.last_attempt >= self._issuers[iss].jwks_min_refresh_seconds:
            await self._refresh(iss, force=False)
            found = self._pick(ks, kid)
        if found is None:
            raise AuthError("unknown_key", "the token was signed by a key this gateway does not know")
        return found

    @staticmethod
    def _pick(ks: _KeySet, kid: str | None) -> tuple[Any, frozenset[str]] | None:
        if kid is not None:
            return ks.keys.get(kid)
        if len(ks.keys) == 1:
            return next(iter(ks.keys.values()))
        return None

    async def _refresh(self, iss: str, *, force: bool) -> None:
        ks = self._keysets[iss]
        async with ks.lock:
            now = self._clock()
            if not force and now - ks.last_attempt < self._issuers[iss].jwks_min_refresh_seconds:
                return
            ks.last_attempt = now
            try:
                doc = await self._fetch(self._issuers[iss])
            except AuthError:
                raise
            except Exception as exc:
                log.warning("JWKS fetch for issuer %s failed: %s", iss, _safe(exc))
                if not ks.keys:
                    raise AuthError(
                        "jwks_unavailable", "the issuer's signing keys are unavailable", status=503
                    ) from None
                return
            keys = _parse_jwks(doc, self._issuers[iss])
            if keys:
                ks.keys = keys
                ks.fetched_at = now
            elif not ks.keys:
                raise AuthError("jwks_unavailable", "the issuer publishes no usable signing keys", status=503)


def _parse_jwks(doc: Mapping[str, Any], cfg: IssuerConfig) -> dict[str, tuple[Any, frozenset[str]]]:
    out: dict[str, tuple[Any, frozenset[str]]] = {}
    raw = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(raw, list):
        return out
    for i, k in enumerate(raw):
        if not isinstance(k, dict):
            continue
        kty = k.get("kty")
        if kty not in _ALGS_BY_KTY or k.get("use", "sig") != "sig":
            continue  # symmetric (oct) keys are never accepted
        declared = k.get("alg")
        if isinstance(declared, str):
            if declared not in _ALGS_BY_KTY[kty]:
                continue
            algs = frozenset({declared})
        elif kty == "EC":
            curve_alg = _EC_ALG_BY_CURVE.get(str(k.get("crv")))
            if curve_alg is None:
                continue
            algs = frozenset({curve_alg})
        else:
            algs = _ALGS_BY_KTY[kty]
        if cfg.algorithms:
            algs = algs & frozenset(cfg.algorithms)
        if not algs:
            continue
        try:
            key = jwk.construct(k, algorithm=sorted(algs)[0])
        except Exception:  # a broken key in the set must not take the others down
            log.warning("skipping an unusable key in the JWKS of %s", cfg.issuer)
            continue
        raw_kid = k.get("kid")
        kid = raw_kid if isinstance(raw_kid, str) else f"#{i}"
        out[kid] = (key, algs)
    return out


def _check_times(claims: Mapping[str, Any], now: float, skew: int) -> None:
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise AuthError("invalid_claims", f"the token's '{name}' claim is not a number")
    if exp is None:
        raise AuthError("invalid_claims", "the token has no expiry ('exp')")
    if now > exp + skew:
        raise AuthError("token_expired", "the token has expired")
    if nbf is not None and nbf > now + skew:
        raise AuthError("invalid_claims", "the token is not valid yet ('nbf')")
    if iat is not None and iat > now + skew:
        raise AuthError("invalid_claims", "the token was issued in the future ('iat')")


def _identity(cfg: IssuerConfig, claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    user = claims.get(cfg.user_claim, sub)
    if not isinstance(user, str) or not user:
        raise AuthError("invalid_claims", f"the token has no '{cfg.user_claim}' claim naming the user")
    groups_raw = claims.get(cfg.groups_claim, [])
    if isinstance(groups_raw, str):
        groups: tuple[str, ...] = tuple(g for g in groups_raw.replace(",", " ").split() if g)
    elif isinstance(groups_raw, list):
        groups = tuple(g for g in groups_raw if isinstance(g, str))
    else:
        groups = ()
    workload = None
    # Kubernetes projected service-account tokens: sub = system:serviceaccount:<ns>:<name>;
    # policy matches it with globs such as "system:serviceaccount:ci:*".
    if isinstance(sub, str) and fnmatch.fnmatchcase(sub, "system:serviceaccount:*:*"):
        workload = sub
    exp = claims.get("exp")
    return Identity(
        user=user,
        groups=groups,
        issuer=cfg.issuer,
        subject=sub if isinstance(sub, str) else user,
        expires_at=float(exp) if isinstance(exp, int | float) else 0.0,
        workload=workload,
    )


def _safe(exc: BaseException) -> str:
    # jose's messages do not include token material; keep them short all the same.
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------------
# JWKS fetching (the only I/O here; injected so tests and callers can replace it)


def _http_get_json(url: str, ca_file: str | None, token_file: str | None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token_file:
        req.add_header("Authorization", "Bearer " + Path(token_file).read_text().strip())
    ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
        body = resp.read(1 << 20)
    return json.loads(body)


async def fetch_jwks(cfg: IssuerConfig) -> Mapping[str, Any]:
    """Read the issuer's JWKS from its file, URL, or OIDC discovery document."""
    if cfg.jwks_file:
        data = await asyncio.to_thread(Path(cfg.jwks_file).read_bytes)
        doc = json.loads(data)
    else:
        url = cfg.jwks_url
        if not url:
            disco = await asyncio.to_thread(
                _http_get_json,
                cfg.issuer.rstrip("/") + "/.well-known/openid-configuration",
                cfg.jwks_ca_file,
                cfg.jwks_token_file,
            )
            url = disco.get("jwks_uri") if isinstance(disco, dict) else None
            if not isinstance(url, str):
                raise ValueError("the discovery document has no jwks_uri")
        doc = await asyncio.to_thread(_http_get_json, url, cfg.jwks_ca_file, cfg.jwks_token_file)
    if not isinstance(doc, dict):
        raise ValueError("the JWKS is not a JSON object")
    return doc
