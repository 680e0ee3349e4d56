"""Fusion, tracker, escalation and guidance logic driven by probability sequences."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from calltone.emotion.escalation import EscalationConfig, EscalationPolicy
from calltone.emotion.fusion import FusionConfig, Fuser, fuse_probs
from calltone.emotion.guidance import GuidanceBook, GuidanceEmitter
from calltone.emotion.lexicon import default_lexicon
from calltone.emotion.tracker import EmotionTracker, TrackerConfig, TrackerState, emotion_index, lsq_slope, trend_per_minute
from calltone.events import GRADES, INDEX_BANDS, Cue, EmotionUpdate, EscalationCleared, EscalationRaised, Guidance, Probs

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
def test_one_angry_utterance_flips_grade_and_a_calm_one_brings_it_back() -> None:
    """Each update is a whole utterance: one read angry turns the grade angry at once (no dwell), and the next calm
    one brings the smoothed p(angry) back under the exit threshold and the grade back to calm."""
    cfg = TrackerConfig()
    tr = EmotionTracker()
    states = run(tr, [(CALM, 10), (ANGRY, 1), (CALM, 10)])
    assert [s.t for s in states if s.grade == "angry"] == [10.0]
    angry, after = states[10], states[11]
    assert angry.grade_changed and angry.event is not None and angry.event.grade == "angry"
    assert after.probs.angry < cfg.angry_exit and after.probs.anxious + after.probs.angry < cfg.upset_exit
    assert after.grade == "calm" and after.grade_changed
    assert all(s.grade == "calm" for s in states[11:])
    # the very first utterance counts as well
    assert run(EmotionTracker(), [(ANGRY, 1)])[0].grade == "angry"


def test_dwell_mechanism_still_works_when_configured() -> None:
    """The shipped dwells are 0 (one utterance decides); a config with dwells holds a grade change back by them."""
    cfg = TrackerConfig(angry_dwell_s=2.0, anxious_dwell_s=2.0, exit_dwell_s=3.0)
    states = run(EmotionTracker(config=cfg), [(CALM, 10), (ANGRY, 1), (CALM, 10)])
    assert all(s.grade == "calm" for s in states)  # a 1 s outburst is shorter than the dwell
    states = run(EmotionTracker(config=cfg), [(CALM, 10), (ANGRY, 10), (CALM, 10)])
    first_angry = next(s.t for s in states if s.grade == "angry")
    assert first_angry == 12.0  # held from t = 10 for angry_dwell_s speech seconds
    assert all(s.grade == "angry" for s in states if 12.0 <= s.t < 23.0)
    assert next(s for s in states if s.t > first_angry and s.grade != "angry").t == 23.0  # below exit from 20, + 3 s
    # with the shipped config the same call turns angry at its first angry update and calm at its first calm one
    states = run(EmotionTracker(), [(CALM, 10), (ANGRY, 10), (CALM, 10)])
    assert [s.t for s in states if s.grade_changed] == [0.0, 10.0, 20.0]


def test_upset_from_first_second_is_not_hidden() -> None:
    tr = EmotionTracker()
    states = run(tr, [(ANGRY, 3)])
    assert states[0].index > 70  # no warm-up: the first update already reads high
    assert states[0].event is not None and states[0].grade == "angry"


def test_leaving_a_grade_needs_the_lower_threshold() -> None:
    """Hysteresis by threshold, not time: a level between a grade's exit and enter thresholds keeps the grade it
    has and never enters it."""
    cfg = TrackerConfig()
    tr = EmotionTracker()
    run(tr, [(ANGRY, 8)])
    assert tr.grade == "angry"
    mid = (0.40, 0.22, 0.38)  # p_angry between angry_exit and angry_enter
    assert cfg.angry_exit <= mid[2] < cfg.angry_enter
    assert all(x.grade == "angry" for x in run(tr, [(mid, 10)], t0=8.0))
    assert run(tr, [(CALM, 1)], t0=18.0)[-1].grade == "calm"
    assert all(x.grade != "angry" for x in run(EmotionTracker(), [(CALM, 5), (mid, 20)]))
    hover = (0.62, 0.30, 0.08)  # p_anxious + p_angry between upset_exit and upset_enter
    assert cfg.upset_exit <= hover[1] + hover[2] < cfg.upset_enter
    tr = EmotionTracker()
    run(tr, [(ANXIOUS, 5)])
    assert tr.grade == "anxious"
    assert all(x.grade == "anxious" for x in run(tr, [(hover, 10)], t0=5.0))
    assert all(x.grade == "calm" for x in run(EmotionTracker(), [(CALM, 5), (hover, 20)]))


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
    cfg = TrackerConfig()
    assert all(s.trend == 0.0 for s in states if s.t < cfg.trend_min_span_s)  # no trend before the window spans 10 s
    # and it falls on the way down
    down = run(tr, [(CALM, 12)], t0=31.0)
    assert down[-1].trend < 0
    assert lsq_slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2.0)


def test_trend_needs_span_points_and_significance() -> None:
    rise = [(0.0, 20.0), (5.0, 30.0), (10.0, 40.0)]
    assert trend_per_minute(rise, 10.0, 3, 2.0) == pytest.approx(120.0)  # 2 points/s, exactly on a line
    assert trend_per_minute(rise[:2], 10.0, 3, 2.0) == 0.0  # too few updates
    assert trend_per_minute([(0.0, 20.0), (4.0, 28.0), (8.0, 36.0)], 10.0, 3, 2.0) == 0.0  # spans too short
    zigzag = [(float(t), 50.0 + (6.0 if t % 2 else -6.0) + 0.1 * t) for t in range(0, 31, 3)]
    assert trend_per_minute(zigzag, 10.0, 3, 2.0) == 0.0  # a slope well inside its standard error is noise
    assert trend_per_minute(zigzag, 10.0, 3, 0.0) == pytest.approx(60.0 * lsq_slope(zigzag))  # z = 0: any slope


def test_index_is_held_in_its_grades_band() -> None:
    """One scale (INDEX_BANDS): 100 * (w * p_anxious + p_angry), clamped into the grade's band."""
    assert INDEX_BANDS == {"calm": (0.0, 39.0), "anxious": (40.0, 70.0), "angry": (71.0, 100.0)}
    raw38 = Probs(calm=0.34, anxious=0.56, angry=0.10)
    raw62 = Probs(calm=0.16, anxious=0.44, angry=0.40)
    assert 100 * (0.5 * raw38.anxious + raw38.angry) == pytest.approx(38.0)
    assert emotion_index(raw38, "anxious") == 40.0
    assert emotion_index(raw38, "calm") == pytest.approx(38.0)  # inside its band: the plain formula
    assert emotion_index(raw62, "calm") == 39.0
    assert emotion_index(raw62, "anxious") == pytest.approx(62.0)
    assert emotion_index(raw62, "angry") == 71.0
    assert emotion_index(Probs(calm=1.0, anxious=0.0, angry=0.0), "angry") == 71.0
    assert emotion_index(Probs(calm=0.0, anxious=0.0, angry=1.0), "angry") == 100.0
    assert emotion_index(raw38, "anxious", anxious_weight=1.0) == pytest.approx(66.0)
    # through the tracker: p_angry 0.40 enters angry, so its raw 60 reads 71; an anxious reading keeps its value
    assert EmotionTracker().update(0.0, P((0.2, 0.4, 0.4))).index == 71.0
    s = EmotionTracker().update(0.0, P((0.3, 0.5, 0.2)))
    assert s.grade == "anxious" and s.index == pytest.approx(100 * (0.5 * 0.5 + 0.2))


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
    """A long silence counts as max_gap_s: with a slow smoothing (an explicit config) the state carries over it
    unchanged; with the shipped tau_s the first utterance after it is read on its own."""
    slow = TrackerConfig(tau_s=5.0)
    tr, ref = EmotionTracker(config=slow), EmotionTracker(config=slow)
    run(tr, [(ANGRY, 10)])
    run(ref, [(ANGRY, 10)])
    s = tr.update(60.0, P(CALM))  # first words after 50 s of silence
    r = ref.update(9.0 + slow.max_gap_s, P(CALM))  # counts like a gap of max_gap_s
    assert s.probs.angry == pytest.approx(r.probs.angry)
    assert s.grade == "angry" and s.index >= INDEX_BANDS["angry"][0]
    assert s.trend == 0.0  # the 30 s window holds this update only
    tr = EmotionTracker()
    run(tr, [(ANGRY, 10)])
    s = tr.update(60.0, P(CALM))
    assert s.grade == "calm" and s.trend == 0.0 and s.index <= INDEX_BANDS["calm"][1]


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


