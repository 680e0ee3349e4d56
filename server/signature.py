"""Verifying how telephony platforms sign their websocket upgrades.

* Genesys AudioHook: HTTP Message Signatures (RFC 9421, as draft 11 that AudioHook
  cites), ``hmac-sha256`` keyed with the base64-decoded client secret, over
  ``@request-target``, ``@authority``, ``audiohook-organization-id``,
  ``audiohook-session-id``, ``audiohook-correlation-id`` and ``x-api-key``;
  ``keyid`` is the API key; ``created`` / ``expires`` are checked with a clock-skew
  allowance and each ``nonce`` is accepted once.
* Twilio: ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, the ``wss://`` URL)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

AUDIOHOOK_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
                        "audiohook-correlation-id", "x-api-key")
MAX_AGE_S = 10.0   # an AudioHook signature is used within seconds of its creation
SKEW_S = 3.0       # clocks may differ by this much
NONCE_TTL_S = MAX_AGE_S + 2 * SKEW_S  # how long a nonce must be remembered: its signature's lifetime
_LABELLED = re.compile(r'^\s*([a-z*][a-z0-9_.*-]*)=(.*)$', re.S)
_INNER = re.compile(r'^\(((?:\s*"[^"\\]*")*)\s*\)(.*)$', re.S)
_PARAM = re.compile(r';\s*([a-z*][a-z0-9_.*-]*)=("(?:[^"\\]|\\.)*"|-?\d+)')
_BYTES = re.compile(r'^:([A-Za-z0-9+/=]*):$')


class SignatureError(ValueError):
    """The request's signature does not verify; the message says why (for logs and the 401 body)."""


