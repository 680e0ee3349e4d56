"""The call summary's cost: ``calltone.summary.summarize`` on synthetic calls of 15 minutes to 2 hours.

    python bench/summary.py                 # 0.25, 1 and 2 hour calls, 5 runs each
    python bench/summary.py --hours 4 --runs 3

A live call computes its summary on the event loop when it ends (``server/calls.py``), so this is how long that
one step holds the loop.  Each call alternates the two speakers (1-6 s turns, -0.5..2 s gaps: some overlap),
with a final per turn (2.5 words a second) and one customer emotion update per second of the customer's speech,
as the tracker sends at most; the VAD's intervals are the turns.  Prints events, speech segments and the median
and fastest milliseconds per summary over the runs (one thread, wall time; the fastest is the least disturbed
by other work on the machine).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from calltone.summary import summarize


def synthetic_call(hours: float, seed: int = 1) -> tuple[list[dict], dict[str, list[tuple[float, float]]], float]:
    rng = random.Random(seed)
    events: list[dict] = [{"type": "call.started", "t": 0.0, "channels": {"customer": 0, "agent": 1}, "language": "en"}]
    vad: dict[str, list[tuple[float, float]]] = {"customer": [], "agent": []}
    t = 0.0
    while t < hours * 3600:
        for role in ("customer", "agent"):
            length = rng.uniform(1.0, 6.0)
            start, end = t, t + length
            vad[role].append((start, end))
            events.append({"type": "transcript.final", "t": end, "channel": role, "start": start, "end": end,
                           "text": "word " * int(length * 2.5), "language": "en"})
            if role == "customer":
                events += [{"type": "emotion.update", "t": start + k + 1, "channel": role,
                            "grade": rng.choice(["calm", "anxious", "angry"]), "index": rng.uniform(0, 100)}
                           for k in range(int(length))]
            t = end + rng.uniform(-0.5, 2.0)
    return events, vad, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, nargs="+", default=[0.25, 1.0, 2.0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("| call | events | speech segments | median (ms) | fastest (ms) |\n| --- | --- | --- | --- | --- |")
    for hours in args.hours:
        events, vad, duration = synthetic_call(hours)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            summarize(events, duration, vad)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"| {hours:g} h | {len(events)} | {sum(len(v) for v in vad.values())} | "
              f"{statistics.median(times):.1f} | {min(times):.1f} |")


if __name__ == "__main__":
    main()
