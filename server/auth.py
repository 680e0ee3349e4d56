"""Bearer tokens, short-lived tickets and the role matrix.

``settings.server.tokens`` maps a token to ``role`` or ``role:id`` (for agents the id
is their agent id; for other roles it names the person, e.g. ``supervisor:maria``).
API and ingest clients send ``Authorization: Bearer <token>`` (Twilio, which cannot
send headers: ``customParameters.token``).  Browsers never put the token in a URL:
a page trades it (``POST /v1/ws-ticket``) for a single-use *ticket* that lives 30 s
and opens the websocket with ``?ticket=``; batch reports are opened with a
single-use link ticket that becomes a cookie holding a ticket valid only for that
job's reports.  A bearer token in a URL (``?token=``) is never accepted; whatever a
client still sends there is scrubbed from the access log (:mod:`calltone.server.security`).

With no tokens configured the service runs in *dev mode*: every request is ``admin``.
:func:`check_bind` refuses dev mode on anything but a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

log = logging.getLogger("calltone.server.auth")

ROLES = ("ingest", "agent", "supervisor", "qa", "admin")
REPORT_COOKIE = "calltone_reports"  # set on /v1/jobs/*/reports/: a ticket valid only for that job's reports
TICKET_PREFIX = "tkt_"  # tickets are told from tokens by this prefix (configured tokens may not start with it)
WS_SCOPE = "ws"  # scope of the tickets that open websockets
WS_TICKET_TTL_S = 30.0
REPORT_LINK_TTL_S = 300.0  # a report link (?ticket=) must be opened within 5 minutes, once
REPORT_COOKIE_TTL_S = 8 * 3600.0
MAX_TICKETS = 10_000  # outstanding tickets kept; the oldest go first

# permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "ingest": frozenset({"ingest", "admin"}),
    "read_calls": frozenset({"agent", "supervisor", "qa", "admin"}),   # agents: own calls only
    "alerts": frozenset({"supervisor", "admin"}),                       # live alert feed
    "list_alerts": frozenset({"supervisor", "qa", "admin"}),
    "read_kpis": frozenset({"supervisor", "qa", "admin"}),              # KPIs over time and their anomalies
    "ack": frozenset({"supervisor", "admin"}),
    "metrics": frozenset({"admin", "supervisor"}),
    "score": frozenset({"qa", "admin"}),                                # batch scoring jobs and their reports
    "operate": frozenset({"admin"}),                                    # drain the node
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

    def call_access(self, exists: bool, call_agent_id: str | None) -> Literal["ok", "not_found", "forbidden"]:
        """How to answer a request for one call.  An agent gets ``forbidden`` both for another agent's call
        and for an id that does not exist, so that call ids cannot be probed; other readers see every call."""
        if exists and self.can_see_call(call_agent_id):
            return "ok"
        return "not_found" if self.can("read_calls") and self.role != "agent" else "forbidden"


DEV_PRINCIPAL = Principal("admin", "dev", dev=True)


def report_scope(job_id: str) -> str:
    """Scope of the cookie ticket that reads one job's reports."""
    return f"reports:{job_id}"


def report_link_scope(job_id: str) -> str:
    """Scope of the single-use ticket in a report link (traded for the cookie)."""
    return f"report-link:{job_id}"


@dataclass(frozen=True)
class Ticket:
    principal: Principal
    scope: str
    expires: float  # time.monotonic()
    single_use: bool


class TicketBook:
    """Tickets issued to holders of a bearer token, in memory (a restart forgets them: pages fetch new ones)."""

    def __init__(self, max_tickets: int = MAX_TICKETS) -> None:
        self._tickets: dict[str, Ticket] = {}
        self._max = max_tickets
        self._lock = threading.Lock()  # REST dependencies run in FastAPI's thread pool

    def issue(self, principal: Principal, scope: str, ttl_s: float, single_use: bool = True) -> str:
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._tickets.items() if t.expires <= now]:
                del self._tickets[key]
            while len(self._tickets) >= self._max:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[ticket] = Ticket(principal, scope, now + ttl_s, single_use)
        return ticket

    def redeem(self, ticket: str, scope: str) -> Principal | None:
        """The ticket's principal if it is known, unexpired and for ``scope``; a single-use ticket is spent."""
        with self._lock:
            found = self._tickets.get(ticket)
            if found is None or found.scope != scope:
                return None
            expired = found.expires <= time.monotonic()
            if expired or found.single_use:
                del self._tickets[ticket]
            return None if expired else found.principal


def parse_tokens(tokens: Mapping[str, str]) -> dict[str, Principal]:
    out: dict[str, Principal] = {}
    for token, spec in tokens.items():
        if not token or len(token) < 8:
            raise ConfigError("every server token must be at least 8 characters long")
        if token.startswith(TICKET_PREFIX):
            raise ConfigError(f"server tokens may not start with {TICKET_PREFIX!r} (the prefix of tickets)")
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
        self.tickets = TicketBook()

    @property
    def dev_mode(self) -> bool:
        return not self._tokens

    def lookup(self, token: str | None, scope: str | None = None) -> Principal | None:
        """The principal for a bearer token (constant-time compare) or, when ``scope`` is given, for a ticket
        issued for that scope (single-use tickets are spent); DEV_PRINCIPAL in dev mode; else None."""
        if self.dev_mode:
            return DEV_PRINCIPAL
        if not token:
            return None
        if token.startswith(TICKET_PREFIX):
            return self.tickets.redeem(token, scope) if scope else None
        found = None
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        return found

    @staticmethod
    def bearer(headers: Mapping[str, str]) -> str | None:
        """The token of an ``Authorization: Bearer`` header."""
        scheme, _, value = (headers.get("authorization") or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    @staticmethod
    def token_from(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """A websocket's credential: the bearer header or ``?ticket=`` (a bearer token is never taken from a URL)."""
        return Authenticator.bearer(headers) or query.get("ticket") or None

    def roles(self) -> Iterable[Principal]:
        return self._tokens.values()