def utterances(
    said: list[tuple[float, tuple[float, float, float]]], config: EscalationConfig = EscalationConfig(),
) -> tuple[list[EscalationRaised | EscalationCleared], list[TrackerState]]:
    """One tracker update per whole utterance ``(t, probs)`` (emotion.score_speech_so_far off), then the policy."""
    tracker = EmotionTracker(call_id="c1")
    policy = EscalationPolicy(call_id="c1", config=config)
    events, states = [], []
    for t, probs in said:
        states.append(tracker.update(t, P(probs)))
        events += policy.update(states[-1])
    return events, states


HOT = (0.03, 0.07, 0.90)  # an utterance that sounds angry with confidence (p >= angry_confirmed.min_p_angry)
CROSS = (0.25, 0.25, 0.50)  # angry, but not confidently so


def test_config_files_match_code_defaults(tmp_path) -> None:
    assert EscalationConfig.load() == EscalationConfig()
    assert TrackerConfig.load() == TrackerConfig()
    assert FusionConfig.load() == FusionConfig()
    # the documented defaults (docs/emotion.md), tuned on held-out speakers (bench/heldout.py)
    tc = TrackerConfig()
    assert (tc.tau_s, tc.angry_enter, tc.upset_enter, tc.angry_exit, tc.upset_exit) == (0.3, 0.40, 0.40, 0.35, 0.35)
    assert (tc.angry_dwell_s, tc.anxious_dwell_s, tc.exit_dwell_s) == (0.0, 0.0, 0.0)
    assert (tc.trend_window_s, tc.trend_min_span_s, tc.trend_min_points, tc.trend_z) == (30.0, 10.0, 3, 2.0)
    ec = EscalationConfig()
    assert ec.angry_confirmed.model_dump() == {"enabled": True, "min_p_angry": 0.8, "count": 3, "window_s": 30.0}
    assert not ec.angry_sustained.enabled and not ec.index_rise.enabled and ec.phrase.enabled
    user = tmp_path / "esc.toml"
    user.write_text("cooldown_s = 90.0\n[angry_sustained]\nenabled = true\nmin_s = 6.0\n", encoding="utf-8")
    cfg = EscalationConfig.load(user)
    assert cfg.cooldown_s == 90.0 and cfg.angry_sustained.enabled and cfg.angry_sustained.min_s == 6.0
    assert cfg.angry_confirmed == ec.angry_confirmed and cfg.clear.calm_s == 20.0  # other keys keep their defaults
    assert not cfg.index_rise.enabled
    tweak = tmp_path / "tweak.toml"
    tweak.write_text("[index_rise]\nhold_s = 2.0\n", encoding="utf-8")
    cfg = EscalationConfig.load(tweak)
    assert cfg.index_rise.hold_s == 2.0 and not cfg.index_rise.enabled  # tuning a rule does not switch it on
    bad = tmp_path / "bad.toml"
    bad.write_text("[angry_sustaned]\nmin_s = 6.0\n", encoding="utf-8")
    with pytest.raises(ValueError):
        EscalationConfig.load(bad)  # typos are errors, not silently ignored


