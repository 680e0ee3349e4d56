"""Property-based tests (hypothesis) of every decoder and wire-protocol parser: G.711, PCM and the
stream decoder, the Twilio and AudioHook protocol objects and the Twilio track aligner, the native
protocol's start/stop, and the control-message parser.  Whatever arrives from the network either
decodes or is refused with the module's own error (AudioError, ProtocolError), never anything else:
anything else would end a call with 1011 internal_error."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calltone.server.audiohook import PROBE_ID, AudioHookProtocol, call_language, choose_media, duration_s
from calltone.server.ingest import Audio, Language, Open, Send, Skip, Stop
from calltone.server.native import NativeProtocol
from calltone.server.protocol import CLOSE_CODES, Limits, ProtocolError, parse_control
from calltone.server.signature import AudioHookVerifier, LocalNonces
from calltone.server.twilio import TWILIO_TRACKS, TrackAligner, TwilioProtocol
from calltone.settings import ServerSettings
from calltone.speech.audio import (BYTES_PER_SAMPLE, ENCODINGS, AudioError, StreamDecoder, StreamFormat, decode_pcm,
                                   encode_pcm)
from calltone.speech.g711 import ALAW_TO_INT16, G711_FLOAT, ULAW_SILENCE, ULAW_TO_INT16, alaw_encode, ulaw_encode

settings.register_profile("calltone", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("calltone")

LIMITS = Limits()
G711 = {"mulaw": (ulaw_encode, ULAW_TO_INT16), "alaw": (alaw_encode, ALAW_TO_INT16)}
RATES = st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000])

# JSON values, with keys the protocols look at so that generated messages reach their branches
KEYS = st.sampled_from(["type", "event", "media", "start", "stop", "track", "payload", "chunk", "timestamp", "tracks",
                        "mediaFormat", "encoding", "sampleRate", "customParameters", "callSid", "streamSid", "token",
                        "language", "agent_id", "call_id", "sample_rate", "channels", "channel_roles", "metadata",
                        "events", "partials", "version", "id", "seq", "serverseq", "position", "parameters",
                        "organizationId", "conversationId", "participant", "customConfig", "continuedSessions",
                        "format", "rate", "discarded", "reason", "code", "message", "ani", "dnis"]) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
           | st.sampled_from(["start", "stop", "media", "ping", "open", "close", "update", "paused", "resumed",
                              "discarded", "error", "inbound", "outbound", "external", "internal", "PCMU", "L16",
                              "mulaw", "audio/x-mulaw", "zh", "en", "auto", "2", "PT1.5S", "PT" + "9" * 400 + "H",
                              "PT" + "9" * 400 + "S", "AAAA", "@@@", PROBE_ID])
           | st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                    max_leaves=25)
OBJECTS = st.dictionaries(KEYS, JSON, max_size=6)


def as_wire(msg: dict, bulk_keys: frozenset[str] = frozenset()) -> dict:
    """``msg`` as the ingest loop hands it to a protocol: serialised, then through parse_control."""
    return parse_control(json.dumps(msg), LIMITS, bulk_keys)


def receive(proto: Any, msg: dict) -> Any:
    """What the ingest loop does with one text message: parse_control, then the protocol's ``text``."""
    return refused_only(lambda: proto.text(as_wire(msg, proto.bulk_keys)))


def refused_only(fn, *args: Any) -> Any:
    """Call ``fn``; a ProtocolError (with a documented code) is an answer, any other exception fails the test."""
    try:
        return fn(*args)
    except ProtocolError as e:
        assert e.code in CLOSE_CODES and e.message
        return e


# --------------------------------------------------------------------------- G.711


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=400), st.sampled_from(sorted(G711)))
def test_g711_decode_encode_is_a_neighbouring_level(samples: list[int], encoding: str) -> None:
    """decode(encode(x)) is one of the two decoder levels around x: the G.711 quantisation error, no more."""
    encode, table = G711[encoding]
    x = np.array(samples, np.int16)
    y = table[np.frombuffer(encode(x), np.uint8)].astype(int)
    levels = np.unique(table.astype(int))
    i = np.searchsorted(levels, x.astype(int))
    below, above = levels[np.clip(i - 1, 0, len(levels) - 1)], levels[np.clip(i, 0, len(levels) - 1)]
    assert np.all((y == below) | (y == above) | (y == x))
    assert np.all(np.sign(y) * np.sign(x) >= 0)  # never the wrong sign


