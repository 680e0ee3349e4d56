"""Fusion, tracker, escalation and guidance logic driven by probability sequences."""

from __future__ import annotations

import math
import random

import pytest

from calltone.emotion.escalation import EscalationConfig, EscalationPolicy
from calltone.emotion.fusion import FusionConfig, Fuser, fuse_probs
from calltone.emotion.guidance import GuidanceBook, GuidanceEmitter
from calltone.emotion.lexicon import default_lexicon
from calltone.emotion.tracker import EmotionTracker, TrackerConfig, TrackerState, lsq_slope
from calltone.events import GRADES, Cue, EmotionUpdate, EscalationCleared, EscalationRaised, Guidance, Probs

CALM = (0.85, 0.12, 0.03)
ANXIOUS = (0.20, 0.70, 0.10)
ANGRY = (0.05, 0.15, 0.80)


def P(v: tuple[float, float, float]) -> Probs:
    return Probs(calm=v[0], anxious=v[1], angry=v[2])


def run(tracker: EmotionTracker, segments: list[tuple[tuple[float, float, float], float]], dt: float = 1.0, t0: float = 0.0) -> list[TrackerState]:
    """Feed ``(probs, seconds)`` segments at one update per ``dt``."""
    states, t = [], t0
    for probs, secs in segments:
        for _ in range(int(round(secs / dt))):
            states.append(tracker.update(t, P(probs)))
            t = round(t + dt, 6)
    return states


# ------------------------------------------------------------------ fusion
def test_fusion_voice_alone_unchanged() -> None:
    fz = Fuser()
    out = fz.fuse(3.0, P(ANXIOUS))
    assert out.probs.model_dump() == pytest.approx(P(ANXIOUS).model_dump())
    assert out.evidence == {"calm": 0.0, "anxious": 0.0, "angry": 0.0}


def test_fusion_text_pushes_but_cannot_force() -> None:
    lex = default_lexicon()
    ms = lex.match("这太过分了，我要投诉，找你们领导！")
    assert len(ms) == 3
    borderline = (0.35, 0.35, 0.30)
    fz = Fuser()
    fz.add_text(10.0, ms)
    pushed = fz.fuse(10.0, P(borderline))
    assert pushed.probs.angry > 0.6  # text tips a borderline voice over
    assert pushed.evidence["angry"] == FusionConfig().max_boost  # capped
    assert {c.name for c in pushed.cues} >= {"phrase.anger", "phrase.escalation"}
    forced = fz.fuse(10.0, P((0.90, 0.07, 0.03)))
    assert forced.probs.calm > forced.probs.angry and forced.probs.angry < 0.5  # but cannot force it
    # the odds ratio angry:calm grows by exactly exp(max_boost)
    ratio = (forced.probs.angry / forced.probs.calm) / (0.03 / 0.90)
    assert ratio == pytest.approx(math.exp(1.5), rel=1e-6)


def test_fusion_decay_memory_negation_and_no_voice() -> None:
    cfg = FusionConfig()
    lex = default_lexicon()
    fz = Fuser(cfg)
    fz.add_text(0.0, lex.match("I'm worried"))
    fz.add_text(0.0, lex.match("I don't want to cancel my account", include_negated=True))  # negated: ignored
    w = lex.match("I'm worried")[0].weight
    assert fz.evidence(0.0)["anxious"] == pytest.approx(w)
    assert fz.evidence(cfg.text_half_life_s)["anxious"] == pytest.approx(w / 2)
    assert fz.evidence(0.0)["angry"] == 0.0
    assert fz.evidence(cfg.text_memory_s + 1)["anxious"] == 0.0
    # no voice: the prior stands in
    assert fuse_probs(None, {}).model_dump() == pytest.approx(dict(zip(GRADES, cfg.voice_prior)))


# ----------------------------------------------------------------- tracker
def test_single_angry_blip_does_not_flip_grade() -> None:
    tr = EmotionTracker()
    states = run(tr, [(CALM, 10), (ANGRY, 1), (CALM, 10)])
    assert all(s.grade == "calm" for s in states)
    # nor does a single blip at the very first update
    tr2 = EmotionTracker()
    assert all(s.grade != "angry" for s in run(tr2, [(ANGRY, 1), (CALM, 10)]))