def test_steady_calls_raise_nothing() -> None:
    for probs in (CALM, ANXIOUS):
        events, _, _ = drive([(probs, 180)])
        assert events == []
    events, states = utterances([(4.0 * k, CALM if k % 3 else ANXIOUS) for k in range(45)])
    assert events == [] and "angry" not in {s.grade for s in states}


def test_angry_confirmed_on_one_confident_utterance() -> None:
    events, states = utterances([(0.0, CALM), (4.0, CALM), (8.0, HOT), (12.0, CALM)])
    (a,) = raised(events)
    assert a.t == 8.0 and a.reason_code == "angry_confirmed" and a.evidence["rule"] == "angry_confirmed"
    assert states[2].probs.angry >= EscalationConfig().angry_confirmed.min_p_angry
    assert a.reason_figures == {"p_angry": round(states[2].probs.angry, 2)}  # the figure the rule fired on, no count
    assert a.reason == f"caller angry (p {round(100 * states[2].probs.angry)} %)"
    assert a.evidence["grade"] == "angry" and a.evidence["grades"][0]["grade"] == "calm"


def test_angry_confirmed_on_three_angry_utterances_within_the_window() -> None:
    said = [(0.0, CALM), (4.0, CROSS), (9.0, ANXIOUS), (14.0, CROSS), (19.0, ANXIOUS), (26.0, CROSS), (30.0, CALM)]
    events, states = utterances(said)
    assert [s.grade for s in states] == ["calm", "angry", "anxious", "angry", "anxious", "angry", "calm"]
    assert all(s.probs.angry < EscalationConfig().angry_confirmed.min_p_angry for s in states)  # none confident
    (a,) = raised(events)
    assert a.t == 26.0 and a.reason_code == "angry_confirmed"
    assert a.reason_figures["angry_updates"] == 3 and a.reason_figures["window_s"] == 22.0
    assert a.reason == "caller angry 3 times in 22 s"
    assert [g["grade"] for g in a.evidence["grades"]] == ["calm", "angry", "anxious", "angry", "anxious", "angry"]


