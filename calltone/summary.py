"""Call summaries and timelines computed from a call's stored events (dicts)."""

from __future__ import annotations

from collections import defaultdict

from calltone.events import GRADES

GRADE_ORDER = {g: i for i, g in enumerate(GRADES)}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _total(intervals: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def compute_summary(events: list[dict], duration_s: float, base: dict | None = None) -> dict:
    """Talk time/ratio, silence, overtalk, grade shares, peak grade and escalations.

    Talk time comes from final transcript segments (start..end per channel); grade
    shares weight each ``emotion.update`` by the time until that channel's next one.
    """
    summary = dict(base or {})
    duration = max(duration_s, max((e.get("end", e.get("t", 0.0)) or 0.0 for e in events), default=0.0))
    talk: dict[str, list[tuple[float, float]]] = defaultdict(list)
    updates: dict[str, list[dict]] = defaultdict(list)
    escalations = 0
    finals = 0
    for e in events:
        typ = e.get("type")
        if typ == "transcript.final":
            finals += 1
            talk[e["channel"]].append((float(e["start"]), float(e["end"])))
        elif typ == "emotion.update":
            updates[e["channel"]].append(e)
        elif typ == "escalation.raised":
            escalations += 1
    conv = conversation_metrics(talk, duration)
    talk_s = conv["talk_s"]
    total_talk = sum(talk_s.values())
    summary.update({
        "duration_s": round(duration, 3),
        "transcript_talk_s": talk_s,
        "talk_ratio": {ch: round(v / total_talk, 3) for ch, v in talk_s.items()} if total_talk > 0 else {},
        "silence_s": conv["silence_s"],
        "overtalk_s": conv["overtalk_s"],
        "final_segments": finals,
        "escalations": escalations,
    })
    shares: dict[str, dict[str, float]] = {}
    peak = None
    for ch, ups in updates.items():
        ups = sorted(ups, key=lambda u: u.get("t", 0.0))
        weights: dict[str, float] = defaultdict(float)
        for i, u in enumerate(ups):
            nxt = ups[i + 1]["t"] if i + 1 < len(ups) else max(duration, u["t"])
            weights[u["grade"]] += max(nxt - u["t"], 0.0) or 1e-3
            cand = (GRADE_ORDER.get(u["grade"], 0), float(u.get("index", 0.0)))
            if peak is None or cand > peak[0]:
                peak = (cand, {"channel": ch, "grade": u["grade"], "index": u.get("index"), "t": u["t"]})
        tot = sum(weights.values())
        shares[ch] = {g: round(weights.get(g, 0.0) / tot, 3) for g in GRADE_ORDER} if tot else {}
    summary["grade_shares"] = shares
    summary["peak"] = peak[1] if peak else None
    summary["peak_grade"] = peak[1]["grade"] if peak else None
    return summary


def timeline(events: list[dict]) -> dict:
    """Transcript, emotion timeline and escalation events of a call, for GET /v1/calls/{id}."""
    transcript = [{"seq": e.get("seq"), "channel": e["channel"], "start": e["start"], "end": e["end"], "text": e["text"],
                   "language": e.get("language")} for e in events if e.get("type") == "transcript.final"]
    emotion = [{"seq": e.get("seq"), "t": e["t"], "channel": e["channel"], "grade": e["grade"], "index": e.get("index"),
                "probs": e.get("probs")} for e in events if e.get("type") == "emotion.update"]
    return {"transcript": transcript, "emotion": emotion}


def conversation_metrics(speech: dict[str, list[tuple[float, float]]], duration_s: float,
                         interruption_min_s: float = 0.5) -> dict:
    """Who talked when, from each speaker's speech intervals (seconds).

    * ``silence_s`` / ``longest_silence_s``: nobody speaking (leading and trailing silence included);
    * ``overtalk_s``: both speaking at once;
    * ``interruptions`` {role: n}: times that role started speaking while the other had
      been speaking for at least ``interruption_min_s`` and went on for at least as long after.
    """
    merged = {ch: _union(iv) for ch, iv in speech.items()}
    anyone = _union([iv for ivs in merged.values() for iv in ivs])
    gaps = [b - a for a, b in zip([0.0] + [e for _, e in anyone], [s for s, _ in anyone] + [duration_s])]
    roles = list(merged)
    overtalk = _intersection(merged[roles[0]], merged[roles[1]]) if len(roles) == 2 else 0.0
    interruptions = {r: 0 for r in roles}
    if len(roles) == 2:
        for who, other in ((roles[0], roles[1]), (roles[1], roles[0])):
            for s, _ in merged[who]:
                if any(os_ + interruption_min_s <= s <= oe - interruption_min_s for os_, oe in merged[other]):
                    interruptions[who] += 1
    return {
        "talk_s": {ch: round(_total(iv), 3) for ch, iv in merged.items()},
        "silence_s": round(max(0.0, duration_s - _total(anyone)), 3),
        "longest_silence_s": round(max([g for g in gaps if g > 0], default=0.0), 3),
        "overtalk_s": round(overtalk, 3),
        "interruptions": interruptions,
    }
