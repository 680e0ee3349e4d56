"""Fusion, tracker and guidance logic driven by probability sequences (escalation: test_escalation.py)."""

from __future__ import annotations

import math
import random

import pytest

from calltone.emotion.fusion import FusionConfig, Fuser, fuse_probs
from calltone.emotion.guidance import GuidanceBook, GuidanceEmitter
from calltone.emotion.lexicon import default_lexicon
from calltone.emotion.tracker import EmotionTracker, TrackerConfig, TrackerState, emotion_index, lsq_slope, trend_per_minute
from calltone.events import GRADES, INDEX_BANDS, Cue, EmotionUpdate, Guidance, Probs

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