@given(st.binary(min_size=1, max_size=512))
def test_g711_encode_decode_gives_the_code_back(codes: bytes) -> None:
    c = np.frombuffer(codes, np.uint8)
    assert alaw_encode(ALAW_TO_INT16[c]) == codes
    # µ-law has two codes for zero (0x7F "-0" and 0xFF "+0"); zero encodes as 0xFF
    assert ulaw_encode(ULAW_TO_INT16[c]) == np.where(c == 0x7F, 0xFF, c).astype(np.uint8).tobytes()


@given(st.lists(st.floats(-1.0, 1.0, width=32), min_size=1, max_size=200), st.sampled_from(sorted(G711)))
def test_g711_float_tables_match_the_int_tables(samples: list[float], encoding: str) -> None:
    encode, table = G711[encoding]
    codes = np.frombuffer(encode(np.array(samples, np.float32)), np.uint8)
    assert np.array_equal(G711_FLOAT[encoding][codes], table[codes] / np.float32(32768.0))
    assert ULAW_TO_INT16[ULAW_SILENCE[0]] == 0


# --------------------------------------------------------------------------- PCM and the stream decoder


@st.composite
def stream_formats(draw: st.DrawFn) -> StreamFormat:
    channels = draw(st.integers(1, 3))
    roles = ("customer", "agent", "supervisor")[:channels]
    return StreamFormat(draw(st.sampled_from(ENCODINGS)), draw(RATES), channels, roles)


@st.composite
def valid_audio(draw: st.DrawFn) -> tuple[StreamFormat, bytes]:
    """A format and whole frames of audio in it (f32le: finite floats in [-1, 1])."""
    fmt = draw(stream_formats())
    frames = draw(st.integers(0, 600))
    if fmt.encoding == "f32le":
        x = draw(st.lists(st.floats(-1.0, 1.0, width=32), min_size=frames * fmt.channels,
                          max_size=frames * fmt.channels))
        return fmt, np.array(x, "<f4").tobytes()
    return fmt, draw(st.binary(min_size=frames * fmt.frame_bytes, max_size=frames * fmt.frame_bytes))


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=300))
def test_pcm16_round_trip_is_exact(samples: list[int]) -> None:
    raw = np.array(samples, "<i2").tobytes()
    fmt = StreamFormat("pcm_s16le", 16000)
    x = decode_pcm(raw, fmt)
    assert x.dtype == np.float32 and np.array_equal(x[:, 0] * 32768, np.array(samples, np.float32))
    assert encode_pcm(x, "pcm_s16le") == raw


@given(valid_audio())
def test_decode_encode_decode_is_stable(case: tuple[StreamFormat, bytes]) -> None:
    fmt, raw = case
    if not raw:
        return
    x = decode_pcm(raw, fmt)
    assert x.shape == (len(raw) // fmt.frame_bytes, fmt.channels) and np.all(np.abs(x) <= 1.0)
    again = encode_pcm(x, fmt.encoding)
    assert len(again) == len(raw)
    if fmt.encoding != "mulaw":  # every code but µ-law's "-0" comes back as it was
        assert again == raw
    assert np.array_equal(decode_pcm(again, fmt), x)


@given(valid_audio(), st.lists(st.integers(0, 4000), max_size=12))
def test_stream_decoder_chunking_does_not_change_the_audio(case: tuple[StreamFormat, bytes], cuts: list[int]) -> None:
    """Fed in any chunks (also mid-frame), a decoder gives the same 16 kHz audio as fed all at once."""
    fmt, raw = case
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    whole, chunked = StreamDecoder(fmt), StreamDecoder(fmt)
    one = [whole.feed(raw), whole.flush()]
    many = [chunked.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:])] + [chunked.flush()]
    for role in fmt.channel_roles:
        a = np.concatenate([part[role] for part in one])
        b = np.concatenate([part[role] for part in many])
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6)