@dataclass(frozen=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    params: tuple[tuple[str, str | int], ...]  # in the order received

    def param(self, name: str) -> str | int | None:
        return next((v for k, v in self.params if k == name), None)

    def serialize(self) -> str:
        """The ``@signature-params`` value: the inner list and its parameters as structured fields."""
        inner = " ".join(f'"{c}"' for c in self.components)
        params = "".join(f';{k}="{v}"' if isinstance(v, str) else f";{k}={v}" for k, v in self.params)
        return f"({inner}){params}"


def parse_signature_input(value: str) -> SignatureInput:
    """Parse a one-member ``Signature-Input`` dictionary (``sig1=("a" "b");k="v";n=1``)."""
    m = _LABELLED.match(value)
    inner = _INNER.match(m.group(2).strip()) if m else None
    if m is None or inner is None:
        raise SignatureError("Signature-Input is not a labelled inner list")
    components = tuple(re.findall(r'"([^"\\]*)"', inner.group(1)))
    rest = inner.group(2).strip()
    params: list[tuple[str, str | int]] = []
    for p in _PARAM.finditer(rest):
        raw = p.group(2)
        params.append((p.group(1), raw[1:-1].replace('\\"', '"').replace("\\\\", "\\") if raw.startswith('"') else int(raw)))
    if _PARAM.sub("", rest).strip():
        raise SignatureError("Signature-Input has parameters that cannot be parsed")
    return SignatureInput(m.group(1), components, tuple(params))


def parse_signature(value: str, label: str) -> bytes:
    for member in value.split(","):
        m = _LABELLED.match(member)
        if m and m.group(1) == label:
            b = _BYTES.match(m.group(2).strip())
            if b is None:
                raise SignatureError("Signature is not a byte sequence")
            try:
                return base64.b64decode(b.group(1), validate=True)
            except binascii.Error:
                raise SignatureError("Signature is not valid base64") from None
    raise SignatureError(f"Signature has no {label!r} member")


def _canonical(value: str) -> str:
    return re.sub(r"[ \t]*\r\n[ \t]+", " ", value.strip())


def signature_base(sig: SignatureInput, request_target: str, headers: Mapping[str, str]) -> str:
    lines = []
    for name in sig.components:
        if name == "@request-target":
            value = request_target
        elif name == "@authority":
            value = (headers.get("host") or "").strip().lower()
        elif name.startswith("@"):
            raise SignatureError(f"derived component {name!r} is not supported")
        elif name in headers:
            value = _canonical(headers[name])
        else:
            raise SignatureError(f"signed header {name!r} is missing")
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {sig.serialize()}')
    return "\n".join(lines)


class Nonces(Protocol):
    """Where used nonces are remembered for :data:`NONCE_TTL_S`."""

    async def use(self, nonce: str) -> bool:
        """Record ``nonce``; False when it was already used (a replayed request)."""

    async def close(self) -> None: ...


class LocalNonces:
    """One process's nonces (one node; a request replayed to another node is not seen)."""

    def __init__(self, ttl_s: float = NONCE_TTL_S, max_size: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def use(self, nonce: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        while self._seen and (next(iter(self._seen.values())) < now - self.ttl_s or len(self._seen) > self.max_size):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True

    async def close(self) -> None:
        return None


class RedisNonces:
    """Nonces every node shares (``server.bus_url``): ``SET NX`` with the signature lifetime as expiry."""

    def __init__(self, url: str, ttl_s: float = NONCE_TTL_S) -> None:
        from redis.asyncio import Redis  # the `scaleout` extra, needed only with bus_url

        self._redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.ttl_ms = int(ttl_s * 1000)

    async def use(self, nonce: str) -> bool:
        key = "calltone:nonce:" + hashlib.sha256(nonce.encode()).hexdigest()
        return bool(await self._redis.set(key, b"1", nx=True, px=self.ttl_ms))

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True)
class SignedUpgrade:
    api_key: str
    nonce: str  # for the caller to check against its :class:`Nonces`


class AudioHookVerifier:
    """Checks the signature of an AudioHook upgrade against ``server.audiohook_keys`` (API key -> base64 secret)."""

    MIN_NONCE = 16

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys: dict[str, bytes] = {}
        for api_key, secret in keys.items():
            try:
                self._keys[api_key] = base64.b64decode(secret, validate=True)
            except binascii.Error:
                raise ValueError(f"server.audiohook_keys: the client secret for API key {api_key[:4]}... "
                                 "is not valid base64") from None

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def verify(self, headers: Mapping[str, str], request_target: str, now: float | None = None) -> SignedUpgrade:
        """Verify everything but the nonce's freshness (see :class:`Nonces`).  ``headers`` have lower-case names.
        Raises :class:`SignatureError`."""
        now = time.time() if now is None else now
        api_key = headers.get("x-api-key", "")
        secret = self._keys.get(api_key)
        if not api_key or "signature-input" not in headers or "signature" not in headers:
            raise SignatureError("X-API-KEY, Signature-Input and Signature are required")
        sig = parse_signature_input(headers["signature-input"])
        missing = [c for c in AUDIOHOOK_COMPONENTS if c not in sig.components]
        if missing:
            raise SignatureError(f"the signature does not cover {', '.join(missing)}")
        if sig.param("keyid") != api_key:
            raise SignatureError("keyid is not the X-API-KEY")
        if sig.param("alg") not in (None, "hmac-sha256"):
            raise SignatureError(f"alg {sig.param('alg')!r} is not hmac-sha256")
        given = parse_signature(headers["signature"], sig.label)
        expected = hmac.new(secret or b"\0" * 32, signature_base(sig, request_target, headers).encode(), hashlib.sha256)
        if not hmac.compare_digest(given, expected.digest()) or secret is None:
            raise SignatureError("the signature does not verify with the client secret of this API key")
        self._check_time(sig, now)
        nonce = sig.param("nonce")
        if not isinstance(nonce, str) or len(nonce) < self.MIN_NONCE:
            raise SignatureError(f"a nonce of at least {self.MIN_NONCE} characters is required")
        return SignedUpgrade(api_key, nonce)

    def _check_time(self, sig: SignatureInput, now: float) -> None:
        created, expires = sig.param("created"), sig.param("expires")
        if not isinstance(created, int):
            raise SignatureError("created is required")
        if created > now + SKEW_S:
            raise SignatureError("created is in the future")
        if created < now - MAX_AGE_S - SKEW_S:
            raise SignatureError("the signature is too old (created)")
        if expires is not None and (not isinstance(expires, int) or expires < now - SKEW_S):
            raise SignatureError("the signature has expired")


def twilio_signature(auth_token: str, url: str) -> str:
    """What Twilio sends as ``X-Twilio-Signature`` for a websocket (a GET: no parameters appended)."""
    return base64.b64encode(hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()).decode()


def twilio_signature_valid(auth_token: str, urls: Iterable[str], signature: str) -> bool:
    """True when ``signature`` matches one of the URLs this request may have been signed as."""
    ok = False
    for url in urls:
        ok |= hmac.compare_digest(twilio_signature(auth_token, url), signature or "")
    return ok
