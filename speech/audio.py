"""Audio decoding for everything a contact centre sends us.

Two entry points, both ending in **16 kHz float32 mono arrays, one per speaker role**:

* Live streams: raw sample bytes in one of four encodings (``pcm_s16le``, ``f32le``,
  G.711 ``mulaw`` / ``alaw``), any rate from 8 to 48 kHz, mono or interleaved
  multi-channel.  Describe them with :class:`StreamFormat`; :func:`decode_pcm`
  turns a byte buffer into ``(frames, channels)`` floats, :class:`StreamResampler`
  brings them to 16 kHz chunk by chunk, and :class:`StreamDecoder` does both and
  splits the channels by role.
* Recordings: :func:`load_recording` reads WAV (PCM, float or G.711), FLAC, OGG
  and MP3 files (libsndfile via ``soundfile``; PyAV for MP3 when libsndfile lacks
  it, and for AAC/M4A/AMR/WebM/WMA) into a :class:`Recording`.

Channel roles: channel 0 is the ``customer`` and channel 1 the ``agent`` unless told
otherwise.  A one-channel source is reported under the single role ``customer``,
but that channel is usually the *mixed* call (both parties on one track).

Every failure is an :class:`AudioError` (a ``ValueError``) subclass whose message
says what was wrong and, for files, which file.  Resampling is soxr's (HQ).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from calltone.speech.g711 import G711_FLOAT, alaw_encode, to_int16, ulaw_encode

__all__ = [
    "BYTES_PER_SAMPLE",
    "ENCODINGS",
    "MAX_RATE",
    "MIN_RATE",
    "SAMPLE_RATE",
    "AudioError",
    "AudioFileNotFound",
    "BadChannelRoles",
    "BadFrameSize",
    "BadSampleRate",
    "EmptyAudio",
    "Encoding",
    "NonFiniteAudio",
    "Recording",
    "StreamDecoder",
    "StreamFormat",
    "StreamResampler",
    "TruncatedAudio",
    "UnreadableAudio",
    "UnsupportedEncoding",
    "UnsupportedFormat",
    "decode_pcm",
    "encode_pcm",
    "default_roles",
    "load_recording",
]

SAMPLE_RATE = 16_000
"""The internal sample rate (Hz): of everything this module hands out, and so of every later stage
(VAD, Whisper, the emotion features, call time in samples).  The one definition in the package."""
MIN_RATE, MAX_RATE = 8_000, 48_000
"""Accepted input sample rates (inclusive)."""

Encoding = Literal["pcm_s16le", "f32le", "mulaw", "alaw"]
ENCODINGS: tuple[Encoding, ...] = ("pcm_s16le", "f32le", "mulaw", "alaw")
BYTES_PER_SAMPLE: dict[str, int] = {"pcm_s16le": 2, "f32le": 4, "mulaw": 1, "alaw": 1}
# Other names telephony platforms use for the same encodings.
_ENCODING_ALIASES: dict[str, Encoding] = {
    "s16le": "pcm_s16le", "pcm16": "pcm_s16le", "linear16": "pcm_s16le", "l16": "pcm_s16le",
    "pcm_f32le": "f32le", "float32": "f32le",
    "ulaw": "mulaw", "mu-law": "mulaw", "pcmu": "mulaw", "g711_ulaw": "mulaw", "audio/x-mulaw": "mulaw",
    "a-law": "alaw", "pcma": "alaw", "g711_alaw": "alaw", "audio/x-alaw": "alaw",
}


# --------------------------------------------------------------------------- errors


class AudioError(ValueError):
    """Base class of every audio decoding/loading failure."""


class BadFrameSize(AudioError):
    """The byte count is not a whole number of frames for the declared format."""


class UnsupportedEncoding(AudioError):
    """The stream encoding is not one of :data:`ENCODINGS`."""


class BadSampleRate(AudioError):
    """The sample rate is not an integer between 8 and 48 kHz."""


class BadChannelRoles(AudioError):
    """The channel count and the channel roles do not fit together."""


class NonFiniteAudio(AudioError):
    """Float samples contain NaN or infinity."""


class EmptyAudio(AudioError):
    """There are no samples at all."""


class UnreadableAudio(AudioError):
    """A file could not be decoded (corrupt, not audio, ...)."""


class UnsupportedFormat(UnreadableAudio):
    """A file is in a container/codec this module does not read."""


class TruncatedAudio(UnreadableAudio):
    """A file ends before the audio its header announces."""


class AudioFileNotFound(UnreadableAudio, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------- formats


def default_roles(channels: int) -> tuple[str, ...]:
    """``("customer",)`` for mono, ``("customer", "agent")`` for stereo; more channels need explicit roles."""
    if channels == 1:
        return ("customer",)
    if channels == 2:
        return ("customer", "agent")
    raise BadChannelRoles(f"{channels} channels have no default roles; name each channel, e.g. channel_roles=('customer', 'agent', ...)")


def _check_roles(roles: Sequence[str], channels: int) -> tuple[str, ...]:
    roles = tuple(roles)
    if len(roles) != channels:
        raise BadChannelRoles(f"{channels} channel(s) need {channels} role(s), got {len(roles)}: {roles!r}")
    if not all(isinstance(r, str) and r.strip() for r in roles):
        raise BadChannelRoles(f"channel roles must be non-empty strings, got {roles!r}")
    if len(set(roles)) != len(roles):
        raise BadChannelRoles(f"channel roles must be distinct, got {roles!r}")
    return roles


def _check_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral):
        raise BadSampleRate(f"sample rate must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_RATE <= int(sample_rate) <= MAX_RATE:
        raise BadSampleRate(f"sample rate {sample_rate} Hz is outside the supported {MIN_RATE}..{MAX_RATE} Hz")
    return int(sample_rate)


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How a raw audio stream is encoded.

    ``encoding`` is one of :data:`ENCODINGS` (common aliases such as ``"ulaw"``,
    ``"pcmu"``, ``"pcma"``, ``"s16le"`` are normalised).  Multi-channel data is
    interleaved, little-endian.  ``channel_roles`` names the channels in order;
    left empty it defaults to :func:`default_roles`.
    """

    encoding: Encoding
    sample_rate: int
    channels: int = 1
    channel_roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        enc = str(self.encoding).strip().lower()
        enc = _ENCODING_ALIASES.get(enc, enc)
        if enc not in BYTES_PER_SAMPLE:
            raise UnsupportedEncoding(f"unknown stream encoding {self.encoding!r}; expected one of {', '.join(ENCODINGS)}")
        object.__setattr__(self, "encoding", enc)
        object.__setattr__(self, "sample_rate", _check_rate(self.sample_rate))
        if isinstance(self.channels, bool) or not isinstance(self.channels, Integral) or self.channels < 1:
            raise BadChannelRoles(f"channels must be a positive integer, got {self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        roles = self.channel_roles or default_roles(self.channels)
        object.__setattr__(self, "channel_roles", _check_roles(roles, self.channels))

    @property
    def bytes_per_sample(self) -> int:
        return BYTES_PER_SAMPLE[self.encoding]

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.bytes_per_sample * self.channels


# --------------------------------------------------------------------------- decoding


def decode_pcm(data: bytes | bytearray | memoryview, fmt: StreamFormat) -> np.ndarray:
    """Decode raw interleaved samples into a ``(n_frames, channels)`` float32 array in [-1, 1].

    16-bit and G.711 samples are scaled by 1/32768; float samples beyond ±1 are clipped.
    Raises :class:`EmptyAudio` for no bytes, :class:`BadFrameSize` when the byte count
    is not a whole number of frames, :class:`NonFiniteAudio` for NaN/inf floats.
    """
    n = memoryview(data).nbytes
    if n == 0:
        raise EmptyAudio(f"no audio: 0 bytes of {fmt.encoding}")
    if n % fmt.frame_bytes:
        raise BadFrameSize(
            f"{n} bytes of {fmt.encoding} with {fmt.channels} channel(s) is not a whole number of frames "
            f"(a frame is {fmt.frame_bytes} bytes = {fmt.channels} x {fmt.bytes_per_sample}; {n % fmt.frame_bytes} byte(s) left over)"
        )
    if fmt.encoding == "pcm_s16le":
        x = np.frombuffer(data, dtype="<i2").astype(np.float32)
        x *= np.float32(1.0 / 32768.0)
    elif fmt.encoding == "f32le":
        raw = np.frombuffer(data, dtype="<f4")
        bad = ~np.isfinite(raw)
        if bad.any():
            first = int(np.argmax(bad))
            raise NonFiniteAudio(
                f"f32le audio contains {int(bad.sum())} NaN/inf sample(s); the first is at frame {first // fmt.channels}"
            )
        x = np.clip(raw, -1.0, 1.0).astype(np.float32, copy=False)
    else:
        x = G711_FLOAT[fmt.encoding][np.frombuffer(data, dtype=np.uint8)]
    return x.reshape(-1, fmt.channels)


def encode_pcm(x: np.ndarray, encoding: str) -> bytes:
    """The inverse of :func:`decode_pcm`: interleaved ``(frames, channels)`` or mono float samples to bytes."""
    flat = np.ascontiguousarray(x).reshape(-1)
    if encoding == "mulaw":
        return ulaw_encode(flat)
    if encoding == "alaw":
        return alaw_encode(flat)
    if encoding == "pcm_s16le":
        return to_int16(flat).astype("<i2").tobytes()
    if encoding == "f32le":
        return np.clip(flat.astype(np.float32), -1, 1).astype("<f4").tobytes()
    raise UnsupportedEncoding(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


class StreamResampler:
    """Chunk-by-chunk resampling of ``(n, channels)`` float32 audio to 16 kHz (soxr HQ).

    Output chunk lengths vary (soxr buffers a few ms); the total over all
    :meth:`process` calls plus :meth:`flush` is ``round(n_in * 16000 / in_rate)``.
    At 16 kHz input it passes data through unchanged.  Output is clipped to [-1, 1].
    """

    def __init__(self, in_rate: int, channels: int = 1, *, quality: str = "HQ") -> None:
        self.in_rate = _check_rate(in_rate)
        if channels < 1:
            raise BadChannelRoles(f"channels must be positive, got {channels}")
        self.channels = channels
        self.out_rate = SAMPLE_RATE
        self._quality = quality
        self._stream = self._new_stream()

    @property
    def passthrough(self) -> bool:
        return self.in_rate == self.out_rate

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.passthrough:
            return None
        return soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="float32", quality=self._quality)

    def _as_frames(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1 and self.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise BadChannelRoles(f"expected audio of shape (n, {self.channels}), got {x.shape}")
        return np.ascontiguousarray(x)

    def _finish(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32).reshape(-1, self.channels)
        return np.clip(y, -1.0, 1.0, out=y) if y.flags.writeable else np.clip(y, -1.0, 1.0)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns ``(m, channels)`` float32 (``m`` may be 0)."""
        x = self._as_frames(x)
        if self._stream is None:
            return x
        return self._finish(self._stream.resample_chunk(x))

    def flush(self) -> np.ndarray:
        """Return the buffered tail and reset, ready for a new stream."""
        if self._stream is None:
            return np.zeros((0, self.channels), dtype=np.float32)
        tail = self._finish(self._stream.resample_chunk(np.zeros((0, self.channels), dtype=np.float32), last=True))
        self._stream = self._new_stream()
        return tail


class StreamDecoder:
    """Raw stream bytes in, ``{role: 16 kHz float32 mono array}`` out.

    Chunks need not end on frame boundaries (a partial frame is kept for the next
    :meth:`feed`), unless ``strict=True``, in which case every chunk must hold whole
    frames.  :meth:`flush` ends the stream and returns the resampler's tail; it raises
    :class:`BadFrameSize` if the stream stopped mid-frame (the decoder is left as it
    was, so the missing bytes can still be fed).
    """

    def __init__(self, fmt: StreamFormat, *, strict: bool = False) -> None:
        self.fmt = fmt
        self.strict = strict
        self._resampler = StreamResampler(fmt.sample_rate, fmt.channels)
        self._pending = b""

    @property
    def roles(self) -> tuple[str, ...]:
        return self.fmt.channel_roles

    def _split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {role: np.ascontiguousarray(x[:, i]) for i, role in enumerate(self.fmt.channel_roles)}

    def feed(self, data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
        """Decode and resample one chunk; every role gets an array (possibly empty)."""
        if self.strict and memoryview(data).nbytes % self.fmt.frame_bytes:
            decode_pcm(data, self.fmt)  # raises BadFrameSize with the full explanation
        buf = self._pending + bytes(data)
        usable = len(buf) - len(buf) % self.fmt.frame_bytes
        self._pending = buf[usable:]
        if usable == 0:
            return self._split(np.zeros((0, self.fmt.channels), dtype=np.float32))
        return self._split(self._resampler.process(decode_pcm(buf[:usable], self.fmt)))

    def flush(self) -> dict[str, np.ndarray]:
        """End the stream: return the last resampled samples and reset."""
        if self._pending:
            raise BadFrameSize(
                f"stream ended mid-frame: {len(self._pending)} byte(s) left over, but a {self.fmt.encoding} frame "
                f"with {self.fmt.channels} channel(s) is {self.fmt.frame_bytes} bytes"
            )
        return self._split(self._resampler.flush())


# --------------------------------------------------------------------------- files


@dataclass(slots=True)
class Recording:
    """A recording decoded to 16 kHz float32 mono arrays, one per role (in channel order)."""

    path: Path
    sample_rate_in: int
    duration_s: float
    channels: dict[str, np.ndarray]
    roles: tuple[str, ...]
    source_format: str = ""
    sample_rate: int = field(default=SAMPLE_RATE)

    def __getitem__(self, role: str) -> np.ndarray:
        return self.channels[role]


_SF_HAS_MP3 = "MP3" in sf.available_formats()
_HAS_AV = importlib.util.find_spec("av") is not None
_AV_SUFFIXES = {".m4a", ".aac", ".mp4", ".amr", ".3gp", ".webm", ".wma"}
_AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"} | _AV_SUFFIXES
_BLOCK_FRAMES = 1 << 16
# MP3/AAC lengths in headers can be estimates; allow this much shortfall before calling a file truncated.
_LOSSY_SLACK_S = 0.25


def _wav_missing_bytes(path: Path) -> int:
    """Bytes of the WAV ``data`` chunk that its header declares but the file lacks (0 if whole or not RIFF)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            chunk_id, length = hdr[:4], int.from_bytes(hdr[4:8], "little")
            if chunk_id == b"data":
                if length in (0, 0xFFFFFFFF):  # size never filled in by a streaming writer
                    return 0
                return max(0, length - (size - pos - 8))
            pos += 8 + length + (length & 1)
    return 0


def _collect(blocks: list[np.ndarray], channels: int) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int, str, bool]:
    """Decode with libsndfile at the native rate: ``(frames, rate, format name, truncated?)``."""
    try:
        f = sf.SoundFile(str(path))
    except sf.LibsndfileError as e:
        raise UnreadableAudio(f"{path.name}: cannot decode as audio ({e.error_string.rstrip('.')})") from None
    with f:
        blocks: list[np.ndarray] = []
        got = 0
        try:
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block)
                got += len(block)
        except sf.LibsndfileError as e:
            raise TruncatedAudio(f"{path.name}: audio data is truncated or corrupt after {got / f.samplerate:.2f} s ({e.error_string})") from None
        slack = int(_LOSSY_SLACK_S * f.samplerate) if f.format == "MP3" else 0
        truncated = got + slack < f.frames
        if f.format in ("WAV", "WAVEX") and _wav_missing_bytes(path):
            truncated = True
        return _collect(blocks, f.channels), f.samplerate, f"{f.format}/{f.subtype}", truncated