def test_sustained_anger_flips_within_dwell() -> None:
    tr = EmotionTracker()
    states = run(tr, [(CALM, 10), (ANGRY, 10)])
    first_angry = next(s.t for s in states if s.grade == "angry")
    assert 10.0 < first_angry <= 13.0
    assert all(s.grade == "angry" for s in states if s.t >= first_angry)
    assert any(s.event is not None and s.grade_changed for s in states if s.t == first_angry)


def test_upset_from_first_second_is_not_hidden() -> None:
    tr = EmotionTracker()
    states = run(tr, [(ANGRY, 3)])
    assert states[0].index > 60  # no warm-up: the first update already reads high
    assert states[0].event is not None
    assert states[1].grade == "angry"  # after the 1 s dwell


def test_leaving_angry_needs_lower_threshold_and_dwell() -> None:
    tr = EmotionTracker()
    run(tr, [(ANGRY, 8)])
    assert tr.grade == "angry"
    # one calm second in the middle of anger does not drop it
    s = run(tr, [(CALM, 1), (ANGRY, 3)], t0=8.0)
    assert all(x.grade == "angry" for x in s)
    # hovering between exit and enter thresholds keeps angry (hysteresis)
    mid = (0.35, 0.23, 0.42)
    s = run(tr, [(mid, 10)], t0=12.0)
    assert all(x.grade == "angry" for x in s)
    s = run(tr, [(CALM, 10)], t0=22.0)
    assert s[-1].grade == "calm"
    # the same middle level never enters angry from calm
    tr2 = EmotionTracker()
    assert all(x.grade != "angry" for x in run(tr2, [(CALM, 5), (mid, 20)]))


def test_anxious_grade() -> None:
    tr = EmotionTracker()
    states = run(tr, [(CALM, 5), (ANXIOUS, 10), (CALM, 10)])
    grades = [s.grade for s in states]
    assert "anxious" in grades and "angry" not in grades and grades[-1] == "calm"


def test_index_rises_and_trend_positive_on_rising_sequence() -> None:
    tr = EmotionTracker()
    states = []
    for i in range(31):
        a = i / 30
        probs = (0.9 * (1 - a) + 0.05 * a, 0.08 * (1 - a) + 0.15 * a, 0.02 * (1 - a) + 0.8 * a)
        states.append(tr.update(float(i), P(probs)))
    idx = [s.index for s in states]
    assert all(b >= a - 1e-9 for a, b in zip(idx, idx[1:]))
    assert idx[-1] - idx[0] > 50
    assert states[-1].trend > 60  # points per minute
    assert states[0].trend == 0.0  # no trend before the window spans trend_min_span_s
    # and it falls on the way down
    down = run(tr, [(CALM, 10)], t0=31.0)
    assert down[-1].trend < 0
    assert lsq_slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2.0)


def test_index_definition() -> None:
    tr = EmotionTracker()
    s = tr.update(0.0, P((0.2, 0.4, 0.4)))
    assert s.index == pytest.approx(100 * (0.5 * 0.4 + 0.4))


def test_smoothing_uses_seconds_not_updates() -> None:
    """The same signal at 1 Hz and at 10 Hz gives the same smoothed value at the same time
    (each update's probabilities stand for the interval since the previous update)."""
    a, b = EmotionTracker(), EmotionTracker()
    for k in range(8):  # 1 Hz: calm up to t=5, angry for (5, 7]
        sa = a.update(float(k), P(CALM if k <= 5 else ANGRY))
    for k in range(71):  # 10 Hz: same signal
        t = k / 10
        sb = b.update(t, P(CALM if t <= 5.0 + 1e-9 else ANGRY))
    assert sa.t == sb.t == 7.0
    assert sa.probs.angry == pytest.approx(sb.probs.angry, abs=1e-9)
    tau = TrackerConfig().tau_s
    assert sa.probs.angry == pytest.approx(CALM[2] + (ANGRY[2] - CALM[2]) * (1 - math.exp(-2.0 / tau)), abs=1e-9)


def test_silence_gap_neither_decays_nor_jumps() -> None:
    cfg = TrackerConfig()
    tr, ref = EmotionTracker(config=cfg), EmotionTracker(config=cfg)
    run(tr, [(ANGRY, 10)])
    run(ref, [(ANGRY, 10)])
    s = tr.update(60.0, P(CALM))  # first words after 50 s of silence
    r = ref.update(9.0 + cfg.max_gap_s, P(CALM))  # counts like a gap of max_gap_s
    assert s.probs.angry == pytest.approx(r.probs.angry)
    assert s.grade == "angry" and s.index > 30
    assert s.trend == 0.0 or abs(s.trend) < 1e3