def test_angry_confirmed_not_on_two_nor_on_three_spread_out() -> None:
    events, _ = utterances([(0.0, CALM), (4.0, CROSS), (9.0, ANXIOUS), (14.0, CROSS), (19.0, ANXIOUS), (26.0, CALM)])
    assert events == []
    cfg = EscalationConfig().angry_confirmed
    spread = [(0.0, CROSS), (8.0, CALM), (16.0, CROSS), (24.0, CALM), (cfg.window_s + 1.0, CROSS), (40.0, CALM)]
    events, states = utterances(spread)
    assert events == [] and sum(s.grade == "angry" for s in states) == 3  # the first fell out of the 30 s window


def test_angry_confirmed_counts_tracker_updates_not_observations() -> None:
    """A short utterance whose own voice score does not count reaches the policy with the tracker's latest state
    again (EmotionChannel._observe_said): its words are evidence, but it is not another angry update."""
    tracker, policy = EmotionTracker(call_id="c1"), EscalationPolicy(call_id="c1")
    events = policy.update(tracker.update(0.0, P(CALM)))
    angry = tracker.update(4.0, P(CROSS))
    events += policy.update(angry)
    for text in ("no", "what"):  # two short answers right after it, no voice score of their own
        events += policy.update(replace(angry, previous_grade=angry.grade, cues=(), event=None), (), text)
    assert events == []
    events += policy.update(tracker.update(9.0, P(CROSS)))
    assert events == []  # two angry updates so far
    events += policy.update(tracker.update(14.0, P(CROSS)))
    (a,) = raised(events)
    assert a.reason_figures["angry_updates"] == 3 and [w["text"] for w in a.evidence["words"]] == ["no", "what"]


def test_angry_confirmed_respects_the_cooldown() -> None:
    cfg = EscalationConfig()
    said = [(0.0, CALM), (10.0, HOT)] + [(t, CALM) for t in range(14, 40, 4)] + [(42.0, HOT)]
    said += [(float(t), CALM) for t in range(46, 70, 4)] + [(74.0, HOT), (78.0, HOT)]
    events, _ = utterances(said, cfg)
    (c,) = cleared(events[:2])
    assert [e.t for e in raised(events)] == [10.0, 74.0]  # 42 s is inside cooldown_s of the first raise
    assert c.t == 34.0 and c.reason_code == "calm"  # calm since 14 s, cleared after clear.calm_s
    assert 74.0 - 10.0 >= cfg.cooldown_s and 42.0 - 10.0 < cfg.cooldown_s
    first, second = raised(events)
    assert first.alert_id != second.alert_id