@given(st.binary(max_size=600), st.sampled_from(ENCODINGS), RATES, st.integers(1, 3), st.booleans())
def test_any_bytes_decode_or_raise_audio_error(raw: bytes, encoding: str, rate: int, channels: int, strict: bool) -> None:
    fmt = StreamFormat(encoding, rate, channels, ("customer", "agent", "supervisor")[:channels])
    try:
        x = decode_pcm(raw, fmt)
        assert x.shape == (len(raw) // fmt.frame_bytes, channels) and np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1)
    except AudioError:
        pass
    decoder = StreamDecoder(fmt, strict=strict)
    for step in (decoder.feed, lambda _: decoder.flush()):
        try:
            out = step(raw)
            assert set(out) == set(fmt.channel_roles) and all(np.all(np.isfinite(v)) for v in out.values())
        except AudioError:
            pass


@given(JSON, JSON, JSON, st.one_of(st.none(), st.lists(JSON, max_size=4)))
def test_stream_format_accepts_or_raises_audio_error(encoding: Any, rate: Any, channels: Any, roles: Any) -> None:
    try:
        fmt = StreamFormat(encoding, rate, channels, tuple(roles or ()))
    except AudioError:
        return
    assert fmt.encoding in BYTES_PER_SAMPLE and 8000 <= fmt.sample_rate <= 48000
    assert len(fmt.channel_roles) == fmt.channels


# --------------------------------------------------------------------------- control messages


def json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    return 0


def json_nodes(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(map(json_nodes, value.values()))
    if isinstance(value, list):
        return len(value) + sum(map(json_nodes, value))
    return 0


def longest_string(value: Any) -> int:
    if isinstance(value, dict):
        return max([0, *map(len, value), *map(longest_string, value.values())])
    if isinstance(value, list):
        return max([0, *map(longest_string, value)])
    return len(value) if isinstance(value, str) else 0


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_parse_control_of_any_text_is_a_dict_or_a_refusal(text: str) -> None:
    out = refused_only(parse_control, text, LIMITS)
    assert isinstance(out, (dict, ProtocolError))
    if isinstance(out, ProtocolError):
        assert out.code in ("bad_json", "frame_too_large")


@given(st.integers(1, 20_000), st.sampled_from(["[", "{\"a\":", "[{\"k\": ", "\"[\",", "{\"x\": \"\\\"\", \"y\": ["]),
       st.sampled_from(["", "1", "]", "}", "\"tail\"}"]))
def test_parse_control_never_recurses_on_deep_nesting(n: int, opener: str, closer: str) -> None:
    text = opener * n + closer * n
    out = refused_only(parse_control, text[: LIMITS.max_text_bytes + 10], LIMITS)
    if isinstance(out, dict):
        assert json_depth(out) <= LIMITS.max_json_depth


@given(st.dictionaries(KEYS, st.recursive(SCALARS | st.text(min_size=1000, max_size=1100),
                                          lambda inner: st.lists(inner, max_size=70) | st.dictionaries(KEYS, inner, max_size=6),
                                          max_leaves=120), max_size=4))
def test_parse_control_bounds_depth_nodes_and_strings(msg: dict) -> None:
    """A JSON object is accepted exactly when it is within every documented bound."""
    text = json.dumps(msg)
    within = (len(text) <= LIMITS.max_text_bytes and json_depth(msg) <= LIMITS.max_json_depth
              and json_nodes(msg) <= LIMITS.max_json_nodes and longest_string(msg) <= LIMITS.max_json_string)
    out = refused_only(parse_control, text, LIMITS)
    assert isinstance(out, dict) == within, (within, out)
    if within:
        assert out == json.loads(text)


# --------------------------------------------------------------------------- native protocol


@st.composite
def native_starts(draw: st.DrawFn) -> dict:
    """Start messages, mostly valid, with any field possibly replaced by any JSON value."""
    channels = draw(st.integers(1, 3))
    msg: dict = {"type": "start", "sample_rate": draw(RATES), "channels": channels,
                 "encoding": draw(st.sampled_from([*ENCODINGS, "ulaw", "pcmu", "opus"])),
                 "channel_roles": ["customer", "agent", "supervisor"][:channels], "language": draw(st.sampled_from(
                     ["zh", "en", "auto", "fr"])), "agent_id": draw(st.sampled_from(["a1", "<b>", None])),
                 "metadata": draw(st.dictionaries(st.text(max_size=5), JSON, max_size=3))}
    for key in draw(st.lists(st.sampled_from(sorted(msg)), max_size=2)):
        msg[key] = draw(JSON)
    return msg


@given(native_starts(), st.lists(OBJECTS | native_starts() | st.just({"type": "stop"}), max_size=4),
       st.lists(st.binary(max_size=64), max_size=3))
def test_native_start_stop_and_audio(start: dict, later: list[dict], frames: list[bytes]) -> None:
    proto = NativeProtocol("call-1", LIMITS, 64_000)
    stopped = refused_only(proto.text, {"type": "stop"})
    assert isinstance(stopped, ProtocolError) and stopped.code == "protocol_error"  # stop before start
    before = refused_only(proto.binary, b"\x00\x00")
    assert isinstance(before, ProtocolError) and before.code == "audio_before_start"
    opened = receive(proto, start)
    if isinstance(opened, ProtocolError):
        return
    (item,) = opened
    assert isinstance(item, Open) and item.call_id == "call-1"
    assert tuple(item.options.roles) == proto.decoder.fmt.channel_roles
    for frame in frames:
        out = refused_only(proto.binary, frame)
        assert isinstance(out, ProtocolError) or all(isinstance(i, Audio) for i in out)
    for msg in later:
        out = receive(proto, msg)
        if msg.get("type") == "start":
            assert isinstance(out, ProtocolError) and out.code == "protocol_error"  # a second start
        elif msg.get("type") == "stop":
            assert out == [Stop()]


# --------------------------------------------------------------------------- Twilio


def twilio_start(tracks: list[str]) -> dict:
    return {"event": "start", "start": {"callSid": "CA" + "1" * 32, "streamSid": "MZ" + "1" * 32, "tracks": tracks,
                                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                                        "customParameters": {"agent_id": "a1", "language": "en"}}}


def twilio_protocol() -> TwilioProtocol:
    proto = TwilioProtocol(None, ServerSettings(), LIMITS)  # type: ignore[arg-type]  # no socket: the upgrade is not checked here
    proto.signed = True  # as after a verified X-Twilio-Signature: start needs no bearer token (nor the socket)
    return proto


TWILIO_MEDIA = st.fixed_dictionaries({"event": st.just("media"), "media": st.fixed_dictionaries(
    {}, optional={"track": st.sampled_from(["inbound", "outbound", "both"]) | JSON,
                  "payload": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | JSON,
                  "chunk": st.integers(-3, 50).map(str) | JSON, "timestamp": st.integers(-100, 20_000).map(str) | JSON})}
) | st.fixed_dictionaries({"event": st.just("media"), "media": JSON})


TWILIO_STARTS = st.fixed_dictionaries({"event": st.just("start"), "start": st.fixed_dictionaries({}, optional={
    "callSid": st.just("CA" + "2" * 32) | JSON, "streamSid": JSON,
    "tracks": st.lists(st.sampled_from(["inbound", "outbound", "both"]) | JSON, max_size=3) | JSON,
    "mediaFormat": st.fixed_dictionaries({}, optional={"encoding": st.just("audio/x-mulaw") | JSON,
                                                       "sampleRate": st.just(8000) | JSON}) | JSON,
    "customParameters": st.dictionaries(KEYS, JSON, max_size=4) | JSON}) | JSON})


@given(st.lists(OBJECTS | TWILIO_STARTS | TWILIO_MEDIA, max_size=6))
def test_twilio_arbitrary_messages_are_answered_or_refused(messages: list[dict]) -> None:
    proto = twilio_protocol()
    for msg in messages:
        receive(proto, msg)


@pytest.mark.parametrize("tracks", [1, 2.5, True, "inbound"])
def test_twilio_start_with_tracks_not_a_list(tracks: Any) -> None:
    with pytest.raises(ProtocolError):
        twilio_protocol().text(as_wire({"event": "start", "start": {"callSid": "CA" + "3" * 32, "tracks": tracks}}))


@given(st.lists(st.sampled_from(sorted(TWILIO_TRACKS)), min_size=1, max_size=2, unique=True),
       st.lists(OBJECTS | TWILIO_MEDIA, max_size=8))
def test_twilio_after_start_any_message_is_answered_or_refused(tracks: list[str], messages: list[dict]) -> None:
    proto = twilio_protocol()
    (opened,) = proto.text(as_wire(twilio_start(tracks)))
    assert isinstance(opened, Open) and opened.options.roles == [TWILIO_TRACKS[t] for t in tracks]
    for msg in messages:
        out = receive(proto, msg)
        if isinstance(out, list):
            assert all(isinstance(i, (Audio, Stop)) for i in out)
            assert all(set(i.samples) <= set(opened.options.roles) for i in out if isinstance(i, Audio))


@given(st.lists(st.tuples(st.none() | st.integers(-1000, 60_000), st.none() | st.integers(-5, 400),
                          st.binary(max_size=200)), max_size=40), st.floats(0.0, 5.0))
def test_track_aligner_invariants(packets: list[tuple[int | None, int | None, bytes]], max_gap_s: float) -> None:
    aligner = TrackAligner(max_gap_s)
    written = silence = duplicates = 0
    last_chunk = 0
    for ts, chunk, payload in packets:
        cursor = aligner.cursor
        out = aligner.place(ts, chunk, payload)
        if chunk is not None and chunk <= last_chunk:  # a repeated or older chunk is dropped
            assert out == b""
            duplicates += 1
            continue
        last_chunk = chunk if chunk is not None else last_chunk
        assert out.endswith(payload)
        gap = len(out) - len(payload)
        assert out[:gap] == ULAW_SILENCE * gap and gap <= aligner.max_gap
        if gap:  # only a gap of 10 ms or more is filled, and never past the packet's timestamp
            assert ts is not None and ts * 8 - cursor >= 80 and cursor + gap <= ts * 8
        written += len(out)
        silence += gap
    assert aligner.cursor == written and aligner.gaps_filled == silence and aligner.duplicates == duplicates


@given(st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_track_aligner_adds_nothing_to_a_gapless_track(sizes: list[int]) -> None:
    aligner = TrackAligner(10.0)
    for chunk, n in enumerate(sizes, 1):
        assert aligner.place(aligner.cursor // 8, chunk, b"\x01" * n) == b"\x01" * n
    assert aligner.gaps_filled == 0 and aligner.cursor == sum(sizes)


# --------------------------------------------------------------------------- AudioHook


OFFER = st.fixed_dictionaries({"type": st.just("audio") | JSON, "format": st.sampled_from(["PCMU", "L16", "opus"]) | JSON,
                               "rate": st.sampled_from([8000, 16000]) | JSON,
                               "channels": st.lists(st.sampled_from(["external", "internal", "x"]), max_size=3) | JSON})


def audiohook_protocol() -> AudioHookProtocol:
    proto = AudioHookProtocol(AudioHookVerifier({}), LocalNonces(), LIMITS)
    proto.session_id, proto.organization_id = "session-1", "org-1"  # what the signed upgrade's headers said
    return proto


def envelope(proto: AudioHookProtocol, typ: str, parameters: Any, **override: Any) -> dict:
    """A client message numbered as the protocol expects next."""
    return {"version": "2", "id": proto.session_id, "type": typ, "seq": proto.client_seq + 1, "serverseq": proto.seq,
            "position": "PT0.5S", "parameters": parameters, **override}


@given(JSON)
@example("PT" + "9" * 400 + "H")  # int too large for a float
@example("PT" + "9" * 400 + "S")  # inf seconds
@example("PT1H2M3.25S")
def test_audiohook_duration_is_seconds_or_a_refusal(value: Any) -> None:
    out = refused_only(duration_s, value, "position")
    assert isinstance(out, ProtocolError) or (isinstance(out, float) and 0 <= out < float("inf"))


@given(JSON)
def test_audiohook_language_and_media_choice_never_fail(value: Any) -> None:
    assert call_language(value) in ("zh", "en", "auto")
    chosen = refused_only(choose_media, value)
    assert chosen is None or (isinstance(value, list) and any(chosen is offer for offer in value))


@given(st.lists(OFFER | JSON, max_size=5))
def test_audiohook_chooses_a_usable_offer(offers: list) -> None:
    chosen = choose_media(offers)
    if chosen is not None:
        assert chosen["format"] in ("PCMU", "L16") and chosen["rate"] == 8000
        assert sorted(chosen["channels"]) in (["external", "internal"], ["external"], ["internal"])


@given(st.lists(OBJECTS, max_size=4))
def test_audiohook_arbitrary_messages_are_answered_or_refused(messages: list[dict]) -> None:
    proto = audiohook_protocol()
    for msg in messages:
        receive(proto, msg)


@given(st.fixed_dictionaries({"organizationId": st.just("org-1") | JSON, "conversationId": st.just("conv-1") | JSON,
                              "media": st.lists(OFFER, max_size=3) | JSON}, optional={
    "customConfig": JSON, "participant": JSON, "language": JSON, "continuedSessions": JSON}),
       st.lists(st.tuples(st.sampled_from(["ping", "update", "paused", "resumed", "discarded", "error", "close",
                                           "open", "bogus"]), OBJECTS), max_size=6),
       st.lists(st.binary(max_size=64), max_size=3))
def test_audiohook_session_any_parameters(open_params: dict, later: list[tuple[str, dict]], frames: list[bytes]) -> None:
    """An open with any parameters, then numbered messages of every type with any parameters, and audio."""
    proto = audiohook_protocol()
    opened = receive(proto, envelope(proto, "open", open_params))
    if isinstance(opened, ProtocolError):
        return
    assert isinstance(opened[0], (Open, Send))
    for frame in frames:
        out = refused_only(proto.binary, frame)
        assert isinstance(out, ProtocolError) or all(isinstance(i, Audio) for i in out)
    for typ, params in later:
        out = receive(proto, envelope(proto, typ, params))
        if isinstance(out, ProtocolError):
            frame = proto.refusal(out).frames[0]
            assert frame["type"] == "disconnect" and frame["seq"] == proto.seq
            return
        assert all(isinstance(i, (Language, Send, Skip, Stop)) for i in out)
        assert all(0 <= i.seconds < float("inf") for i in out if isinstance(i, Skip))


@given(st.lists(st.sampled_from(["ok", "seq+1", "seq-1", "serverseq+1", "id", "version"]), min_size=1, max_size=8))
def test_audiohook_sequence_rules(steps: list[str]) -> None:
    """Client messages must count 1, 2, 3, ..., acknowledge no server message not yet sent and carry the
    session id; each pong answers with the next server seq and the client seq it answers."""
    proto = audiohook_protocol()
    proto.text(as_wire(envelope(proto, "open", {"organizationId": "org-1", "conversationId": PROBE_ID, "media": []})))
    for step in steps:
        override = {"ok": {}, "seq+1": {"seq": proto.client_seq + 2}, "seq-1": {"seq": proto.client_seq},
                    "serverseq+1": {"serverseq": proto.seq + 1}, "id": {"id": "another-session"},
                    "version": {"version": "1"}}[step]
        msg = envelope(proto, "ping", {}, **override)
        server_seq = proto.seq
        out = receive(proto, msg)
        if step == "ok":
            (pong,) = out
            assert pong.frame["type"] == "pong" and pong.frame["seq"] == server_seq + 1
            assert pong.frame["clientseq"] == msg["seq"]
        else:
            assert isinstance(out, ProtocolError)
            assert out.code == ("invalid_start" if step == "version" else "protocol_error")
            return


@pytest.mark.parametrize("reason, how", [("end", "stopped"), ("reconnect", "interrupted")])
def test_audiohook_close_ends_or_interrupts(reason: str, how: str) -> None:
    proto = audiohook_protocol()
    proto.text(as_wire(envelope(proto, "open", {"organizationId": "org-1", "conversationId": "conv-1",
                                                "media": [{"type": "audio", "format": "PCMU", "rate": 8000,
                                                           "channels": ["external"]}]})))
    assert proto.text(as_wire(envelope(proto, "close", {"reason": reason}))) == [Stop(how)]


@given(st.lists(OBJECTS, max_size=5))
def test_audiohook_after_a_refusal_only_the_clients_close_counts(messages: list[dict]) -> None:
    proto = audiohook_protocol()
    refusal = proto.refusal(ProtocolError("bad_audio", "x"))
    assert refusal.frames[0]["type"] == "disconnect" and refusal.frames[0]["seq"] == 1 and refusal.linger_s > 0
    for msg in messages:
        assert proto.text(as_wire(msg)) == ([Stop()] if msg.get("type") == "close" else [])