def test_emission_rate_bounded() -> None:
    cfg = TrackerConfig()
    tr = EmotionTracker(config=cfg)
    rng = random.Random(7)
    events: list[tuple[TrackerState, EmotionUpdate]] = []
    t = 0.0
    while t < 60.0:  # noisy 10 Hz updates
        base = ANGRY if 20 <= t < 40 else CALM
        noisy = [max(0.001, x + rng.uniform(-0.3, 0.3)) for x in base]
        s = tr.update(t, noisy, [Cue(name="pitch_mean", label="voice pitch raised", z=rng.uniform(0, 3))])
        if s.event is not None:
            assert isinstance(s.event, EmotionUpdate)
            events.append((s, s.event))
        t = round(t + 0.1, 6)
    times = [e.t for _, e in events]
    assert times[0] == 0.0
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= cfg.emit_max_interval_s + 1e-6  # at least every 5 s
    non_grade = [e.t for s, e in events if not s.grade_changed]
    for a, b in zip(non_grade, non_grade[1:]):
        assert b - a >= cfg.emit_min_interval_s - 1e-6  # at most 1/s besides grade changes
    assert len(events) <= 60 / cfg.emit_min_interval_s + 10
    ev = events[-1][1]
    assert len(ev.cues) <= cfg.max_cues and ev.channel == "customer"


def test_steady_call_emits_heartbeat_only() -> None:
    tr = EmotionTracker()
    states = run(tr, [(CALM, 30)])
    assert [s.t for s in states if s.event is not None] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


# -------------------------------------------------------------- escalation
def drive(
    segments: list[tuple[tuple[float, float, float], float]],
    config: EscalationConfig = EscalationConfig(),
    channel: str = "customer",
    texts: dict[float, str] | None = None,
    t0: float = 0.0,
    tracker: EmotionTracker | None = None,
    policy: EscalationPolicy | None = None,
):
    """Tracker + fusion + lexicon + policy, one update per second; returns (events, tracker, policy)."""
    lex = default_lexicon()
    tracker = tracker or EmotionTracker(channel=channel, call_id="c1")
    policy = policy or EscalationPolicy(channel=channel, call_id="c1", config=config)
    fuser = Fuser()
    texts = texts or {}
    out = []
    t = t0
    for probs, secs in segments:
        for _ in range(int(secs)):
            text = texts.get(t)
            ms = lex.match(text) if text else []
            fuser.add_text(t, ms)
            fused = fuser.fuse(t, P(probs), [Cue(name="loudness", label="louder than usual", z=2.5 if probs == ANGRY else 0.2)])
            state = tracker.update(t, fused.probs, fused.cues)
            out += policy.update(state, [m.at(t) for m in ms], text)
            t += 1.0
    return out, tracker, policy


def raised(events) -> list[EscalationRaised]:
    return [e for e in events if isinstance(e, EscalationRaised)]


def cleared(events) -> list[EscalationCleared]:
    return [e for e in events if isinstance(e, EscalationCleared)]


def test_config_files_match_code_defaults(tmp_path) -> None:
    assert EscalationConfig.load() == EscalationConfig()
    assert TrackerConfig.load() == TrackerConfig()
    assert FusionConfig.load() == FusionConfig()
    user = tmp_path / "esc.toml"
    user.write_text("cooldown_s = 90.0\n[angry_sustained]\nmin_s = 6.0\n", encoding="utf-8")
    cfg = EscalationConfig.load(user)
    assert cfg.cooldown_s == 90.0 and cfg.angry_sustained.min_s == 6.0
    assert cfg.angry_sustained.enabled and cfg.clear.calm_s == 20.0  # other keys keep their defaults
    bad = tmp_path / "bad.toml"
    bad.write_text("[angry_sustaned]\nmin_s = 6.0\n", encoding="utf-8")
    with pytest.raises(ValueError):
        EscalationConfig.load(bad)  # typos are errors, not silently ignored


