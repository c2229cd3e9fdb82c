"""A cluster CA for the processes a test or benchmark starts: one per run, made on first use."""

from __future__ import annotations

import atexit
import functools
import shutil
import ssl
import tempfile
from pathlib import Path

from damselfly.lib.tls import ClusterTLS, init_ca, issue

HARNESS_NAME = "harness"  # the certificate the harness itself uses to call members' HTTPS ports


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="damselfly-ca-"))
    atexit.register(shutil.rmtree, root, True)
    init_ca(root / "ca")
    return root


def tls_dir(name: str, *roles: str) -> Path:
    """The --tls-dir of host ``name`` with ``roles``, issued by this run's CA (once per name and roles)."""
    out = _root() / f"{name}-{'+'.join(roles)}"
    if not (out / "cert.pem").exists():
        issue(_root() / "ca", name, roles, out, ips=("127.0.0.1",))
    return out


def ca_dir() -> Path:
    """The CA itself (ca.pem, ca-key.pem), for tests that issue certificates of their own."""
    return _root() / "ca"


@functools.cache
def harness_context() -> ssl.SSLContext:
    """A member's client context (role peer) that trusts any member: for health checks and metrics."""
    return ClusterTLS.load(tls_dir(HARNESS_NAME, "peer")).client_context()