def _read_av(path: Path) -> tuple[np.ndarray, int, str, bool]:
    """Decode with PyAV (FFmpeg) at the native rate: ``(frames, rate, format name, truncated?)``."""
    try:
        import av  # only needed for MP3 without libsndfile support, AAC, AMR, ...
        from av.error import FFmpegError
    except ImportError:
        raise UnsupportedFormat(f"{path.name}: reading {path.suffix or 'this'} files needs PyAV (pip install av)") from None

    try:
        container = av.open(str(path))
    except (FFmpegError, OSError) as e:
        raise UnreadableAudio(f"{path.name}: cannot decode as audio ({getattr(e, 'strerror', None) or e})") from None
    with container:
        if not container.streams.audio:
            raise UnreadableAudio(f"{path.name}: contains no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate)
        layout = stream.codec_context.layout
        channels = layout.nb_channels
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)  # sample format only; rate unchanged
        blocks: list[np.ndarray] = []
        got = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    blocks.append(out.to_ndarray().T)
                    got += out.samples
            for out in resampler.resample(None):
                blocks.append(out.to_ndarray().T)
                got += out.samples
        except FFmpegError as e:
            raise TruncatedAudio(f"{path.name}: audio data is truncated or corrupt after {got / rate:.2f} s ({e})") from None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / av.time_base
        else:
            declared = 0.0
        truncated = got / rate + _LOSSY_SLACK_S < declared
        fmt = f"{container.format.name}/{stream.codec_context.name}"
        return _collect(blocks, channels).astype(np.float32, copy=False), rate, fmt, truncated


