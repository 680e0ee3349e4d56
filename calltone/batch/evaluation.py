"""Call-level accuracy: a scored call's events against its labels (``calltone eval --calls``).

Figures, for the customer only:

* **segment grade**: each labelled customer segment takes the grade calltone showed for that
  caller ``GRADE_LAG_S`` after the segment ended (the latest ``emotion.update`` at or before then:
  the whole utterance has been heard and scored).  Segment UAR is the mean of the per-grade recalls.
* **escalation**: a call with an ``escalation_onset_s`` is *alerted* when an ``escalation.raised``
  comes at or after the onset and at most ``ALERT_WITHIN_S`` later; an alert before the onset is
  *early* (a wrong alert, not a hit).  The delay is alert time minus onset, in seconds.
* **happy as angry**: the share of segments labelled happiness or surprise (graded calm) that calltone
  showed as angry: cheerful callers must not read as angry ones.
* **false alerts**: alerts on steady calls (no anxious or angry segment, no onset), and alerts on
  calls with anxiety but no anger and no onset (``recover`` calls).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import soundfile as sf

from calltone.batch.engine import EnginePlan, open_engine
from calltone.batch.scorer import ScoreOptions, Scored
from calltone.events import GRADES

if TYPE_CHECKING:
    from calltone.batch.labels import LabelledCall, LabelledRecording
    from calltone.events import Event
    from calltone.settings import Settings

GRADE_LAG_S = 1.0
ALERT_WITHIN_S = 10.0
HAPPY = ("happiness", "surprise")


@dataclass
class CallOutcome:
    """One labelled call after scoring."""

    name: str
    language: str
    audio: str  # "8 kHz" or "16 kHz" (what the recording was, before calltone resampled it)
    kind: str
    truth: list[str]  # customer segments' labelled grades
    predicted: list[str]  # the grade calltone showed for each of them
    emotions: list[str | None]  # the segments' finer labels, when given
    onset_s: float | None
    alerts_s: list[float]
    steady: bool

    @property
    def alerted(self) -> bool:
        return self.onset_s is not None and any(self.onset_s <= a <= self.onset_s + ALERT_WITHIN_S for a in self.alerts_s)

    @property
    def early(self) -> bool:
        return self.onset_s is not None and any(a < self.onset_s for a in self.alerts_s)

    @property
    def delay_s(self) -> float | None:
        after = [a - self.onset_s for a in self.alerts_s if self.onset_s is not None and a >= self.onset_s]
        return round(min(after), 2) if after else None


def outcome(name: str, labels: LabelledCall, events: list[Event], sample_rate: int) -> CallOutcome:
    updates = sorted((e for e in events if e.type == "emotion.update" and e.channel == "customer"), key=lambda e: e.t)
    times = [u.t for u in updates]

    def shown(t: float) -> str:
        i = bisect_right(times, t)
        return updates[i - 1].grade if i else GRADES[0]

    segs = labels.customer_segments
    alerts = sorted(e.t for e in events if e.type == "escalation.raised" and e.channel == "customer")
    kind = labels.kind or ("steady" if labels.steady else "escalate" if labels.escalation_onset_s is not None else "other")
    return CallOutcome(name=name, language=labels.language or "?", audio=f"{sample_rate // 1000} kHz", kind=kind,
                       truth=[s.grade for s in segs], predicted=[shown(s.end + GRADE_LAG_S) for s in segs],
                       emotions=[s.emotion for s in segs],
                       onset_s=labels.escalation_onset_s, alerts_s=alerts, steady=labels.steady)


def score_labelled(recordings: list[LabelledRecording], settings: Settings,
                   workers: int | None = None) -> Iterator[tuple[LabelledRecording, Scored, CallOutcome | None]]:
    """Score each labelled recording with the batch pipeline (customer channel from its labels) and
    compare: yields (recording, scored, outcome); outcome is None when the file could not be scored."""
    by_file = {r.audio: r for r in recordings}
    pool = open_engine(EnginePlan(workers=workers), settings, len(recordings))
    try:
        for channel in (0, 1):  # one pass per customer channel
            files = [f for f, r in by_file.items() if r.labels.customer_channel == channel]
            options = ScoreOptions(customer_channel=channel, language=settings.asr.language)
            for done in pool.score(files, options) if files else ():
                rec = by_file[done.path]
                result = None
                if done.report is not None:
                    result = outcome(rec.name, rec.labels, done.report.events, sf.info(str(done.path)).samplerate)
                yield rec, done, result
    finally:
        pool.close()


@dataclass
class Figures:
    calls: int
    segments: int
    uar: float | None
    recall: dict[str, float | None]
    confusion: list[list[int]]  # rows: labelled grade, columns: calltone's grade (GRADES order)
    escalation_calls: int
    alerted_within: int
    early_alert_calls: int
    delays_s: list[float]
    steady_calls: int
    steady_alerts: int
    recover_calls: int
    recover_alerts: int
    happy_segments: int
    happy_as_angry: float | None
    by: dict[str, dict[str, "Figures"]] = field(default_factory=dict)

    @property
    def escalation_recall(self) -> float | None:
        return self.alerted_within / self.escalation_calls if self.escalation_calls else None

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "by"}
        d["escalation_recall"] = self.escalation_recall
        d["delay_s"] = _quantiles(self.delays_s)
        d["by"] = {axis: {k: f.as_dict() for k, f in groups.items()} for axis, groups in self.by.items()}
        return d


def _quantiles(x: list[float]) -> dict[str, float] | None:
    if not x:
        return None
    a = np.asarray(x)
    return {"min": float(a.min()), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)), "max": float(a.max())}


def figures(outcomes: list[CallOutcome], breakdown: bool = True) -> Figures:
    idx = {g: i for i, g in enumerate(GRADES)}
    m = np.zeros((len(GRADES), len(GRADES)), dtype=int)
    for o in outcomes:
        for t, p in zip(o.truth, o.predicted):
            m[idx[t], idx[p]] += 1
    rows = m.sum(1)
    recall = {g: (float(m[i, i] / rows[i]) if rows[i] else None) for g, i in idx.items()}
    present = [r for r in recall.values() if r is not None]
    esc = [o for o in outcomes if o.onset_s is not None]
    steady = [o for o in outcomes if o.steady]
    recover = [o for o in outcomes if o.onset_s is None and not o.steady and "angry" not in o.truth]
    happy = [p for o in outcomes for p, e in zip(o.predicted, o.emotions) if e in HAPPY]
    f = Figures(calls=len(outcomes), segments=int(m.sum()), uar=float(np.mean(present)) if present else None,
                recall=recall, confusion=m.tolist(), escalation_calls=len(esc),
                alerted_within=sum(o.alerted for o in esc), early_alert_calls=sum(o.early for o in esc),
                delays_s=sorted(o.delay_s for o in esc if o.delay_s is not None),
                steady_calls=len(steady), steady_alerts=sum(len(o.alerts_s) for o in steady),
                recover_calls=len(recover), recover_alerts=sum(len(o.alerts_s) for o in recover),
                happy_segments=len(happy), happy_as_angry=(sum(p == "angry" for p in happy) / len(happy)) if happy else None)
    if breakdown:
        for axis in ("language", "audio", "kind"):
            keys = sorted({getattr(o, axis) for o in outcomes})
            f.by[axis] = {k: figures([o for o in outcomes if getattr(o, axis) == k], breakdown=False) for k in keys}
    return f


def format_figures(f: Figures) -> str:
    """The figures as a plain-text table (what ``calltone eval --calls`` prints)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    def line(name: str, g: Figures) -> str:
        d = _quantiles(g.delays_s)
        return (f"{name:14s} {g.calls:5d} {g.segments:6d}  {pct(g.uar):>5s}  "
                + " ".join(f"{pct(g.recall[k]):>5s}" for k in GRADES)
                + f"  {g.alerted_within:3d}/{g.escalation_calls:<3d} {g.early_alert_calls:5d}"
                + f"  {'-' if d is None else format(d['median'], '.1f'):>6s}"
                + f"  {g.steady_alerts:3d}/{g.steady_calls:<3d}  {g.recover_alerts:3d}/{g.recover_calls:<3d}"
                + f"  {pct(g.happy_as_angry):>5s}")

    head = (f"{'':14s} {'calls':>5s} {'segs':>6s}  {'UAR':>5s}  " + " ".join(f"{k[:5]:>5s}" for k in GRADES)
            + f"  {'alerted':>7s} {'early':>5s}  {'delay':>6s}  {'steady':>7s}  {'recover':>7s}  {'happy':>5s}")
    out = ["customer segments: UAR and recall per grade; escalation calls alerted within "
           f"{ALERT_WITHIN_S:.0f} s of onset, early alerts, median delay (s); alerts on steady and recover calls; "
           "share of happy/surprised segments shown angry", head,
           line("all", f)]
    for axis, groups in f.by.items():
        out += [line(f"{axis}={k}", g) for k, g in groups.items()]
    out.append("confusion (rows labelled, columns calltone): " + "  ".join(GRADES))
    out += [f"  {g:8s}" + "".join(f"{x:6d}" for x in row) for g, row in zip(GRADES, f.confusion)]
    return "\n".join(out)
