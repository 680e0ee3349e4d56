"""Property-based tests (hypothesis) of the tracker's one scale and its trend: whatever probabilities arrive, every
state's index lies in its grade's band (INDEX_BANDS), also rounded as the pages show it; noise around a constant reads
as no trend (in at least 95 % of seeded random calls), a steady rise reads as its slope in points per minute."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calltone.emotion.tracker import EmotionTracker, TrackerConfig, trend_per_minute
from calltone.events import INDEX_BANDS, Probs

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOISE_CALLS = 3000  # seeded random calls through the tracker
NOISE_WINDOWS = 20000  # seeded random windows straight into trend_per_minute

PROB = st.floats(0.0, 1.0, allow_nan=False)
UPDATES = st.lists(st.tuples(st.floats(0.0, 8.0, allow_nan=False), PROB, PROB, PROB), min_size=1, max_size=60)


@st.composite
def tracker_configs(draw: st.DrawFn) -> TrackerConfig:
    """Any valid tracker config: thresholds with exit <= enter, any dwell, smoothing and index weight."""
    a_exit, a_enter = sorted(draw(st.tuples(PROB, PROB)))
    u_exit, u_enter = sorted(draw(st.tuples(PROB, PROB)))
    dwell = st.sampled_from([0.0, 0.5, 2.0])
    return TrackerConfig(angry_enter=a_enter, angry_exit=a_exit, upset_enter=u_enter, upset_exit=u_exit,
                         tau_s=draw(st.sampled_from([0.05, 0.3, 2.0, 10.0])), angry_dwell_s=draw(dwell),
                         anxious_dwell_s=draw(dwell), exit_dwell_s=draw(dwell),
                         index_anxious_weight=draw(PROB))


def in_band(x: float, grade: str) -> bool:
    lo, hi = INDEX_BANDS[grade]
    return lo <= x <= hi


@PROPERTY
@given(UPDATES, st.none() | tracker_configs())
def test_every_index_lies_in_its_grades_band(updates: list[tuple[float, float, float, float]],
                                            config: TrackerConfig | None) -> None:
    """The index, the grade and the pages' colours say the same thing: for every update, under any config."""
    tracker = EmotionTracker(config=config or TrackerConfig())
    t = 0.0
    for dt, calm, anxious, angry in updates:
        t += dt
        s = tracker.update(t, (calm, anxious, angry))
        assert in_band(s.index, s.grade), (s.index, s.grade)
        assert in_band(round(s.index), s.grade)  # as the pages show it, whole points
        if s.event is not None:
            assert s.event.grade == s.grade and in_band(s.event.index, s.event.grade)
            assert in_band(round(s.event.index), s.event.grade)


def noise_call(rng: random.Random, level: float = 0.2, sd: float = 0.05, length_s: float = 90.0) -> float:
    """The trend at the end of a calm call whose p(angry) is ``level`` plus noise, one update per utterance
    (2-6 s apart); the index is 100 * p(angry), inside the calm band."""
    tracker = EmotionTracker()
    t, trend = 0.0, 0.0
    while t <= length_s:
        p = min(max(level + rng.gauss(0.0, sd), 0.0), 0.38)
        s = tracker.update(t, Probs(calm=1.0 - p, anxious=0.0, angry=p))
        assert s.grade == "calm"
        t, trend = t + rng.uniform(2.0, 6.0), s.trend
    return trend


def test_noise_around_a_constant_is_no_trend() -> None:
    cfg = TrackerConfig()
    rng = random.Random(20261201)
    quiet = sum(noise_call(rng) == 0.0 for _ in range(NOISE_CALLS))
    assert quiet >= 0.95 * NOISE_CALLS, f"{quiet} of {NOISE_CALLS} noise calls read no trend"
    # the rule itself, for any number of points in the window (3 to 31): noise of 5 points around 50
    rng = random.Random(7)
    quiet = 0
    for _ in range(NOISE_WINDOWS):
        n = rng.randint(cfg.trend_min_points, 31)
        times = sorted(rng.uniform(0.0, cfg.trend_window_s) for _ in range(n - 2)) + [0.0, cfg.trend_window_s]
        points = [(x, 50.0 + rng.gauss(0.0, 5.0)) for x in sorted(times)]
        quiet += trend_per_minute(points, cfg.trend_min_span_s, cfg.trend_min_points, cfg.trend_z) == 0.0
    assert quiet >= 0.95 * NOISE_WINDOWS, f"{quiet} of {NOISE_WINDOWS} noise windows read no trend"


@PROPERTY
@given(st.sampled_from(["calm", "angry"]), st.floats(0.5, 2.5), st.floats(0.0, 0.03))
def test_a_steady_rise_of_2_points_a_second_reads_120_a_minute(grade: str, dt: float, start: float) -> None:
    """p(angry) rising 0.02 a second (the index 2 points a second) inside one band reads about +120 points/min."""
    cfg = TrackerConfig()
    base = 0.02 + start if grade == "calm" else INDEX_BANDS["angry"][0] / 100 + start
    tracker, t, s = EmotionTracker(), 0.0, None
    while base + 0.02 * t <= INDEX_BANDS[grade][1] / 100 - 0.005:
        p = base + 0.02 * t
        s = tracker.update(t, Probs(calm=1.0 - p, anxious=0.0, angry=p))
        assert s.grade == grade
        t += dt
    assert s is not None and s.t >= cfg.trend_min_span_s
    assert s.trend == pytest.approx(120.0, rel=0.05)
