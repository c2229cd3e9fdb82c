"""Who may call what (pure): the RBAC decision for users and tokens, and the admission rule
for components. The aiohttp layer gathers the facts (the token's owner and scopes, the
caller's certificate or address) and asks these functions; they decide without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from damselfly.manager.routes import Access

SESSION = "session"
PERSONAL = "personal"

# A component kind -> the certificate role that may register it.
COMPONENT_ROLES = {"scheduler": "scheduler", "seed-peer": "seed", "peer": "peer"}


@dataclass(frozen=True)
class Principal:
    """A signed-in caller: a user's session, or a personal access token acting for its owner
    within its scopes."""

    user_id: int
    user_name: str
    role: str
    token_kind: str  # SESSION or PERSONAL
    token_id: int
    token_name: str | None = None
    scopes: frozenset[str] = frozenset()

    @property
    def credential(self) -> str:
        """How the caller proved who it is, as the audit log shows it."""
        return SESSION if self.token_kind == SESSION else f"token {self.token_name}"


class Verdict(Enum):
    ALLOW = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


ALLOW = Decision(Verdict.ALLOW)


def decide(access: Access, scope: str | None, principal: Principal | None) -> Decision:
    """Whether ``principal`` (None: no token) may call a route of ``access`` and ``scope``.

    Guest-read routes admit any signed-in caller. Root routes admit a root user's session;
    a personal access token only when the route has a scope and the token holds it (and
    its owner is still root): a token never does more than its owner, nor outside its
    scopes. Component routes are decided by ``admit_component``.
    """
    if access in (Access.PUBLIC, Access.COMPONENT):
        return ALLOW
    if principal is None:
        return Decision(Verdict.UNAUTHENTICATED, "sign in first: send Authorization: Bearer <token>")
    if access is Access.READ:
        return ALLOW
    if principal.role != "root":
        return Decision(Verdict.FORBIDDEN, f"user {principal.user_name} is a {principal.role}: only root may do this")
    if principal.token_kind == SESSION:
        return ALLOW
    if scope is None:
        return Decision(Verdict.FORBIDDEN, f"token {principal.token_name} cannot do this: only a root user's "
                                           "session can (no token scope covers it)")
    if scope not in principal.scopes:
        return Decision(Verdict.FORBIDDEN, f"token {principal.token_name} has scopes "
                                           f"{', '.join(sorted(principal.scopes))}; this needs scope {scope}")
    return ALLOW


def admit_component(tls: bool, identity_name: str | None, identity_roles: frozenset[str], caller_is_loopback: bool,
                    kind: str | None, host_id: str | None) -> Decision:
    """Whether a component call may proceed.

    With TLS, the caller must hold a cluster certificate, of the role its kind needs (when
    ``kind`` is known) and named as the host it speaks for (when ``host_id`` is known): a
    member registers and keeps alive only itself. Without TLS the manager trusts only its
    own machine, as the scheduler does.
    """
    if not tls:
        if caller_is_loopback:
            return ALLOW
        return Decision(Verdict.FORBIDDEN, "components register over loopback only when the manager has no --tls-dir")
    if identity_name is None:
        return Decision(Verdict.FORBIDDEN, "components must present a cluster certificate")
    if kind is not None:
        role = COMPONENT_ROLES[kind]
        if role not in identity_roles:
            return Decision(Verdict.FORBIDDEN, f"a {kind} needs a certificate of role {role}; {identity_name} has "
                                               f"{'+'.join(sorted(identity_roles))}")
    if host_id is not None and host_id != identity_name:
        return Decision(Verdict.FORBIDDEN, f"certificate {identity_name} cannot speak for host {host_id}")
    return ALLOW