def test_steady_calls_raise_nothing() -> None:
    for probs in (CALM, ANXIOUS):
        events, _, _ = drive([(probs, 180)])
        assert events == []
    # a one-second blip in a calm call does not raise
    events, _, _ = drive([(CALM, 20), (ANGRY, 1), (CALM, 30), (ANGRY, 1), (CALM, 20)])
    assert events == []
    # the shipped defaults alert on short flares (make_calls.py 'flare' calls must alert);
    # index_rise.hold_s makes 1-2 s outbursts pass silently where that is preferred
    cfg = EscalationConfig(index_rise={"hold_s": 2.0})
    events, _, _ = drive([(CALM, 20), (ANGRY, 2), (CALM, 30), (ANGRY, 1), (CALM, 30), (ANGRY, 2), (CALM, 20)], config=cfg)
    assert events == []


def test_sustained_anger_raises_exactly_one_alert_with_reason_and_evidence() -> None:
    events, _, policy = drive([(CALM, 20), (ANGRY, 60)], texts={21.0: "This is ridiculous, I've been waiting for a week"})
    alerts = raised(events)
    assert len(alerts) == 1
    a = alerts[0]
    assert 20.0 < a.t <= 30.0  # within 10 s of onset
    assert a.channel == "customer" and a.call_id == "c1" and a.alert_id == policy.active_alert
    assert a.reason
    ev = a.evidence
    assert ev["rule"] in ("angry_sustained", "index_rise")
    assert ev["grade"] in ("anxious", "angry")  # index_rise may fire on the way up
    assert ev["grades"][-1]["grade"] == ev["grade"] and ev["grades"][0]["grade"] == "calm"
    assert 2 <= len(ev["index_history"]) <= EscalationConfig().evidence.max_points
    assert ev["index_history"][-1][1] == pytest.approx(ev["index"], abs=0.1)
    assert ev["cues"] and ev["cues"][0]["name"] in ("loudness", "phrase.anger")
    assert any(w["text"].startswith("This is ridiculous") for w in ev["words"])
    assert any(p["category"] == "anger" for p in ev["phrases"])
    assert cleared(events) == []


def test_angry_sustained_rule_alone() -> None:
    cfg = EscalationConfig(index_rise={"enabled": False}, phrase={"enabled": False})
    events, tr, _ = drive([(CALM, 20), (ANGRY, 30)], config=cfg)
    (a,) = raised(events)
    assert a.evidence["rule"] == "angry_sustained" and "angry for 3 s" in a.reason
    assert a.t - a.evidence["grade_since"] == pytest.approx(cfg.angry_sustained.min_s)


def test_index_rise_rule_alone() -> None:
    cfg = EscalationConfig(angry_sustained={"enabled": False}, phrase={"enabled": False})
    events, _, _ = drive([(CALM, 20), (ANGRY, 30)], config=cfg)
    (a,) = raised(events)
    assert a.evidence["rule"] == "index_rise" and "rose" in a.reason
    assert a.evidence["index"] >= 60 and a.evidence["rules"][0]["rise"] >= 25
    # a slow drift does not count as a rise
    slow = [((0.85 - 0.02 * i, 0.12, 0.03 + 0.02 * i), 5) for i in range(20)]
    events, _, _ = drive(slow, config=cfg)
    assert raised(events) == []


def test_clearing_after_calm_and_tick() -> None:
    events, tr, policy = drive([(CALM, 10), (ANGRY, 20), (CALM, 40)])
    (a,) = raised(events)
    (c,) = cleared(events)
    assert c.alert_id == a.alert_id and c.reason
    calm_since = next(s for s in [tr.state] if s).grade_since
    assert c.t == pytest.approx(calm_since + 20.0)
    # tick clears without updates (the caller went quiet after calming down)
    events, tr, policy = drive([(CALM, 10), (ANGRY, 20), (CALM, 5)])
    assert policy.active_alert is not None
    assert policy.tick(tr.state.t + 5.0) == []
    (c2,) = policy.tick(tr.state.grade_since + 20.0)
    assert c2.alert_id == raised(events)[0].alert_id and policy.active_alert is None


def test_cooldown() -> None:
    cfg = EscalationConfig()
    events, tr, policy = drive([(CALM, 10), (ANGRY, 15), (CALM, 25), (ANGRY, 15)])
    assert len(raised(events)) == 1 and len(cleared(events)) == 1  # second burst inside the cooldown
    t_first = raised(events)[0].t
    more, _, _ = drive([(CALM, 25), (ANGRY, 20)], t0=tr.state.t + 1.0, tracker=tr, policy=policy)
    (second,) = raised(more)
    assert second.t - t_first >= cfg.cooldown_s
    assert second.alert_id != raised(events)[0].alert_id