def test_sustained_anger_raises_exactly_one_alert_with_reason_and_evidence() -> None:
    events, _, policy = drive([(CALM, 20), (ANGRY, 60)], texts={21.0: "This is ridiculous, I've been waiting for a week"})
    alerts = raised(events)
    assert len(alerts) == 1
    a = alerts[0]
    assert 20.0 < a.t <= 22.0  # the angry words push p(angry) past min_p_angry on the second angry update
    assert a.channel == "customer" and a.call_id == "c1" and a.alert_id == policy.active_alert
    assert a.reason_code == "angry_confirmed" and a.reason.startswith("caller angry (p ")
    ev = a.evidence
    assert ev["rule"] == "angry_confirmed" and ev["grade"] == "angry"
    assert ev["grades"][-1]["grade"] == ev["grade"] and ev["grades"][0]["grade"] == "calm"
    assert 2 <= len(ev["index_history"]) <= EscalationConfig().evidence.max_points
    assert ev["index_history"][-1][1] == pytest.approx(ev["index"], abs=0.1)
    assert ev["cues"] and ev["cues"][0]["name"] in ("loudness", "phrase.anger")
    assert any(w["text"].startswith("This is ridiculous") for w in ev["words"])
    assert any(p["category"] == "anger" for p in ev["phrases"])
    assert cleared(events) == []


def test_angry_sustained_rule_alone() -> None:
    cfg = EscalationConfig(angry_confirmed={"enabled": False}, angry_sustained={"enabled": True}, phrase={"enabled": False})
    events, tr, _ = drive([(CALM, 20), (ANGRY, 30)], config=cfg)
    (a,) = raised(events)
    assert a.evidence["rule"] == "angry_sustained" and "angry for 3 s" in a.reason
    assert a.t - a.evidence["grade_since"] == pytest.approx(cfg.angry_sustained.min_s)
    # off by default: the shipped config raises on the same call through angry_confirmed instead
    events, _, _ = drive([(CALM, 20), (ANGRY, 30)], config=EscalationConfig(phrase={"enabled": False}))
    assert [a.reason_code for a in raised(events)] == ["angry_confirmed"]


def test_index_rise_rule_alone() -> None:
    cfg = EscalationConfig(angry_confirmed={"enabled": False}, index_rise={"enabled": True}, phrase={"enabled": False})
    events, _, _ = drive([(CALM, 20), (ANGRY, 30)], config=cfg)
    (a,) = raised(events)
    assert a.evidence["rule"] == "index_rise" and "rose" in a.reason
    assert a.evidence["index"] >= 65 and a.evidence["rules"][0]["rise"] >= 25
    # a slow drift inside the anxious band (the index moves 3 points a minute) does not count as a rise
    slow = [((0.60 - 0.02 * i, 0.30 + 0.01 * i, 0.10 + 0.01 * i), 20) for i in range(25)]
    events, tr, _ = drive(slow, config=cfg)
    assert raised(events) == [] and tr.state.grade == "anxious" and tr.state.index > 60
    # hold_s: a 2 s outburst passes silently where the index must stay high for 3 s
    held = EscalationConfig(angry_confirmed={"enabled": False}, index_rise={"enabled": True, "hold_s": 3.0})
    events, _, _ = drive([(CALM, 20), (ANGRY, 2), (CALM, 30), (ANGRY, 2), (CALM, 20)], config=held)
    assert events == []
    events, _, _ = drive([(CALM, 20), (ANGRY, 5), (CALM, 20)], config=held)
    assert [a.t for a in raised(events)] == [23.0]


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
    cfg = EscalationConfig(angry_confirmed={"enabled": False})
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