def load_recording(
    path: str | os.PathLike[str],
    channel_roles: Sequence[str] | Mapping[str, int] | None = None,
    mono: bool = False,
) -> Recording:
    """Read an audio file into per-role 16 kHz float32 arrays.

    ``channel_roles`` names the file's channels in order (``("agent", "customer")``
    when the customer is on channel 1), or maps roles to channel indices
    (``{"customer": 1, "agent": 0}``; channels not named are dropped).  Default:
    channel 0 ``customer``, channel 1 ``agent``; a mono file gives the single role
    ``customer`` (which then holds the mixed call).  ``mono=True`` averages all
    channels into one role (``customer`` unless ``channel_roles`` names another).

    Raises :class:`AudioFileNotFound`, :class:`UnsupportedFormat`,
    :class:`UnreadableAudio`, :class:`TruncatedAudio`, :class:`EmptyAudio`,
    :class:`NonFiniteAudio` or :class:`BadChannelRoles`; messages name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileNotFound(f"{path.name}: no such audio file ({path})" if not path.exists() else f"{path.name}: not a file ({path})")
    suffix = path.suffix.lower()
    use_av = suffix in _AV_SUFFIXES or (suffix == ".mp3" and not _SF_HAS_MP3)
    try:
        x, rate, fmt, truncated = _read_av(path) if use_av else _read_soundfile(path)
    except UnreadableAudio as e:
        if type(e) is UnreadableAudio and not use_av and suffix == ".mp3" and _HAS_AV:
            x, rate, fmt, truncated = _read_av(path)  # second opinion: FFmpeg's mp3 parser
        elif type(e) is UnreadableAudio and suffix not in _AUDIO_SUFFIXES:
            raise UnsupportedFormat(
                f"{path.name}: not a supported audio format ({str(e).removeprefix(path.name + ': ')}); "
                f"supported: {', '.join(sorted(_AUDIO_SUFFIXES))}"
            ) from None
        else:
            raise
    if truncated:
        raise TruncatedAudio(f"{path.name}: file is truncated; it ends after {len(x) / rate:.2f} s, before the end of the audio its header declares")
    if len(x) == 0:
        raise EmptyAudio(f"{path.name}: contains no audio samples")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadSampleRate(f"{path.name}: sample rate {rate} Hz is outside the supported {MIN_RATE}..{MAX_RATE} Hz")
    if not np.isfinite(x).all():
        raise NonFiniteAudio(f"{path.name}: contains NaN/inf samples")
    n_in, n_ch = x.shape

    # Pick the channels: list of (role, column selector).
    if mono:
        if channel_roles is None:
            roles: tuple[str, ...] = ("customer",)
        else:
            roles = _check_roles(list(channel_roles), 1)
        x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        picks = [0]
    elif isinstance(channel_roles, Mapping):
        roles = _check_roles(list(channel_roles), len(channel_roles))
        picks = list(channel_roles.values())
        for role, idx in channel_roles.items():
            if not isinstance(idx, int) or not 0 <= idx < n_ch:
                raise BadChannelRoles(f"{path.name}: role {role!r} -> channel {idx!r}, but the file has channels 0..{n_ch - 1}")
    else:
        try:
            roles = _check_roles(channel_roles, n_ch) if channel_roles is not None else default_roles(n_ch)
        except BadChannelRoles as e:
            raise BadChannelRoles(f"{path.name}: {e} (pass mono=True to mix the channels down)") from None
        picks = list(range(n_ch))

    sel = np.ascontiguousarray(x[:, picks])
    resampler = StreamResampler(rate, sel.shape[1])
    out = [resampler.process(sel[i : i + _BLOCK_FRAMES]) for i in range(0, n_in, _BLOCK_FRAMES)]
    out.append(resampler.flush())
    y = np.concatenate(out)
    return Recording(
        path=path,
        sample_rate_in=rate,
        duration_s=n_in / rate,
        channels={role: np.ascontiguousarray(y[:, i]) for i, role in enumerate(roles)},
        roles=roles,
        source_format=fmt,
    )