def test_no_second_alert_while_active() -> None:
    events, _, _ = drive([(CALM, 5), (ANGRY, 200)], texts={100.0: "I want to speak to your manager"})
    assert len(raised(events)) == 1


def test_phrase_rule() -> None:
    cfg = EscalationConfig(angry_sustained={"enabled": False}, index_rise={"enabled": False})
    # escalation phrase while anxious -> alert naming the words
    events, _, _ = drive([(CALM, 5), (ANXIOUS, 15)], config=cfg, texts={12.0: "我要投诉，找你们领导"})
    (a,) = raised(events)
    assert a.t == 12.0 and a.evidence["rule"] == "phrase" and "找你们领导" in a.reason
    # the same words while calm -> nothing
    events, _, _ = drive([(CALM, 30)], config=cfg, texts={12.0: "I want to speak to your manager"})
    assert raised(events) == []
    # negated -> nothing
    events, _, _ = drive([(CALM, 5), (ANXIOUS, 15)], config=cfg, texts={12.0: "我不是要投诉"})
    assert raised(events) == []
    # said just before the grade turns anxious -> still counts (phrase.memory_s)
    events, _, _ = drive([(CALM, 6), (ANXIOUS, 15)], config=cfg, texts={5.0: "let me talk to a supervisor"})
    (a,) = raised(events)
    assert a.evidence["rule"] == "phrase" and a.t <= 5.0 + cfg.phrase.memory_s


def test_agent_channel_ignored_unless_opted_in() -> None:
    events, _, policy = drive([(CALM, 5), (ANGRY, 60)], channel="agent")
    assert events == [] and not policy.enabled
    cfg = EscalationConfig(score_agent=True)
    events, _, _ = drive([(CALM, 5), (ANGRY, 60)], channel="agent", config=cfg)
    (a,) = raised(events)
    assert a.channel == "agent"
    assert EscalationConfig().scores("customer") and not EscalationConfig().scores("agent")


def test_close_clears_active_alert() -> None:
    events, tr, policy = drive([(ANGRY, 20)])
    (a,) = raised(events)
    (c,) = policy.close(tr.state.t + 1)
    assert c.alert_id == a.alert_id and c.reason == "call ended" and c.reason_code == "call_ended"
    assert policy.close(tr.state.t + 2) == []


# ---------------------------------------------------------------- guidance
def test_guidance_cards_complete() -> None:
    book = GuidanceBook.load()
    assert set(book.languages()) >= {"zh", "en"}
    for lang in ("zh", "en"):
        for g in GRADES:
            card = book.card(g, lang)
            assert card.grade == g and card.language == lang and card.title and card.steps
            assert 2 <= len(card.phrases) <= 3
    assert "共情" in book.card("angry", "zh").title and "致歉" in book.card("angry", "zh").title
    assert "apologise" in book.card("angry", "en").title.lower()
    assert book.card("calm", "zh-CN").language == "zh"
    assert book.card("calm", "fr").language == book.default_language


def test_guidance_emitted_on_grade_change_only() -> None:
    book = GuidanceBook.load()
    tr = EmotionTracker(call_id="c1")
    em = GuidanceEmitter(book, channel="customer", call_id="c1", language="en")
    out: list[Guidance] = []
    tr_states = run(tr, [(CALM, 10), (ANGRY, 10), (CALM, 10)])
    for s in tr_states:
        g = em.update(s)
        if g is not None:
            out.append(g)
    grades = [g.card.grade for g in out]
    assert grades[0] == "calm" and "angry" in grades and grades[-1] == "calm"
    assert all(a != b for a, b in zip(grades, grades[1:]))  # one card per change, none repeated
    assert [g.t for g in out] == [s.t for s in tr_states if s.grade_changed]
    assert all(g.card.language == "en" and g.channel == "customer" for g in out)
    # a language becoming known re-issues the current card in that language
    g = em.update(tr.update(31.0, P(CALM)), language="zh")
    assert g is not None and g.card.language == "zh" and g.card.grade == "calm"
    assert em.update(tr.update(32.0, P(CALM)), language="zh") is None


def test_guidance_extension(tmp_path) -> None:
    extra = tmp_path / "g.toml"
    extra.write_text('[cards.en.angry]\ntitle = "Stay calm"\nsteps = ["Listen"]\nphrases = ["I hear you."]\n', encoding="utf-8")
    book = GuidanceBook.load(extra=extra)
    assert book.card("angry", "en").title == "Stay calm"
    assert book.card("calm", "en").title  # the rest kept
