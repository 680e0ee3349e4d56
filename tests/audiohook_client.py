"""A Genesys AudioHook (v2) client for the tests, written from the protocol description.

It signs the upgrade as Genesys does (HTTP Message Signatures, hmac-sha256 with the
base64-decoded client secret), numbers its messages, tracks ``position`` by counting
samples (plus what it reports discarded), and streams interleaved PCMU frames.
Independent of the server's own code on purpose: it imports nothing from calltone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import time
import uuid
from urllib.parse import urlsplit

from websockets.sync.client import ClientConnection, connect

COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
              "audiohook-correlation-id", "x-api-key")
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
OFFERS = [STEREO, {**STEREO, "channels": ["external"]}, {**STEREO, "channels": ["internal"]}]


def signed_headers(url: str, api_key: str, secret_b64: str, *, org_id: str, session_id: str, correlation_id: str,
                   created: int | None = None, expires_in: int = 30, nonce: str | None = None) -> dict[str, str]:
    """The upgrade headers with ``Signature-Input`` and ``Signature`` over :data:`COMPONENTS`."""
    parts = urlsplit(url)
    headers = {"Audiohook-Organization-Id": org_id, "Audiohook-Correlation-Id": correlation_id,
               "Audiohook-Session-Id": session_id, "X-API-KEY": api_key}
    created = int(time.time()) if created is None else created
    nonce = nonce or base64.b64encode(os.urandom(18)).decode()
    params = (f'({" ".join(chr(34) + c + chr(34) for c in COMPONENTS)});keyid="{api_key}";nonce="{nonce}";'
              f'alg="hmac-sha256";created={created};expires={created + expires_in}')
    values = {"@request-target": parts.path + (f"?{parts.query}" if parts.query else ""), "@authority": parts.netloc,
              **{k.lower(): v for k, v in headers.items()}}
    base = "\n".join([f'"{c}": {values[c]}' for c in COMPONENTS] + [f'"@signature-params": {params}'])
    digest = hmac.new(base64.b64decode(secret_b64), base.encode(), hashlib.sha256).digest()
    return {**headers, "Signature-Input": f"sig1={params}", "Signature": f"sig1=:{base64.b64encode(digest).decode()}:"}


class AudioHookClient:
    """One AudioHook session."""

    def __init__(self, url: str, api_key: str, secret_b64: str, *, session_id: str | None = None,
                 org_id: str = "d7934305-0972-4844-938e-9060eef73d05", headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.session_id = session_id or str(uuid.uuid4())
        self.org_id = org_id
        self.headers = headers if headers is not None else signed_headers(
            url, api_key, secret_b64, org_id=org_id, session_id=self.session_id, correlation_id=str(uuid.uuid4()))
        self.seq = 0          # last client message sent
        self.server_seq = 0   # last server message received
        self.samples = 0      # per channel, sent
        self.discarded_s = 0.0
        self.ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "AudioHookClient":
        self.ws = self._stack.enter_context(connect(self.url, additional_headers=self.headers, max_size=None,
                                                    open_timeout=20))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def position(self) -> str:
        return f"PT{self.samples / 8000 + self.discarded_s:.3f}S"

    def send(self, typ: str, parameters: dict | None = None, **override: object) -> None:
        self.seq += 1
        msg = {"version": "2", "id": self.session_id, "type": typ, "seq": self.seq, "serverseq": self.server_seq,
               "position": self.position, "parameters": parameters or {}, **override}
        assert self.ws is not None
        self.ws.send(json.dumps(msg))

    def recv(self, timeout: float = 20) -> dict:
        assert self.ws is not None
        msg = json.loads(self.ws.recv(timeout=timeout))
        assert msg["version"] == "2" and msg["id"] == self.session_id, msg
        assert msg["seq"] == self.server_seq + 1, ("server seq out of order", msg)
        assert isinstance(msg["parameters"], dict), msg
        self.server_seq = msg["seq"]
        return msg

    def open(self, conversation_id: str, *, media: list[dict] | None = None, custom: dict | None = None,
             language: str | None = None, participant: dict | None = None,
             continued: list[dict] | None = None) -> dict:
        params: dict = {"organizationId": self.org_id, "conversationId": conversation_id,
                        "participant": participant or {"id": str(uuid.uuid4()), "ani": "+1-555-555-1234",
                                                       "aniName": "John Doe", "dnis": "+1-800-555-6789"},
                        "media": OFFERS if media is None else media}
        if custom is not None:
            params["customConfig"] = custom
        if language:
            params["language"] = language
        if continued:
            params["continuedSessions"] = continued
        self.send("open", params)
        opened = self.recv()
        assert opened["type"] == "opened", opened
        assert opened["clientseq"] == self.seq
        return opened

    def audio(self, data: bytes, *, channels: int = 2, bytes_per_sample: int = 1, frame_ms: int = 200,
              realtime: float = 0.0) -> None:
        """Stream interleaved PCMU (or L16: 2 bytes per sample) in ``frame_ms`` frames
        (``realtime`` 1.0 paces them at real time)."""
        assert self.ws is not None
        step = 8 * frame_ms * channels * bytes_per_sample
        t0, sent0 = time.monotonic(), self.samples
        for i in range(0, len(data), step):
            frame = data[i : i + step]
            self.ws.send(frame)
            self.samples += len(frame) // (channels * bytes_per_sample)
            if realtime:
                delay = t0 + (self.samples - sent0) / 8000 / realtime - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    def discard(self, seconds: float) -> None:
        start = self.position
        self.discarded_s += seconds
        self.send("discarded", {"start": start, "discarded": f"PT{seconds}S"})

    def close(self, reason: str = "end", timeout: float = 60) -> dict:
        self.send("close", {"reason": reason})
        while True:
            msg = self.recv(timeout=timeout)
            if msg["type"] == "closed":
                return msg
