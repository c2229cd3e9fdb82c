"""A Bearer token server, as Docker Hub runs one, for docker-registry's ``auth: token``.

docker-registry checks the JWTs it issues against a certificate; this server signs
them with a key made for the test run and grants per user the actions on repository
name prefixes that the test configures.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port

SERVICE = "damselfly-test-registry"
ISSUER = "damselfly-test-token-issuer"


@dataclass
class TokenServer:
    workdir: Path
    # user -> (password, {repository prefix: actions})
    users: dict[str, tuple[str, dict[str, list[str]]]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    issued: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "damselfly test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.workdir / "token-signer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth_config(self) -> dict:
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert_path)}}

    def grants(self, user: str | None, scope: str) -> list[dict]:
        """The access a user gets for a ``repository:name:actions`` scope."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or user is None:
            return []
        allowed: set[str] = set()
        for prefix, acts in self.users[user][1].items():
            if name.startswith(prefix):
                allowed.update(acts)
        granted = [a for a in actions.split(",") if a in allowed]
        return [{"type": "repository", "name": name, "actions": granted}] if granted else []

    def token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        access = [grant for scope in scopes for grant in self.grants(user, scope)]
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "iat": now, "nbf": now - 10, "exp": now + 600,
                  "jti": secrets.token_hex(8), "access": access}
        self.issued.append(claims)
        x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [x5c]})

    def authenticate(self, header: str | None) -> str | None | bool:
        """The user of a Basic header, None for anonymous, False for bad credentials."""
        if not header:
            return None
        try:
            user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return False
        if user in self.users and secrets.compare_digest(self.users[user][0], password):
            return user
        return False

    def start(self) -> "TokenServer":
        server = self

        class Handler(QuietRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                """The Docker token flow: Basic credentials, scopes in the query."""
                query = parse_qs(urlsplit(self.path).query)
                self._answer(server.authenticate(self.headers.get("Authorization")), query.get("scope", []))

            def do_POST(self) -> None:  # noqa: N802
                """The OAuth2 password grant that containerd tries first."""
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
                scopes = [s for scope in form.get("scope", []) for s in scope.split(" ")]
                self._answer(server.authenticate(basic), scopes)

            def _answer(self, user: str | None | bool, scopes: list[str]) -> None:
                if user is False:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": (t := server.token(user, scopes)), "access_token": t,
                                   "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()


def bearer(client: httpx.Client, challenge: str, credentials: tuple[str, str] | None) -> str:
    """The Authorization value a client gets from the token server a 401 ``challenge`` names."""
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    response = client.get(params["realm"], params={"service": params["service"], "scope": params["scope"]},
                          auth=httpx.BasicAuth(*credentials) if credentials else None)
    response.raise_for_status()
    return "Bearer " + response.json()["token"]
