"""Secrets sealed for one holder of a key (ECIES on the cluster's P-256 keys): what the
manager does with a preheat job's registry credentials, so that Redis and the schedulers
carry only ciphertext and only the seed peer they are for can read them.

A sealed value is ``base64(ephemeral public key (65 bytes) | nonce (12) | AES-256-GCM
ciphertext)``. The key is HKDF-SHA256 of the ECDH secret; ``context`` (the job and the
host it is for) is authenticated, so a value sealed for one job or host opens for no other.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_POINT = 65
_NONCE = 12
_INFO = b"damselfly sealed v1"


class SealError(ValueError):
    """A value that does not open with this key and context (or a key that cannot seal)."""


def public_key_of_certificate(der: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a DER certificate (as a TLS peer presented it)."""
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SealError("the certificate's key is not a P-256 key")
    return key


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SealError("the key is not an elliptic-curve key")
    return key


def _key(shared: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + b"|" + context).derive(shared)


def seal(public_key: ec.EllipticCurvePublicKey, plaintext: bytes, context: bytes) -> str:
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    point = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    nonce = os.urandom(_NONCE)
    ciphertext = AESGCM(_key(ephemeral.exchange(ec.ECDH(), public_key), context)).encrypt(nonce, plaintext, context)
    return base64.b64encode(point + nonce + ciphertext).decode()


def unseal(private_key: ec.EllipticCurvePrivateKey, sealed: str, context: bytes) -> bytes:
    try:
        raw = base64.b64decode(sealed, validate=True)
        point, nonce, ciphertext = raw[:_POINT], raw[_POINT:_POINT + _NONCE], raw[_POINT + _NONCE:]
        sender: Any = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        return AESGCM(_key(private_key.exchange(ec.ECDH(), sender), context)).decrypt(nonce, ciphertext, context)
    except (binascii.Error, ValueError, InvalidTag):
        raise SealError("the sealed value does not open with this host's key for this job") from None


def seal_for_host(authorization: str, public_key: ec.EllipticCurvePublicKey | None, context: str) -> str:
    """A job's Authorization value as it travels to one seed: sealed for its key, bound to
    ``context`` (the job, the host, the registry and repository it is for, until when), or,
    in a deployment with no cluster identity (one process: `run`), in clear."""
    if public_key is None:
        return "clear:" + base64.b64encode(authorization.encode()).decode()
    return "sealed:" + seal(public_key, authorization.encode(), context.encode())


def open_on_host(value: str, private_key: ec.EllipticCurvePrivateKey | None, context: str) -> str:
    """What ``seal_for_host`` made, opened by the host it is for, for the ``context`` it was
    sealed for. A host with a key takes sealed values only: clear ones would have crossed
    the network readable."""
    kind, _, body = value.partition(":")
    if private_key is not None and kind == "sealed":
        return unseal(private_key, body, context.encode()).decode()
    if private_key is None and kind == "clear":
        try:
            return base64.b64decode(body, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise SealError("the credentials are not base64") from None
    raise SealError(f"credentials {kind or 'without a kind'} cannot be opened by a host "
                    f"{'with' if private_key is not None else 'without'} a cluster identity")
