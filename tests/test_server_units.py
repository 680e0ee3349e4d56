"""Server building blocks that need no speech model: PII masking, the bus, the store,
summaries, auth, Twilio alignment, G.711 encoding, metrics text."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from calltone.server.auth import Authenticator, ConfigError, check_bind, parse_tokens
from calltone.server.bus import Bus, Message, SubscriberTooSlow
from calltone.speech.g711 import ALAW_TO_INT16, ULAW_TO_INT16, alaw_encode, ulaw_encode
from calltone.server.twilio import TrackAligner
from calltone.pii import cn_id_ok, luhn_ok, mask_text, mask_words
from calltone.server.store import AsyncStore
from calltone.summary import summarize
from calltone.server.webhooks import sign, verify

# --------------------------------------------------------------------------- PII


@pytest.mark.parametrize("text, kind, hidden, kept", [
    ("my card is 4111 1111 1111 1111 thanks", "card", "4111 1111 1111", "1111 thanks"),
    ("card 5500-0000-0000-0004", "card", "5500-0000-0000", "0004"),
    ("call me on 13812345678", "phone", "13812345678", ""),
    ("my number is 138 1234 5678.", "phone", "138 1234 5678", ""),
    ("电话是一三八一二三四五六七八", "phone", "一三八一二三四五六七八", "电话是"),
    ("+86 139 0000 1111 is mine", "phone", "139 0000 1111", "is mine"),
    ("reach me at +44 20 7946 0958", "phone", "7946 0958", "reach me at"),
    ("或者 (555) 123-4567", "phone", "123-4567", "或者"),
    ("身份证号11010519491231002X", "cn_id", "11010519491231002X", "身份证号"),
    ("mail john.doe@example.com today", "email", "john.doe@example.com", "today"),
])
def test_pii_masked(text, kind, hidden, kept):
    masked, kinds = mask_text(text)
    assert kind in kinds
    assert hidden not in masked
    assert kept in masked
    assert len(masked) == len(text)


@pytest.mark.parametrize("text", [
    "order 1234567890123 please",         # 13 digits, fails Luhn
    "the amount is 12,000 yuan",
    "reference number 12345",
    "我的订单号是20240101",
    "身份证号110105194912310021",          # wrong check digit (and not Luhn)
    "call at 3 pm",
])
def test_pii_leaves_ordinary_numbers(text):
    assert mask_text(text) == (text, [])


def test_pii_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194912310021")


def test_pii_words_split_across_tokens():
    words = [" my", " card", " 4111", " 1111", " 1111", " 1111", " please"]
    out = mask_words(words)
    assert out == [" my", " card", " ****", " ****", " ****", " 1111", " please"]
    assert mask_words([" hello", " there"]) == [" hello", " there"]


# --------------------------------------------------------------------------- bus


def _msg(typ: str, seq: int, channel: str = "customer") -> Message:
    return Message.of(typ, f'{{"type":"{typ}","seq":{seq}}}', seq, channel)


def test_bus_slow_subscriber_keeps_finals_and_coalesces_partials():
    async def go():
        bus = Bus(default_maxsize=4)
        slow = bus.subscribe("call:x")
        fast = bus.subscribe("call:x")
        seq = 0
        got_fast = []
        for i in range(10):
            for _ in range(5):
                seq += 1
                bus.publish("call:x", _msg("transcript.partial", seq))
                got_fast.append((await fast.get()).seq)
            seq += 1
            bus.publish("call:x", _msg("transcript.final", seq))
            got_fast.append((await fast.get()).seq)
        assert got_fast == list(range(1, seq + 1))  # the fast one saw everything
        items = []
        while len(slow):
            items.append(await slow.get())
        finals = [m.seq for m in items if m.type == "transcript.final"]
        assert finals == [6 * (i + 1) for i in range(10)]  # every final, in order
        assert len([m for m in items if m.type == "transcript.partial"]) <= 4
        assert [m.seq for m in items] == sorted(m.seq for m in items)
        assert bus.stats.dropped + bus.stats.coalesced >= 46

    asyncio.run(go())


def test_bus_overflow_cuts_off_only_the_slow_subscriber():
    async def go():
        bus = Bus(default_maxsize=2)
        slow = bus.subscribe("alerts")
        other = bus.subscribe("alerts")
        for i in range(20):
            bus.publish("alerts", _msg("escalation.raised", i + 1))
            assert (await other.get()).seq == i + 1
        with pytest.raises(SubscriberTooSlow):
            await slow.get()
        assert bus.stats.overflowed == 1

    asyncio.run(go())


def test_bus_lagging_subscribers_cost_bounded_memory_and_keep_every_final():
    async def go():
        bus = Bus(default_maxsize=256)
        subs = [bus.subscribe("call:y") for _ in range(50)]
        for i in range(2000):  # 1500 partials of one channel, 500 finals; nobody reads
            assert bus.publish("call:y", _msg("transcript.partial" if i % 4 else "transcript.final", i + 1)) == 50
        for s in subs:
            assert len(s) <= s.maxsize + 500 and not s.overflowed  # partials coalesced, finals kept beyond the bound
            items = [await s.get() for _ in range(len(s))]
            assert [m.seq for m in items if m.type == "transcript.final"] == list(range(1, 2001, 4))
            # the finals pushed the queued partials out; later partials found none of theirs to replace
            assert [m.seq for m in items if m.type == "transcript.partial"] == []
            s.close()
        assert bus.stats.coalesced + bus.stats.dropped == 50 * 1500  # every partial accounted for
        assert bus.subscriber_count() == 0

    asyncio.run(go())


# --------------------------------------------------------------------------- store


def test_store_roundtrip_ordering_and_purge(tmp_path):
    store = AsyncStore.sqlite(tmp_path / "db.sqlite")
    try:
        now = time.time()
        store.submit(lambda r: r.upsert_call({"call_id": "old", "status": "ended", "started_at": now - 40 * 86400})).result()
        store.submit(lambda r: r.upsert_call({"call_id": "c", "status": "live", "started_at": now, "agent_id": "a1"})).result()
        futs = [store.submit(lambda r, i=i: r.append_event("c", i, "transcript.final", i, now, f'{{"seq":{i}}}')) for i in range(1, 201)]
        futs[-1].result()
        assert all(f.done() and f.exception() is None for f in futs)
        assert store.repo.last_seq("c") == 200
        assert [s for s, _, _ in store.repo.events("c", after=195)] == [196, 197, 198, 199, 200]
        assert store.write_batches < 200  # queued writes were batched
        # a bad write does not take its batch neighbours down
        bad = store.submit(lambda r: r.append_event("c", 1, "x", 0, now, "{}"))  # duplicate seq
        good = store.submit(lambda r: r.append_event("c", 201, "x", 0, now, "{}"))
        with pytest.raises(Exception):
            bad.result()
        good.result()
        assert store.submit(lambda r: r.interrupt_live()).result() == 1
        assert store.repo.get_call("c")["status"] == "interrupted"
        assert store.submit(lambda r: r.purge(now - 30 * 86400)).result() == ["old"]
        assert store.repo.get_call("old") is None
        assert store.repo.list_calls(agent_id="a1")[0]["call_id"] == "c"
    finally:
        store.close()


# --------------------------------------------------------------------------- summary


def test_summary_talk_overtalk_grades():
    events = [
        {"type": "transcript.final", "channel": "agent", "start": 0.0, "end": 4.0, "t": 4.0, "text": "a"},
        {"type": "transcript.final", "channel": "customer", "start": 3.0, "end": 8.0, "t": 8.0, "text": "b"},
        {"type": "emotion.update", "channel": "customer", "t": 3.0, "grade": "calm", "index": 10},
        {"type": "emotion.update", "channel": "customer", "t": 6.0, "grade": "angry", "index": 80},
        {"type": "escalation.raised", "channel": "customer", "t": 6.5, "alert_id": "x", "reason": "r"},
    ]
    s = summarize(events, 10.0)
    assert s.overtalk_s == 1.0
    assert s.silence_s == 2.0
    assert s.talk_share == {"agent": 0.444, "customer": 0.556}
    assert s.grades["customer"].seconds == {"calm": 3.0, "anxious": 0.0, "angry": 2.0}  # speech 3-8 s, angry from 6 s
    assert s.peak_grade == "angry" and s.escalations == 1


# --------------------------------------------------------------------------- auth


def test_auth_tokens_and_bind():
    auth = Authenticator({"agent-token-1": "agent:a1", "supervisor-token": "supervisor:sam"})
    assert auth.lookup("agent-token-1").agent_id == "a1"
    assert auth.lookup("nope") is None and auth.lookup(None) is None
    assert auth.lookup("agent-token-1").can_see_call("a1") and not auth.lookup("agent-token-1").can_see_call("a2")
    assert Authenticator({}).lookup(None).role == "admin"  # dev mode
    assert Authenticator.token_from({"authorization": "Bearer abc"}, {}) == "abc"
    assert Authenticator.token_from({}, {"ticket": "tkt_q"}) == "tkt_q"
    assert Authenticator.token_from({}, {"token": "q"}) is None  # a bearer token is never taken from a URL
    with pytest.raises(ConfigError):
        parse_tokens({"short": "admin"})
    with pytest.raises(ConfigError):
        parse_tokens({"long-enough-token": "root"})
    with pytest.raises(ConfigError):
        parse_tokens({"long-enough-token": "agent"})  # agents need an id
    check_bind("127.0.0.1", {})
    check_bind("::1", {})
    check_bind("0.0.0.0", {"long-enough-token": "admin"})
    with pytest.raises(ConfigError, match="refusing to bind 0.0.0.0"):
        check_bind("0.0.0.0", {})


def test_serve_refuses_open_public_bind(tmp_path, capsys):
    from calltone.server.app import serve
    from calltone.settings import Settings

    s = Settings()
    s.server.host = "0.0.0.0"
    s.server.data_dir = tmp_path
    assert serve(s) == 2
    assert "refusing to bind" in capsys.readouterr().err


# --------------------------------------------------------------------------- Twilio alignment, codecs, webhooks, metrics


def test_track_aligner_fills_gaps_and_drops_duplicates():
    a = TrackAligner(max_gap_s=10)
    assert a.place(0, 1, b"\x01" * 160) == b"\x01" * 160
    assert a.place(20, 2, b"\x02" * 160) == b"\x02" * 160
    assert a.place(20, 2, b"\x02" * 160) == b""  # repeated chunk
    out = a.place(100, 6, b"\x06" * 160)  # chunks 3-5 (60 ms) lost
    assert out == b"\xff" * 480 + b"\x06" * 160
    assert a.cursor == 960
    assert a.place(121, 7, b"\x07" * 160) == b"\x07" * 160  # 1 ms jitter is not a gap


def test_g711_encoders_invert_the_decoder_tables():
    codes = np.arange(256, dtype=np.uint8)
    assert np.mean(np.frombuffer(ulaw_encode(ULAW_TO_INT16[codes]), np.uint8) == codes) > 0.99
    assert np.array_equal(np.frombuffer(alaw_encode(ALAW_TO_INT16[codes]), np.uint8), codes)


def test_webhook_signature():
    sig = sign("k", "1700000000", b'{"a":1}')
    assert sig.startswith("sha256=") and verify("k", "1700000000", b'{"a":1}', sig)
    assert not verify("k", "1700000001", b'{"a":1}', sig)


def test_cancel_and_wait_ends_a_task_that_lost_a_cancellation():
    """As when a cancellation meets a Redis call's own timeout (Python 3.11): the first one is swallowed."""
    from calltone.server.tasks import cancel_and_wait

    async def scenario() -> tuple[bool, bool]:
        swallowed = []

        async def loop() -> None:
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed.append(True)  # lost: the loop carries on

        once = asyncio.ensure_future(loop())
        await asyncio.sleep(0)
        once.cancel()
        await asyncio.wait({once}, timeout=0.5)
        survived = not once.done()
        await cancel_and_wait([once])
        return survived, once.cancelled()

    survived, cancelled = asyncio.run(scenario())
    assert survived and cancelled  # one cancel() left it running; cancel_and_wait ended it
