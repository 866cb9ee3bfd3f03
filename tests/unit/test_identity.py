from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from extproc.config.model import IssuerConfig
from extproc.dev.keys import mint_token
from extproc.identity.jwt import Authenticator
from extproc.identity.model import AuthError, bearer_token
from tests.fakes.oidc import new_ec_pem, new_rsa_pem, public_jwk

ISS = "https://issuer.test"
NOW = 1_800_000_000.0


def issuer(**kw: Any) -> IssuerConfig:
    base: dict[str, Any] = dict(issuer=ISS, audiences=("extproc",), jwks_url=None, jwks_file="unused",
                                jwks_ca_file=None, jwks_token_file=None, user_claim="sub", groups_claim="groups",
                                clock_skew_seconds=30, algorithms=(), jwks_min_refresh_seconds=10)
    base.update(kw)
    return IssuerConfig(**base)


class Keys:
    def __init__(self) -> None:
        self.pems: dict[str, tuple[str, str]] = {"k1": (new_rsa_pem(), "RS256")}
        self.fetches = 0

    async def fetch(self, cfg: IssuerConfig) -> Mapping[str, Any]:
        self.fetches += 1
        return {"keys": [public_jwk(pem, kid, alg) for kid, (pem, alg) in self.pems.items()]}

    def token(self, kid: str = "k1", **kw: Any) -> str:
        pem, alg = self.pems[kid]
        kw.setdefault("issuer", ISS)
        kw.setdefault("audience", "extproc")
        kw.setdefault("now", NOW)
        return mint_token(pem, subject=kw.pop("subject", "alice"), kid=kid, algorithm=alg, **kw)


def auth(keys: Keys, clock: list[float] | None = None, **kw: Any) -> Authenticator:
    c = clock or [NOW]
    return Authenticator([issuer(**kw)], keys.fetch, clock=lambda: c[0])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_valid_token_gives_identity() -> None:
    k = Keys()
    ident = run(auth(k).authenticate(k.token(groups=["eng", "ops"])))
    assert (ident.user, ident.groups, ident.issuer) == ("alice", ("eng", "ops"), ISS)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda k: k.token(ttl_seconds=-100), "token_expired"),
        (lambda k: k.token(now=NOW + 600), "invalid_claims"),  # nbf in the future
        (lambda k: k.token(audience="other"), "wrong_audience"),
        (lambda k: k.token(issuer="https://evil"), "unknown_issuer"),
        (lambda k: mint_token(new_rsa_pem(), subject="x", issuer=ISS, audience="extproc", kid="k1", now=NOW),
         "bad_signature"),
        (lambda k: mint_token(new_rsa_pem(), subject="x", issuer=ISS, audience="extproc", kid="zz", now=NOW),
         "unknown_key"),
        (lambda k: "a.b", "malformed_token"),
        (lambda k: "!!!.###.$$$", "malformed_token"),
    ],
)
def test_rejections(make: Any, code: str) -> None:
    k = Keys()
    with pytest.raises(AuthError) as exc:
        run(auth(k).authenticate(make(k)))
    assert exc.value.code == code
    assert exc.value.status == 401


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_alg_none_and_hmac_confusion_are_refused() -> None:
    k = Keys()
    claims = {"iss": ISS, "sub": "m", "aud": "extproc", "exp": NOW + 600}
    none = f"{_b64({'alg': 'none', 'kid': 'k1'})}.{_b64(claims)}."
    jwks = run(k.fetch(issuer()))
    hs = mint_token(json.dumps(jwks["keys"][0]), subject="m", issuer=ISS, audience="extproc", algorithm="HS256",
                    kid="k1", now=NOW)
    a = auth(k)
    for tok in (none, hs):
        with pytest.raises(AuthError) as exc:
            run(a.authenticate(tok))
        assert exc.value.code == "unsupported_alg"


