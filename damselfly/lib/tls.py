"""Cluster identity: a cluster CA, host certificates that carry a role, and the TLS
contexts that make every link between members mutually authenticated.

A host's certificate names it (common name) and its role (organizational unit), and
also carries the DNS name ``<role>.role.damselfly``: a client that must reach a given
role (the scheduler API, a seed peer) connects with that name as ``server_hostname``,
so the TLS handshake itself refuses a member of another role before a byte of the
request (or a caller's credentials) is sent.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("peer", "seed", "scheduler", "manager")
CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
ROLE_DOMAIN = "role.damselfly"
CA_DAYS, HOST_DAYS = 3650, 825


class TLSError(Exception):
    """A CA or certificate directory that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Identity:
    """Who is at the other end of an authenticated connection. ``role`` is the first of its
    ``roles``; an all-in-one node (``damselfly run``) holds a certificate with several."""

    name: str
    role: str
    roles: frozenset[str] = frozenset()

    def has_role(self, role: str) -> bool:
        return role == self.role or role in self.roles


def role_hostname(role: str) -> str:
    """The name a certificate of ``role`` answers to in a TLS handshake."""
    return f"{role}.{ROLE_DOMAIN}"


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # fast handshakes on the piece path


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path, name: str = "damselfly cluster CA") -> None:
    """Write a new cluster CA into ``directory``; refuse to overwrite one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    if (directory / CA_KEY_FILE).exists():
        raise TLSError(f"{directory / CA_KEY_FILE} exists: a cluster keeps its CA")
    _private_dir(directory)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write(directory / CA_KEY_FILE, _pem_key(key), 0o600)
    _write(directory / CA_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue(ca_dir: Path, name: str, role: str | tuple[str, ...], out_dir: Path, ips: tuple[str, ...] = (),
          dns: tuple[str, ...] = ()) -> None:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` for host ``name`` in ``role`` (or roles) into ``out_dir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    roles = (role,) if isinstance(role, str) else tuple(dict.fromkeys(role)) or ("peer",)
    for one in roles:
        if one not in ROLES:
            raise TLSError(f"unknown role {one!r}: one of {', '.join(ROLES)}")
    if not name or any(c in name for c in "/\\\n\r"):
        raise TLSError(f"invalid host name {name!r}")
    try:
        ca_pem, ca_key_pem = (ca_dir / CA_FILE).read_bytes(), (ca_dir / CA_KEY_FILE).read_bytes()
    except OSError as exc:
        raise TLSError(f"cannot read the cluster CA in {ca_dir}: {exc.strerror}") from None
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    try:
        addresses = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise TLSError(str(exc)) from None
    names = [*(x509.DNSName(role_hostname(r)) for r in roles), *(x509.DNSName(d) for d in dns), *addresses]
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in roles)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=HOST_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _private_dir(out_dir)
    _write(out_dir / CA_FILE, ca_pem, 0o644)
    _write(out_dir / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out_dir / KEY_FILE, _pem_key(key), 0o600)


@dataclass(frozen=True)
class ClusterTLS:
    """A host's cluster identity, loaded from a ``--tls-dir`` (ca.pem, cert.pem, key.pem)."""

    directory: Path
    identity: Identity

    @classmethod
    def load(cls, directory: Path, *roles: str) -> "ClusterTLS":
        """The identity in ``directory``; TLSError unless its certificate holds every one of
        ``roles`` (what the command that loads it serves as)."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
            for name in (CA_FILE, KEY_FILE):
                (directory / name).stat()
        except OSError as exc:
            raise TLSError(f"--tls-dir {directory}: {exc.filename}: {exc.strerror}") from None
        except ValueError as exc:
            raise TLSError(f"--tls-dir {directory}: {CERT_FILE} is not a PEM certificate: {exc}") from None
        identity = _identity_of_subject(cert.subject)
        if identity is None:
            raise TLSError(f"--tls-dir {directory}: {CERT_FILE} was not issued by `damselfly ca issue` (no role)")
        missing = [role for role in roles if not identity.has_role(role)]
        if missing:
            raise TLSError(f"the certificate of {identity.name} has role {'+'.join(sorted(identity.roles))}; this "
                           f"command needs {'+'.join(roles)} (damselfly ca issue --role ...)")
        tls = cls(directory, identity)
        tls.server_context()  # a key that does not match, a CA that cannot be read: fail at start, not per request
        return tls

    def _load_chain(self, context: ssl.SSLContext) -> ssl.SSLContext:
        try:
            context.load_verify_locations(cafile=str(self.directory / CA_FILE))
            context.load_cert_chain(str(self.directory / CERT_FILE), str(self.directory / KEY_FILE))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"--tls-dir {self.directory}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def server_context(self) -> ssl.SSLContext:
        """Serve only clients whose certificate the cluster CA signed."""
        context = self._load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, role: str | None = None) -> ssl.SSLContext:
        """Present this host's certificate; trust only servers the cluster CA signed and, with
        ``role``, only those of that role (connect with ``server_hostname=role_hostname(role)``)."""
        context = self._load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        context.check_hostname = role is not None
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def _identity_of_subject(subject: Any) -> Identity | None:
    from cryptography.x509.oid import NameOID

    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    roles = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    held = [str(r.value) for r in roles]
    if not names or not held or any(r not in ROLES for r in held):
        return None
    return Identity(str(names[0].value), held[0], frozenset(held))


def identity_of_peercert(peercert: dict[str, Any] | None) -> Identity | None:
    """The identity in a verified peer certificate as ``ssl`` decodes it (None without one)."""
    if not peercert:
        return None
    pairs = [(key, value) for rdn in peercert.get("subject", ()) for key, value in rdn]
    names = [value for key, value in pairs if key == "commonName"]
    roles = [value for key, value in pairs if key == "organizationalUnitName"]
    if not names or not roles or any(r not in ROLES for r in roles):
        return None
    return Identity(names[0], roles[0], frozenset(roles))


def request_identity(request: Any) -> Identity | None:
    """Who sent an aiohttp request: the identity in its client certificate, or None on plain HTTP."""
    transport = request.transport
    return identity_of_peercert(transport.get_extra_info("peercert")) if transport is not None else None


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
