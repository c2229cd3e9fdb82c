"""Statements signed by a member, checked by the hosts that act on them: what a preheat
job may place (its registry, repository, whether it is private, the tags and digests the
manager resolved), and which manifest a tag named when a seed resolved it, so that nothing
between them (Redis, a scheduler) can change it.

With a cluster identity the manager signs with its certificate's key (ECDSA P-256,
SHA-256) and sends the certificate along; a host accepts it only if the cluster CA issued
it, it holds the role manager and it is within its validity. `damselfly run` without one
signs with a key its processes share in memory (HMAC-SHA256): nothing outside the
process can sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from damselfly.lib.sealed import SealError, load_private_key

MANAGER_ROLE = "manager"


@dataclass(frozen=True)
class Signature:
    kind: str  # "ecdsa" (a manager's certificate key) or "hmac" (a key shared in one process)
    value: str  # base64
    certificate: str = ""  # PEM, for ecdsa


class Signer:
    def __init__(self, sign: Callable[[bytes], bytes], kind: str, certificate: str = "") -> None:
        self._sign, self.kind, self.certificate = sign, kind, certificate

    @classmethod
    def with_certificate(cls, cert_pem: bytes, key_pem: bytes) -> "Signer":
        key = load_private_key(key_pem)
        return cls(lambda data: key.sign(data, ec.ECDSA(hashes.SHA256())), "ecdsa", cert_pem.decode())

    @classmethod
    def of_tls_dir(cls, directory: Path) -> "Signer":
        return cls.with_certificate((directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes())

    @classmethod
    def with_shared_key(cls, key: bytes) -> "Signer":
        return cls(lambda data: hmac.new(key, data, hashlib.sha256).digest(), "hmac")

    def sign(self, data: bytes) -> Signature:
        return Signature(self.kind, base64.b64encode(self._sign(data)).decode(), self.certificate)


class Verifier:
    """Checks statements for one host: against the cluster CA, or the shared key of `run`."""

    def __init__(self, ca_pem: bytes | None = None, shared_key: bytes | None = None) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_pem) if ca_pem is not None else None
        self._shared_key = shared_key

    @classmethod
    def of_tls_dir(cls, directory: Path) -> "Verifier":
        return cls(ca_pem=(directory / "ca.pem").read_bytes())

    def verify(self, data: bytes, signature: Signature, role: str = MANAGER_ROLE) -> None:
        """SealError, saying why, unless a member of ``role`` (the manager, or a seed for
        its tag records) signed ``data``."""
        try:
            raw = base64.b64decode(signature.value, validate=True)
        except binascii.Error:
            raise SealError("the signature is not base64") from None
        if signature.kind == "hmac" and self._shared_key is not None:
            if not hmac.compare_digest(raw, hmac.new(self._shared_key, data, hashlib.sha256).digest()):
                raise SealError("the statement's signature does not match")
            return
        if signature.kind == "ecdsa" and self._ca is not None:
            try:
                self._member_key(signature.certificate, role).verify(raw, data, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                raise SealError("the statement's signature does not match") from None
            return
        raise SealError(f"this host takes no {signature.kind!r} signatures "
                        f"({'a cluster identity' if self._ca is not None else 'no cluster identity'})")

    def _member_key(self, cert_pem: str, role: str) -> ec.EllipticCurvePublicKey:
        assert self._ca is not None
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem.encode())
            certificate.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SealError("the statement's certificate was not issued by the cluster CA") from None
        now = datetime.now(timezone.utc)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise SealError("the statement's certificate is not valid now")
        roles = {str(attribute.value) for attribute in
                 certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
        if role not in roles:
            raise SealError(f"the statement's certificate is not a {role}'s")
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SealError("the statement's certificate has no elliptic-curve key")
        return key