def test_alg_must_match_the_key() -> None:
    k = Keys()
    pem, _ = k.pems["k1"]
    ps = mint_token(pem, subject="a", issuer=ISS, audience="extproc", kid="k1", algorithm="RS384", now=NOW)
    # The JWKS key declares RS256: an RS384 token with that key is refused though it verifies.
    with pytest.raises(AuthError) as exc:
        run(auth(k).authenticate(ps))
    assert exc.value.code == "unsupported_alg"


def test_issuer_algorithm_allow_list() -> None:
    k = Keys()
    with pytest.raises(AuthError):
        run(auth(k, algorithms=("ES256",)).authenticate(k.token()))


def test_unknown_kid_refreshes_once_then_rate_limited() -> None:
    k = Keys()
    clock = [NOW]
    a = auth(k, clock)
    run(a.authenticate(k.token()))
    assert k.fetches == 1
    k.pems["k2"] = (new_ec_pem(), "ES256")
    clock[0] += 5  # inside the 10 s window: no refetch, so k2 is unknown
    with pytest.raises(AuthError) as exc:
        run(a.authenticate(k.token("k2", now=clock[0])))
    assert exc.value.code == "unknown_key" and k.fetches == 1
    clock[0] += 6
    ident = run(a.authenticate(k.token("k2", now=clock[0])))
    assert ident.user == "alice" and k.fetches == 2
    pem, _ = k.pems["k2"]
    for i in range(5):  # forged key ids cannot force fetches
        forged = mint_token(pem, subject="m", issuer=ISS, audience="extproc", kid=f"forged{i}",
                            algorithm="ES256", now=clock[0])
        with pytest.raises(AuthError):
            run(a.authenticate(forged))
    assert k.fetches == 2


def test_cached_token_still_expires() -> None:
    k = Keys()
    clock = [NOW]
    a = auth(k, clock, clock_skew_seconds=0)
    tok = k.token(ttl_seconds=60)
    run(a.authenticate(tok))
    clock[0] += 61
    with pytest.raises(AuthError) as exc:
        run(a.authenticate(tok))
    assert exc.value.code == "token_expired"


def test_the_synchronous_cache_look_up_knows_only_verified_unexpired_tokens() -> None:
    k = Keys()
    clock = [NOW]
    a = auth(k, clock, clock_skew_seconds=0)
    tok = k.token(ttl_seconds=60)
    assert a.cached(tok) is None and a.cached(None) is None and a.cached("") is None  # never verified
    ident = run(a.authenticate(tok))
    assert a.cached(tok) == ident
    forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    assert a.cached(forged) is None  # a different string: it must go through verification
    clock[0] += 61
    assert a.cached(tok) is None  # expired: authenticate() says so with its error


def test_kubernetes_service_account_token() -> None:
    k = Keys()
    tok = k.token(subject="system:serviceaccount:team-a:agent",
                  extra={"kubernetes.io": {"namespace": "team-a"}}, audience=["extproc", "other"])
    ident = run(auth(k).authenticate(tok))
    assert ident.workload == "system:serviceaccount:team-a:agent"
    assert ident.user == "system:serviceaccount:team-a:agent"


def test_jwks_unavailable_is_503() -> None:
    async def broken(cfg: IssuerConfig) -> Mapping[str, Any]:
        raise OSError("connection refused")

    k = Keys()
    a = Authenticator([issuer()], broken, clock=lambda: NOW)
    with pytest.raises(AuthError) as exc:
        run(a.authenticate(k.token()))
    assert exc.value.status == 503 and exc.value.code == "jwks_unavailable"


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  x.y.z ") == "x.y.z"
    assert bearer_token("Basic Zm9v") is None
    assert bearer_token(None, "a.b.c") == "a.b.c"
    assert bearer_token(None, "sk-not-a-jwt") is None
    assert bearer_token(None) is None


def test_error_messages_never_contain_the_token() -> None:
    k = Keys()
    tok = k.token(audience="other")
    with pytest.raises(AuthError) as exc:
        run(auth(k).authenticate(tok))
    assert tok not in str(exc.value) and tok.split(".")[1] not in exc.value.message
