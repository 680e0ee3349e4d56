"""Bearer-token authentication and the role matrix.

``settings.server.tokens`` maps a token to ``role`` or ``role:id`` (for agents the id
is their agent id; for other roles it names the person, e.g. ``supervisor:maria``).
Tokens arrive in ``Authorization: Bearer <token>`` or, for browsers and websockets,
``?token=<token>`` (Twilio: ``customParameters.token``).

With no tokens configured the service runs in *dev mode*: every request is ``admin``.
:func:`check_bind` refuses dev mode on anything but a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

ROLES = ("ingest", "agent", "supervisor", "qa", "admin")
REPORT_COOKIE = "calltone_reports"  # set on /v1/jobs/*/reports/ so that report pages' relative links carry the token

# permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "ingest": frozenset({"ingest", "admin"}),
    "read_calls": frozenset({"agent", "supervisor", "qa", "admin"}),   # agents: own calls only
    "alerts": frozenset({"supervisor", "admin"}),                       # live alert feed
    "list_alerts": frozenset({"supervisor", "qa", "admin"}),
    "ack": frozenset({"supervisor", "admin"}),
    "metrics": frozenset({"admin", "supervisor"}),
    "score": frozenset({"qa", "admin"}),                                # batch scoring jobs and their reports
}


class ConfigError(ValueError):
    """The server settings cannot be used as they are."""


@dataclass(frozen=True)
class Principal:
    role: str
    ident: str | None = None  # agent id for agents, a name for others
    dev: bool = False

    @property
    def name(self) -> str:
        return f"{self.role}:{self.ident}" if self.ident else self.role

    @property
    def agent_id(self) -> str | None:
        return self.ident if self.role == "agent" else None

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]

    def can_see_call(self, call_agent_id: str | None) -> bool:
        """Agents see only calls carrying their agent id; other readers see all."""
        if not self.can("read_calls"):
            return False
        if self.role == "agent":
            return bool(self.ident) and call_agent_id == self.ident
        return True


DEV_PRINCIPAL = Principal("admin", "dev", dev=True)


def parse_tokens(tokens: Mapping[str, str]) -> dict[str, Principal]:
    out: dict[str, Principal] = {}
    for token, spec in tokens.items():
        if not token or len(token) < 8:
            raise ConfigError("every server token must be at least 8 characters long")
        role, _, ident = str(spec).partition(":")
        role = role.strip().lower()
        if role not in ROLES:
            raise ConfigError(f"token role {role!r} is not one of {', '.join(ROLES)} (in server.tokens)")
        if role == "agent" and not ident.strip():
            raise ConfigError("agent tokens need an agent id: 'agent:<agent_id>' (in server.tokens)")
        out[token] = Principal(role, ident.strip() or None)
    return out


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: Mapping[str, str]) -> None:
    """Refuse to serve an open (token-less) service beyond loopback."""
    if not tokens and not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host} without authentication: configure server.tokens "
            "(e.g. CALLTONE_SERVER__TOKENS='{\"<long-random-token>\": \"admin\"}') or bind 127.0.0.1"
        )


class Authenticator:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = parse_tokens(tokens)

    @property
    def dev_mode(self) -> bool:
        return not self._tokens

    def lookup(self, token: str | None) -> Principal | None:
        """The principal for a token (constant-time compare), DEV_PRINCIPAL in dev mode, else None."""
        if self.dev_mode:
            return DEV_PRINCIPAL
        if not token:
            return None
        found = None
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        return found

    @staticmethod
    def token_from(headers: Mapping[str, str], query: Mapping[str, str],
                   cookies: Mapping[str, str] | None = None) -> str | None:
        auth = headers.get("authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return query.get("token") or (cookies or {}).get(REPORT_COOKIE) or None

    def roles(self) -> Iterable[Principal]:
        return self._tokens.values()
