"""Tune the escalation defaults on composed calls (../shared/tools/make_calls.py).

Runs each call through the real CallPipeline once, records what reaches each
customer EmotionChannel (voice scores and text cues, in order), then replays the
tracker + escalation policy under candidate settings, counting false alerts on
steady/recover calls and the delay from anger onset to the alert on escalate/flare
calls.  Prints one line per candidate.

    python bench/tune_escalation.py --calls 24
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def record(calls_dir: Path, runtime) -> list[tuple[dict, list]]:
    from calltone.emotion import channel as ch
    from calltone.pipeline import PipelineOptions, run_recording
    from calltone.speech.audio import load_recording

    out = []
    log: list = []
    orig_apply, orig_final = ch.EmotionChannel._apply, ch.EmotionChannel.on_final

    async def apply(self, future, previous):
        score = await future
        if previous is not None:
            await previous
        if score is not None:
            log.append(("voice", score.t, score.probs, score.cues))
        async def done():
            return score
        await orig_apply(self, asyncio.ensure_future(done()), None)

    def on_final(self, final):
        log.append(("text", final.end, final))
        orig_final(self, final)

    ch.EmotionChannel._apply, ch.EmotionChannel.on_final = apply, on_final
    try:
        for wav in sorted(calls_dir.glob("*.wav")):
            truth = json.loads(wav.with_suffix(".json").read_text())
            log = []
            rec = load_recording(wav)
            asyncio.run(run_recording(truth["call"], rec.channels, runtime, PipelineOptions(language="auto")))
            out.append((truth, list(log)))
    finally:
        ch.EmotionChannel._apply, ch.EmotionChannel.on_final = orig_apply, orig_final
    return out


def replay(truth: dict, log: list, tracking: dict, escalation: dict, models) -> list[float]:
    from calltone.emotion.escalation import EscalationConfig, EscalationPolicy
    from calltone.emotion.fusion import Fuser
    from calltone.emotion.lexicon import RepeatDetector
    from calltone.emotion.tracker import EmotionTracker, TrackerConfig

    tcfg = TrackerConfig(**{**models.tracker.model_dump(), **tracking})
    ecfg = EscalationConfig.model_validate(_merge(models.escalation.model_dump(), escalation))
    fuser, tracker = Fuser(models.fusion), EmotionTracker(channel="customer", call_id="x", config=tcfg)
    policy, repeat = EscalationPolicy(channel="customer", call_id="x", config=ecfg), RepeatDetector.for_lexicon(models.lexicon)
    alerts, phrases, text = [], [], None
    for item in log:
        if item[0] == "text":
            final = item[2]
            m = models.lexicon.match(final.text)
            r = repeat.add(final.end, final.text)
            m = [x.at(final.end) for x in m + ([r] if r else [])]
            fuser.add_text(final.end, m)
            phrases, text = phrases + m, final.text
            continue
        _, t, probs, cues = item
        fused = fuser.fuse(t, probs, cues)
        state = tracker.update(t, fused.probs, fused.cues)
        for ev in policy.update(state, phrases, text):
            if ev.type == "escalation.raised":
                alerts.append(ev.t)
        phrases, text = [], None
    return alerts


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


def score(recorded, tracking, escalation, models) -> dict:
    false_alerts, recover_alerts, delays, missed, early = 0, 0, [], 0, 0
    for truth, log in recorded:
        alerts = replay(truth, log, tracking, escalation, models)
        if truth["escalation_expected"]:
            onset = truth["escalation_onset_s"]
            after = [a for a in alerts if a >= onset]
            early += sum(1 for a in alerts if a < onset)
            if after and after[0] - onset <= 10.0:
                delays.append(after[0] - onset)
            else:
                missed += 1
        elif truth["kind"] == "steady":
            false_alerts += len(alerts)
        else:
            recover_alerts += len(alerts)  # anxiety without anger: an alert is not required, nor forbidden
    return dict(false_alerts=false_alerts, recover_alerts=recover_alerts, early=early, missed=missed, caught=len(delays),
                mean_delay_s=round(sum(delays) / len(delays), 1) if delays else None,
                max_delay_s=round(max(delays), 1) if delays else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    rt = Runtime.create(Settings())
    recorded = []
    import pickle
    cache = Path(tempfile.gettempdir()) / f"calltone-tune-{a.calls}-{a.seed}.pkl"
    if cache.exists():
        recorded = pickle.loads(cache.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        for tel, sub in (() if recorded else ((False, "clean"), (True, "tel"))):
            d = Path(tmp) / sub
            args = [sys.executable, str(SHARED / "tools" / "make_calls.py"), str(SHARED / "data" / "emotion-speech"), str(d),
                    "--calls", str(a.calls // 2), "--seed", str(a.seed)] + (["--telephony"] if tel else [])
            subprocess.run(args, check=True, capture_output=True)
            recorded += record(d, rt)
        cache.write_bytes(pickle.dumps(recorded))
    grid = {
        "angry_dwell_s": [1.0], "tau_s": [1.5, 2.5], "max_gap_s": [1.5, 3.0],
        "sustained": [2.0, 3.0, 4.0], "rise_points": [20.0, 25.0], "rise_hold": [1.0, 2.0],
    }
    for vals in itertools.product(*grid.values()):
        g = dict(zip(grid, vals))
        tracking = {"angry_dwell_s": g["angry_dwell_s"], "tau_s": g["tau_s"], "max_gap_s": g["max_gap_s"]}
        escalation = {"angry_sustained": {"min_s": g["sustained"]}, "index_rise": {"points": g["rise_points"], "hold_s": g["rise_hold"]}}
        print(json.dumps({**g, **score(recorded, tracking, escalation, rt.emotion)}), flush=True)
    rt.close()


if __name__ == "__main__":
    main()
