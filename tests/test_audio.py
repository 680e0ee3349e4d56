"""Tests for calltone.speech.audio: stream decoding, resampling, file loading, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calltone.speech import audio, g711
from calltone.speech.audio import (
    AudioError,
    AudioFileNotFound,
    BadChannelRoles,
    BadFrameSize,
    BadSampleRate,
    EmptyAudio,
    NonFiniteAudio,
    StreamDecoder,
    StreamFormat,
    StreamResampler,
    TruncatedAudio,
    UnreadableAudio,
    UnsupportedEncoding,
    UnsupportedFormat,
    decode_pcm,
    load_recording,
)

from .conftest import SPEECH, needs_shared

needs_clips = needs_shared(SPEECH)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # stdlib up to 3.12; the `audioop-lts` package provides it on 3.13+
    except ImportError:  # pragma: no cover - depends on the interpreter
        audioop = None


# --------------------------------------------------------------------------- helpers


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def g711_encode(x: np.ndarray, table: np.ndarray) -> bytes:
    """Nearest G.711 code for each sample (brute force over the 256-entry expansion table)."""
    codes = np.argmin(np.abs(table[None, :].astype(np.float32) / 32768 - x[:, None]), axis=1)
    return codes.astype(np.uint8).tobytes()


def middle(x: np.ndarray, frac: float = 0.1) -> np.ndarray:
    k = int(len(x) * frac)
    return x[k : len(x) - k]


# --------------------------------------------------------------------------- StreamFormat


def test_stream_format_defaults_and_aliases():
    assert StreamFormat("pcm_s16le", 16000).channel_roles == ("customer",)
    stereo = StreamFormat("mulaw", 8000, 2)
    assert stereo.channel_roles == ("customer", "agent")
    assert stereo.frame_bytes == 2
    assert StreamFormat("PCMU", 8000).encoding == "mulaw"
    assert StreamFormat("pcma", 8000).encoding == "alaw"
    assert StreamFormat("s16le", 44100).encoding == "pcm_s16le"
    assert StreamFormat("f32le", 48000, 2, ("agent", "customer")).channel_roles == ("agent", "customer")
    assert StreamFormat("f32le", 22050, 3, ("customer", "agent", "supervisor")).frame_bytes == 12
    with pytest.raises(AttributeError):
        stereo.sample_rate = 16000  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("rate", [7999, 48001, 96000, 0, -8000, 16000.0, True, "16000"])
def test_stream_format_bad_rate(rate):
    with pytest.raises(BadSampleRate, match="sample rate"):
        StreamFormat("pcm_s16le", rate)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_stream_format_accepts_rates(rate):
    assert StreamFormat("pcm_s16le", rate).sample_rate == rate


def test_stream_format_unknown_encoding():
    with pytest.raises(UnsupportedEncoding, match=r"'opus'.*pcm_s16le, f32le, mulaw, alaw"):
        StreamFormat("opus", 16000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channels", "roles", "match"),
    [
        (2, ("customer",), "2 channel"),
        (1, ("customer", "agent"), "1 channel"),
        (2, ("agent", "agent"), "distinct"),
        (2, ("agent", ""), "non-empty"),
        (3, (), "no default roles"),
        (0, (), "positive"),
    ],
)
def test_stream_format_bad_roles(channels, roles, match):
    with pytest.raises(BadChannelRoles, match=match):
        StreamFormat("pcm_s16le", 16000, channels, roles)


def test_errors_are_value_errors():
    for cls in (BadFrameSize, UnsupportedEncoding, BadSampleRate, NonFiniteAudio, EmptyAudio, UnreadableAudio):
        assert issubclass(cls, AudioError) and issubclass(cls, ValueError)
    assert issubclass(TruncatedAudio, UnreadableAudio) and issubclass(UnsupportedFormat, UnreadableAudio)
    assert issubclass(AudioFileNotFound, FileNotFoundError)


# --------------------------------------------------------------------------- decode_pcm


@pytest.mark.parametrize(("encoding", "table", "ref"), [("mulaw", "ULAW_TO_INT16", "ulaw2lin"), ("alaw", "ALAW_TO_INT16", "alaw2lin")])
def test_g711_matches_audioop(encoding, table, ref):
    if audioop is None:
        pytest.skip("no reference G.711 decoder: stdlib audioop was removed in Python 3.13 and audioop-lts is not installed")
    every_code = bytes(range(256))
    expected = np.frombuffer(getattr(audioop, ref)(every_code, 2), dtype="<i2")
    np.testing.assert_array_equal(getattr(g711, table), expected)
    x = decode_pcm(every_code, StreamFormat(encoding, 8000))
    assert x.shape == (256, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0] * 32768, expected)  # exact: 1/32768 is a power of two
    assert np.abs(x).max() <= 1.0
    # Interleaved stereo: even bytes are channel 0, odd bytes channel 1.
    st = decode_pcm(every_code, StreamFormat(encoding, 8000, 2))
    assert st.shape == (128, 2)
    np.testing.assert_array_equal(st[:, 1] * 32768, expected[1::2])


def test_decode_pcm_s16le_and_f32le():
    ints = np.array([0, 32767, -32768, 16384, -1, 1], dtype="<i2")
    x = decode_pcm(ints.tobytes(), StreamFormat("pcm_s16le", 16000, 2))
    assert x.shape == (3, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), ints / 32768)
    assert x.min() >= -1.0 and x.max() <= 1.0

    floats = np.array([0.0, 0.25, -0.5, 1.5, -3.0, 1.0], dtype="<f4")
    y = decode_pcm(bytearray(floats.tobytes()), StreamFormat("f32le", 48000, 3, ("a", "b", "c")))
    assert y.shape == (2, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y.ravel(), [0.0, 0.25, -0.5, 1.0, -1.0, 1.0])  # out-of-range floats clipped


@pytest.mark.parametrize(
    ("nbytes", "fmt", "match"),
    [
        (3, StreamFormat("pcm_s16le", 16000, 2), r"3 bytes of pcm_s16le with 2 channel\(s\).*frame is 4 bytes"),
        (3, StreamFormat("pcm_s16le", 16000, 1), r"3 bytes of pcm_s16le.*frame is 2 bytes"),
        (6, StreamFormat("f32le", 16000, 1), r"6 bytes of f32le.*frame is 4 bytes"),
        (5, StreamFormat("mulaw", 8000, 2), r"5 bytes of mulaw with 2 channel\(s\)"),
        (7, StreamFormat("alaw", 8000, 2), r"1 byte\(s\) left over"),
    ],
)
def test_decode_pcm_bad_frame_size(nbytes, fmt, match):
    with pytest.raises(BadFrameSize, match=match):
        decode_pcm(bytes(nbytes), fmt)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_pcm_non_finite(bad):
    data = np.array([0.1, 0.2, 0.3, bad], dtype="<f4").tobytes()
    with pytest.raises(NonFiniteAudio, match=r"1 NaN/inf sample.*frame 1"):
        decode_pcm(data, StreamFormat("f32le", 16000, 2))


@pytest.mark.parametrize("encoding", ["pcm_s16le", "f32le", "mulaw", "alaw"])
def test_decode_pcm_empty(encoding):
    with pytest.raises(EmptyAudio, match="0 bytes"):
        decode_pcm(b"", StreamFormat(encoding, 8000))


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resample_tone_to_16k(rate):
    import soxr

    x = tone(1000, rate, 2.0, amp=0.5)
    expected_len = round(len(x) * 16000 / rate)

    one = StreamResampler(rate, 1)
    y = np.concatenate([one.process(x[:, None]), one.flush()])
    assert y.shape == (expected_len, 1) and y.dtype == np.float32
    assert dominant_hz(y[:, 0], 16000) == pytest.approx(1000, abs=2)
    assert abs(rms_db(middle(y[:, 0])) - rms_db(x)) < 1.0  # amplitude kept within 1 dB

    # Small, irregular chunks give the same signal as one shot (and as soxr's own one-shot call).
    rng = np.random.default_rng(0)
    stream = StreamResampler(rate, 1)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, rate // 50 + 1))  # up to 20 ms
        parts.append(stream.process(x[i : i + n]))  # 1-D is accepted for mono
        i += n
    parts.append(stream.flush())
    z = np.concatenate(parts)
    assert z.shape == y.shape
    np.testing.assert_allclose(z, y, atol=1e-4)
    ref = soxr.resample(x, rate, 16000, quality="HQ")
    assert len(ref) == expected_len
    np.testing.assert_allclose(z[:, 0], ref, atol=1e-4)


def test_resampler_stereo_channels_independent_and_reusable():
    left, right = tone(1000, 44100, 1.0), tone(300, 44100, 1.0, amp=0.2)
    r = StreamResampler(44100, 2)
    for _ in range(2):  # flush() resets, so the object can be used again
        y = np.concatenate([r.process(np.stack([left, right], 1)), r.flush()])
        assert y.shape == (16000, 2)
        assert dominant_hz(y[:, 0], 16000) == pytest.approx(1000, abs=2)
        assert dominant_hz(y[:, 1], 16000) == pytest.approx(300, abs=2)
    with pytest.raises(BadChannelRoles, match=r"shape \(n, 2\)"):
        r.process(left)


def test_resampler_passthrough_at_16k():
    x = tone(1000, 16000, 0.5)[:, None]
    r = StreamResampler(16000, 1)
    assert r.passthrough
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().shape == (0, 1)


def test_resampler_rejects_bad_rate():
    with pytest.raises(BadSampleRate):
        StreamResampler(96000, 1)


# --------------------------------------------------------------------------- StreamDecoder


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_stream_decoder_g711_stereo_in_ragged_chunks(encoding):
    table = g711.ULAW_TO_INT16 if encoding == "mulaw" else g711.ALAW_TO_INT16
    customer, agent = tone(1000, 8000, 2.0, 0.5), tone(300, 8000, 2.0, 0.3)
    interleaved = np.stack([customer, agent], 1).ravel()
    data = g711_encode(interleaved, table)

    dec = StreamDecoder(StreamFormat(encoding, 8000, 2))
    assert dec.roles == ("customer", "agent")
    got: dict[str, list[np.ndarray]] = {"customer": [], "agent": []}
    for i in range(0, len(data), 161):  # odd chunk size: frames split across chunks
        for role, arr in dec.feed(data[i : i + 161]).items():
            assert arr.ndim == 1 and arr.dtype == np.float32
            got[role].append(arr)
    for role, arr in dec.flush().items():
        got[role].append(arr)
    out = {role: np.concatenate(parts) for role, parts in got.items()}
    assert len(out["customer"]) == len(out["agent"]) == 32000
    assert dominant_hz(out["customer"], 16000) == pytest.approx(1000, abs=2)
    assert dominant_hz(out["agent"], 16000) == pytest.approx(300, abs=2)
    assert abs(rms_db(middle(out["customer"])) - rms_db(customer)) < 1.0
    assert abs(rms_db(middle(out["agent"])) - rms_db(agent)) < 1.0


def test_stream_decoder_16k_pcm_passthrough_and_roles():
    x = (np.stack([tone(1000, 16000, 0.1), tone(200, 16000, 0.1)], 1) * 32767).astype("<i2")
    dec = StreamDecoder(StreamFormat("pcm_s16le", 16000, 2, ("agent", "customer")))
    out = dec.feed(x.tobytes())
    np.testing.assert_allclose(out["agent"], x[:, 0] / 32768)
    np.testing.assert_allclose(out["customer"], x[:, 1] / 32768)
    assert all(len(v) == 0 for v in dec.flush().values())
    assert all(len(v) == 0 for v in dec.feed(b"").values())


def test_stream_decoder_partial_frame_errors():
    fmt = StreamFormat("pcm_s16le", 8000, 2)
    dec = StreamDecoder(fmt)
    dec.feed(bytes(8))
    dec.feed(bytes(3))  # a partial frame is kept ...
    with pytest.raises(BadFrameSize, match=r"mid-frame: 3 byte\(s\) left over.*4 bytes"):
        dec.flush()  # ... but the stream may not end on it
    dec.feed(bytes(1))  # completing the frame makes flush() fine
    dec.flush()

    strict = StreamDecoder(fmt, strict=True)
    with pytest.raises(BadFrameSize, match="3 bytes of pcm_s16le with 2 channel"):
        strict.feed(bytes(3))

    with pytest.raises(NonFiniteAudio):
        StreamDecoder(StreamFormat("f32le", 16000)).feed(np.array([np.nan], "<f4").tobytes())


# --------------------------------------------------------------------------- real recordings


@needs_clips
def test_load_jfk_flac_44k_stereo():
    rec = load_recording(SPEECH / "jfk.flac")
    assert rec.sample_rate_in == 44100 and rec.sample_rate == 16000
    assert rec.duration_s == pytest.approx(11.0, abs=0.05)
    assert rec.roles == ("customer", "agent") and list(rec.channels) == ["customer", "agent"]
    for arr in rec.channels.values():
        assert arr.dtype == np.float32 and arr.ndim == 1
        assert len(arr) / 16000 == pytest.approx(11.0, abs=0.05)
        assert np.abs(arr).max() <= 1.0 and rms_db(arr) > -40  # real speech, not silence
    # Same speech on both channels of this clip.
    assert np.corrcoef(rec["customer"], rec["agent"])[0, 1] > 0.99


@needs_clips
def test_load_stereo_wav_two_speakers_and_role_override():
    rec = load_recording(SPEECH / "stereo_diarization.wav")
    assert rec.sample_rate_in == 16000 and rec.duration_s == pytest.approx(5.0, abs=0.05)
    cust, agent = rec["customer"], rec["agent"]
    assert len(cust) == len(agent) == pytest.approx(80000, abs=800)
    assert abs(np.corrcoef(cust, agent)[0, 1]) < 0.3  # a different speaker on each channel
    raw, _ = sf.read(SPEECH / "stereo_diarization.wav", dtype="float32")
    np.testing.assert_array_equal(cust, raw[:, 0])  # 16 kHz in -> untouched

    swapped = load_recording(SPEECH / "stereo_diarization.wav", channel_roles=("agent", "customer"))
    np.testing.assert_array_equal(swapped["customer"], agent)
    np.testing.assert_array_equal(swapped["agent"], cust)
    by_index = load_recording(SPEECH / "stereo_diarization.wav", channel_roles={"customer": 1})
    assert by_index.roles == ("customer",)
    np.testing.assert_array_equal(by_index["customer"], agent)

    mixed = load_recording(SPEECH / "stereo_diarization.wav", mono=True)
    assert mixed.roles == ("customer",)
    np.testing.assert_allclose(mixed["customer"], (cust + agent) / 2, atol=1e-6)

    with pytest.raises(BadChannelRoles, match=r"stereo_diarization\.wav.*2 channel.*mono=True"):
        load_recording(SPEECH / "stereo_diarization.wav", channel_roles=("customer",))
    with pytest.raises(BadChannelRoles, match=r"channel 2"):
        load_recording(SPEECH / "stereo_diarization.wav", channel_roles={"customer": 2})


@needs_clips
def test_load_mp3_mono():
    rec = load_recording(SPEECH / "multilingual.mp3")
    assert rec.sample_rate_in == 24000
    assert rec.roles == ("customer",)
    assert rec.duration_s == pytest.approx(59.9, abs=0.05)
    assert len(rec["customer"]) / 16000 == pytest.approx(59.9, abs=0.05)
    assert rec["customer"].dtype == np.float32 and rms_db(rec["customer"]) > -40


@needs_clips
def test_load_mp3_via_pyav_fallback(monkeypatch):
    pytest.importorskip("av", reason="PyAV (a faster-whisper dependency) is not installed")
    monkeypatch.setattr(audio, "_SF_HAS_MP3", False)  # as if libsndfile were built without MP3
    rec = load_recording(SPEECH / "multilingual.mp3")
    assert rec.source_format.startswith("mp3/")
    assert rec.sample_rate_in == 24000 and rec.roles == ("customer",)
    assert rec.duration_s == pytest.approx(59.9, abs=0.05)
    assert len(rec["customer"]) / 16000 == pytest.approx(59.9, abs=0.05)


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW"])
def test_load_g711_wav(tmp_path, subtype):
    path = tmp_path / f"call_{subtype.lower()}.wav"
    x = np.stack([tone(1000, 8000, 1.5, 0.5), tone(300, 8000, 1.5, 0.3)], 1)
    sf.write(path, x, 8000, subtype=subtype)
    rec = load_recording(path)
    assert rec.source_format == f"WAV/{subtype}" and rec.sample_rate_in == 8000
    assert rec.duration_s == pytest.approx(1.5, abs=0.05)
    assert len(rec["customer"]) == len(rec["agent"]) == 24000
    assert dominant_hz(rec["customer"], 16000) == pytest.approx(1000, abs=2)
    assert dominant_hz(rec["agent"], 16000) == pytest.approx(300, abs=2)
    assert abs(rms_db(middle(rec["customer"])) - rms_db(x[:, 0])) < 1.0


@pytest.mark.parametrize(("ext", "rate"), [("flac", 44100), ("ogg", 22050), ("wav", 48000)])
def test_load_written_formats(tmp_path, ext, rate):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone(1000, rate, 1.0), rate)
    rec = load_recording(path)
    assert rec.roles == ("customer",) and rec.sample_rate_in == rate
    assert rec.duration_s == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(rec["customer"], 16000) == pytest.approx(1000, abs=2)


def test_load_m4a_via_pyav(tmp_path):
    av = pytest.importorskip("av", reason="PyAV (a faster-whisper dependency) is not installed")
    path = tmp_path / "call.m4a"
    x = np.stack([tone(1000, 16000, 2.0), tone(300, 16000, 2.0, 0.3)])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="stereo")
        for i in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout="stereo")
            frame.sample_rate = 16000
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    rec = load_recording(path)
    assert rec.roles == ("customer", "agent")
    assert rec.duration_s == pytest.approx(2.0, abs=0.15)  # AAC priming/padding samples are not trimmed
    assert dominant_hz(rec["customer"], 16000) == pytest.approx(1000, abs=2)
    assert dominant_hz(rec["agent"], 16000) == pytest.approx(300, abs=2)


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def good_wav(tmp_path) -> Path:
    path = tmp_path / "good.wav"
    sf.write(path, np.stack([tone(1000, 16000, 1.0), tone(300, 16000, 1.0)], 1), 16000, subtype="PCM_16")
    return path


def _cut(src: Path, dst: Path, nbytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:nbytes])
    return dst


def _assert_clean(exc: pytest.ExceptionInfo, name: str) -> None:
    """Our own exception, naming the file, with no libsndfile/FFmpeg exception chained."""
    assert name in str(exc.value)
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__


def test_missing_file(tmp_path):
    with pytest.raises(AudioFileNotFound, match="nowhere.wav") as exc:
        load_recording(tmp_path / "nowhere.wav")
    assert isinstance(exc.value, FileNotFoundError)
    with pytest.raises(AudioFileNotFound, match="not a file"):
        load_recording(tmp_path)


@pytest.mark.parametrize("nbytes_fn", [lambda n: n // 2, lambda n: n // 2 + 1, lambda n: 44], ids=["half", "half+1", "header-only"])
def test_truncated_wav(tmp_path, good_wav, nbytes_fn):
    path = _cut(good_wav, tmp_path / "cut.wav", nbytes_fn(good_wav.stat().st_size))
    with pytest.raises(TruncatedAudio, match=r"cut\.wav: file is truncated") as exc:
        load_recording(path)
    _assert_clean(exc, "cut.wav")


def test_wav_cut_inside_header(tmp_path, good_wav):
    path = _cut(good_wav, tmp_path / "stub.wav", 30)
    with pytest.raises(UnreadableAudio, match=r"stub\.wav: cannot decode as audio") as exc:
        load_recording(path)
    _assert_clean(exc, "stub.wav")


def test_truncated_flac(tmp_path):
    src = tmp_path / "long.flac"
    sf.write(src, tone(440, 16000, 5.0) + np.random.default_rng(1).normal(0, 0.05, 80000).astype(np.float32), 16000)
    path = _cut(src, tmp_path / "cut.flac", src.stat().st_size // 2)
    with pytest.raises(TruncatedAudio, match=r"cut\.flac") as exc:
        load_recording(path)
    _assert_clean(exc, "cut.flac")


@needs_clips
def test_truncated_mp3(tmp_path):
    path = _cut(SPEECH / "multilingual.mp3", tmp_path / "cut.mp3", (SPEECH / "multilingual.mp3").stat().st_size // 2)
    with pytest.raises(TruncatedAudio, match=r"cut\.mp3: file is truncated; it ends after 29\.\d+ s"):
        load_recording(path)


@pytest.mark.parametrize("name", ["notes.wav", "notes.mp3", "notes.flac", "notes.ogg"])
def test_text_file_renamed_as_audio(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is a call transcript, not audio\n" * 20)
    with pytest.raises(UnreadableAudio, match=rf"{name}: cannot decode as audio") as exc:
        load_recording(path)
    _assert_clean(exc, name)


def test_unknown_format(tmp_path):
    path = tmp_path / "call.xyz"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UnsupportedFormat, match=r"call\.xyz: not a supported audio format.*\.wav") as exc:
        load_recording(path)
    _assert_clean(exc, "call.xyz")


def test_zero_length_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 16000)
    with pytest.raises(EmptyAudio, match=r"empty\.wav: contains no audio"):
        load_recording(path)
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    with pytest.raises(UnreadableAudio, match=r"zero\.wav"):
        load_recording(zero)


def test_nan_in_float_wav(tmp_path):
    path = tmp_path / "nan.wav"
    x = tone(1000, 16000, 0.5)
    x[100] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudio, match=r"nan\.wav"):
        load_recording(path)


def test_file_sample_rate_out_of_range(tmp_path):
    path = tmp_path / "hifi.wav"
    sf.write(path, tone(1000, 96000, 0.2), 96000)
    with pytest.raises(BadSampleRate, match=r"hifi\.wav: sample rate 96000 Hz"):
        load_recording(path)
