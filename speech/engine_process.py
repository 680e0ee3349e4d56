"""A Whisper model in a process of its own, decoding for the ASR worker of the parent process.

One CTranslate2 model in one thread decodes one batch at a time, and a process's Python work
(features, token bookkeeping, alignment) shares one GIL with the event loop and the CPU pool.
So the :class:`~calltone.speech.worker.AsrWorker` of a node with several cores hands its batches
to several of these: each a ``spawn``-ed process that loads the model once and answers
``decode(requests, options)`` over a pipe, exactly as :class:`~calltone.speech.asr.WhisperEngine`
does in-process.  The process is a plain ``python -c`` child (not ``multiprocessing``: spawn would
run the parent's ``__main__`` again, and fork copies threads' locks) that talks over a socket pair.
A process that dies (killed, out of memory) is started again and the batch is
decoded once more, so a final is never lost to a crash of its decoder.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calltone.speech.asr import DecodeOptions, DecodeRequest, DecodeResult

log = logging.getLogger("calltone.asr")

_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class EngineSpec:
    """What a process needs to load the same model as :class:`WhisperEngine` would."""

    model_dir: Path
    multilingual: bool
    compute_type: str = "int8"
    cpu_threads: int = 1
    device: str = "cpu"


def serve(fd: int) -> None:
    """The child process: load the model the parent names once, then decode what it sends until it hangs up."""
    from calltone.runtime import limit_blas_threads
    from calltone.speech.asr import WhisperEngine

    conn = Connection(fd)
    spec: EngineSpec = conn.recv()
    limit_blas_threads(1)
    engine = WhisperEngine(spec.model_dir, spec.multilingual, spec.compute_type, spec.cpu_threads, spec.device)
    conn.send(("ready", None))
    while True:
        try:
            requests, options = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", engine.decode(requests, options)))
        except Exception as exc:  # a broken request fails its batch, not the process
            conn.send(("error", exc))


class EngineProcess:
    """The parent's handle on one decoding process; ``decode`` is called by one worker thread at a time."""

    def __init__(self, spec: EngineSpec, name: str) -> None:
        self.spec = spec
        self.multilingual = spec.multilingual
        self.name = name
        self.restarts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        code = f"from calltone.speech.engine_process import serve; serve({fd})"
        self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(self.spec)

    def wait_ready(self) -> None:
        """Block until the model is loaded (raises if the process failed to load it)."""
        assert self._conn is not None
        if not self._conn.poll(_START_TIMEOUT_S):
            raise RuntimeError(f"{self.name}: Whisper did not load within {_START_TIMEOUT_S:.0f} s")
        try:
            kind, _ = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name}: the ASR process exited while loading Whisper "
                               f"(exit code {self._exit_code()})") from None
        if kind != "ready":
            raise RuntimeError(f"{self.name}: unexpected start message {kind!r}")

    def decode(self, requests: list[DecodeRequest], options: DecodeOptions) -> list[DecodeResult]:
        with self._lock:
            try:
                return self._roundtrip(requests, options)
            except (EOFError, BrokenPipeError, ConnectionResetError):
                code = self._exit_code()
                log.error("%s died (exit code %s) during a decode of %d requests: restarting it and decoding again",
                          self.name, code, len(requests))
                self._restart()
                return self._roundtrip(requests, options)

    def _roundtrip(self, requests: list[DecodeRequest], options: DecodeOptions) -> list[DecodeResult]:
        assert self._conn is not None
        self._conn.send((requests, options))
        kind, value = self._conn.recv()
        if kind == "error":
            raise value
        return value

    def _restart(self) -> None:
        self.close()
        self.restarts += 1
        self._start()
        self.wait_ready()

    def _exit_code(self) -> int | None:
        try:
            return self._proc.wait(timeout=5) if self._proc else None
        except subprocess.TimeoutExpired:
            return None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:  # the child exits when its socket closes
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
