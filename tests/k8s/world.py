"""The outside world of a pod run by :mod:`tests.k8s.podrunner`: what cluster DNS, the API
server and the model providers would be, faked on the host end of the pod's veth.

* one HTTPS server on ``host_ip:443`` routing by ``Host``: ``kubernetes.default.svc`` serves
  the API server's OIDC discovery document and JWKS (a bearer token is required, as the
  API server does), every provider host is the fake LLM upstream;
* a certificate authority that signs it: ``ca_pem`` is what ``kube-root-ca.crt`` holds
  and what the pod's system trust store gets appended;
* a Redis bound to ``host_ip`` (``redis://extproc-redis.extproc-system.svc:6379``);
* ``hosts``: the names above -> ``host_ip``, the pod's ``/etc/hosts`` (cluster DNS).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extproc.admin.http import Request, Response, serve_http
from extproc.dev.keys import mint_token
from extproc.dev.procs import Proc, find_redis_server, wait_tcp
from tests.fakes.oidc import new_rsa_pem, public_jwk
from tests.fakes.upstream import BackgroundLoop, FakeUpstream

API_SERVER = "kubernetes.default.svc"
PROVIDER_HOSTS = ("api.openai.com", "api.anthropic.com")
REDIS_HOST = "extproc-redis.extproc-system.svc"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_leaf(names: list[str], ip: str) -> tuple[str, str, str]:
    """(ca_pem, leaf_cert_pem, leaf_key_pem), P-256, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("podrunner test CA")).issuer_name(_name("podrunner test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    leaf = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem).decode(),
        leaf.public_bytes(pem).decode(),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    )


class World:
    def __init__(self, host_ip: str, work: Path, issuer: str, host_ip6: str | None = None) -> None:
        self.host_ip = host_ip
        self.host_ip6 = host_ip6
        self.work = work
        self.issuer = issuer
        self.upstream = FakeUpstream()
        self.key_pem = new_rsa_pem()
        self.jwks_requests: list[str] = []
        self.ca_pem, self._cert, self._key = make_ca_and_leaf([API_SERVER, *PROVIDER_HOSTS], host_ip)
        self.loop = BackgroundLoop()
        self.redis: Proc | None = None

    @property
    def hosts(self) -> dict[str, str]:
        names = [API_SERVER, f"{API_SERVER}.cluster.local", *PROVIDER_HOSTS, REDIS_HOST]
        return {n: self.host_ip for n in names}

    def trust_store(self) -> bytes:
        """The system bundle plus this world's CA: what the pod's image would trust."""
        system = SYSTEM_CA.read_bytes() if SYSTEM_CA.exists() else b""
        return system + b"\n" + self.ca_pem.encode()

    def token(self, sub: str, audience: str, ttl: int = 3600) -> str:
        return mint_token(self.key_pem, subject=sub, issuer=self.issuer, audience=audience, kid="k1",
                          ttl_seconds=ttl)

    async def _handle(self, req: Request) -> Response:
        host = req.headers.get("host", "").split(":")[0]
        if host in (API_SERVER, f"{API_SERVER}.cluster.local"):
            auth = req.headers.get("authorization", "")
            self.jwks_requests.append(req.path)
            if not auth.startswith("Bearer ") or len(auth) < 20:
                return Response.json(401, b'{"kind":"Status","code":401}')
            if req.path == "/.well-known/openid-configuration":
                doc = {"issuer": self.issuer, "jwks_uri": f"https://{API_SERVER}/openid/v1/jwks"}
                return Response.json(200, json.dumps(doc).encode())
            if req.path == "/openid/v1/jwks":
                return Response.json(200, json.dumps({"keys": [public_jwk(self.key_pem, "k1")]}).encode())
            return Response.json(404, b"{}")
        return await self.upstream.handle(req)

    async def _start(self) -> None:
        d = Path(tempfile.mkdtemp(dir=self.work))
        (d / "tls.crt").write_text(self._cert)
        (d / "tls.key").write_text(self._key)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
        self._servers = [await serve_http(self._handle, self.host_ip, 443, ssl_context=ctx)]
        if self.host_ip6:
            self._servers.append(await serve_http(self._handle, self.host_ip6, 443, ssl_context=ctx))
        # Plain HTTP on 80 as well: what an app calling a provider without TLS would reach.
        self._servers.append(await serve_http(self._handle, self.host_ip, 80))
        if self.host_ip6:
            self._servers.append(await serve_http(self._handle, self.host_ip6, 80))

    def start(self) -> World:
        self.loop.run(self._start())
        binary = find_redis_server()
        assert binary, "no redis-server"
        rdir = self.work / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        self.redis = Proc("redis", [binary, "--bind", self.host_ip, "--port", "6379", "--protected-mode", "no",
                                    "--save", "", "--appendonly", "no", "--dir", str(rdir)],
                          rdir / "redis.log").start()
        wait_tcp(self.host_ip, 6379, 10, self.redis)
        return self

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        self.loop.run(self._close())
        self.loop.stop()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()


@contextmanager
def world(host_ip: str, work: Path, issuer: str, host_ip6: str | None = None) -> Iterator[World]:
    w = World(host_ip, work, issuer, host_ip6).start()
    try:
        yield w
    finally:
        w.stop()
