"""The supervisor wallboard with many live calls: the browser's CPU and the bandwidth of its feeds.

    python bench/wallboard.py                    # 200 calls, 30 s measured, both pages
    python bench/wallboard.py --calls 500 --seconds 60 --pages live

A server on loopback (in-process bus, SQLite in a temp folder) with N simulated live calls: call rows in the
store and, every second, one customer ``emotion.update`` and one ``transcript.partial`` per call, stored then
published as ``LiveCall`` does (no ASR: the speech model is loaded once before measuring and is idle).  Chromium
(Playwright, headless) opens ``/supervisor`` and, once the board shows every call, is measured for
``--seconds``:

* ``live``: the page as it is (one ``/v1/live`` websocket for the board, plus the alert feed);
* ``per-call``: the page as it was before ``/v1/live`` (its ``supervisor.js`` from git, ``--before`` commit,
  served in place of today's through Playwright's routing): ``GET /v1/calls?status=live`` every 2 s and one
  event feed websocket per call.

Figures: CPU seconds of every Chromium process (user + system, from /proc) per second of wall time; the page's
main-thread task time (CDP ``Performance.getMetrics`` ``TaskDuration``) per second; websocket bytes received by
the page (CDP ``Network.webSocketFrameReceived``) per second, and frames per second.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
BEFORE = "c0527e9^"  # the last commit whose supervisor page opened one event feed per live call
TOKEN = "bench-supervisor-token"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(marker: str) -> float:
    """CPU seconds of the Chromium started with ``marker`` on its command line and of all its descendants."""
    parents: dict[int, int] = {}
    root = None
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if root is None and marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                root = int(d.name)
        except OSError:
            continue
    assert root is not None, "the browser process was not found"
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for pid in tree:
        try:
            total += cpu_s(pid)
        except OSError:
            pass
    return total


class Traffic(threading.Thread):
    """N simulated live calls on the server: every second, per call, an emotion.update and a transcript.partial."""

    def __init__(self, srv, calls: int) -> None:
        super().__init__(daemon=True)
        self.srv, self.ids = srv, [f"wb-{i:04d}" for i in range(calls)]
        self.stop = threading.Event()
        self.seq = {c: 0 for c in self.ids}
        now = time.time()
        rows = [{"call_id": c, "status": "live", "agent_id": f"a{i % 40}", "started_at": now - i,
                 "metadata": {"queue": f"q{i % 5}"}, "roles": ["customer", "agent"]} for i, c in enumerate(self.ids)]
        srv.call(lambda: srv.services.store.write(lambda r: [r.upsert_call(row) for row in rows]))

    def events(self, k: int) -> list:
        from calltone.events import EmotionUpdate, Probs, TranscriptPartial

        out = []
        for i, c in enumerate(self.ids):
            index = float((i * 7 + k * 13) % 100)
            grade = "calm" if index < 35 else "anxious" if index < 70 else "angry"
            out.append(EmotionUpdate(call_id=c, t=float(k), channel="customer", grade=grade, index=index, trend=1.5,
                                     probs=Probs(calm=0.4, anxious=0.3, angry=0.3)))
            out.append(TranscriptPartial(call_id=c, t=float(k), channel="customer", start=k - 1.0, end=float(k),
                                         text="I have been waiting for this refund for three weeks now", language="en"))
        return out

    def run(self) -> None:
        from calltone.server.bus import Message

        s = self.srv.services
        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            events = self.events(k)
            for ev in events:
                self.seq[ev.call_id] += 1
                ev.seq = self.seq[ev.call_id]
            bodies = [(ev, ev.model_dump_json()) for ev in events]

            async def go() -> None:
                await s.store.write(lambda r: [r.append_event(ev.call_id, ev.seq, ev.type, ev.t, time.time(), b)
                                               for ev, b in bodies])
                for ev, b in bodies:
                    s.bus.publish(f"call:{ev.call_id}", Message.of(ev.type, b, ev.seq, ev.channel))

            self.srv.call(go, timeout=60)
            k += 1
            time.sleep(max(0.0, t0 + k - time.monotonic()))


def measure(srv, page_kind: str, calls: int, seconds: float, before: str) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    marker = f"--calltone-bench={uuid.uuid4().hex}"
    old_js = subprocess.run(["git", "show", f"{before}:server/static/js/supervisor.js"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", marker])
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        if page_kind == "per-call":
            page.route("**/static/js/supervisor.js", lambda route: route.fulfill(
                status=200, content_type="text/javascript", body=old_js))
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        cdp.send("Network.enable")
        received = {"bytes": 0, "frames": 0}

        def frame(e: dict) -> None:
            received["bytes"] += len(e["response"]["payloadData"].encode())
            received["frames"] += 1

        cdp.on("Network.webSocketFrameReceived", frame)
        page.goto(f"{srv.http}/supervisor#token={TOKEN}")
        shown = f"() => document.querySelectorAll('[data-testid=wallboard] tr.call-row').length >= {calls}"
        t_shown = time.monotonic()
        try:
            page.wait_for_function(shown, timeout=120_000)
        except PlaywrightTimeout:  # measured all the same: "rows shown" tells how far it got
            pass
        t_shown = time.monotonic() - t_shown
        page.wait_for_timeout(5000)  # settle: every feed open and flowing

        def task_s() -> float:
            return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")

        b0, f0, c0, t0, w0 = received["bytes"], received["frames"], tree_cpu_s(marker), task_s(), time.monotonic()
        page.wait_for_timeout(seconds * 1000)
        b1, f1, c1, t1, w1 = received["bytes"], received["frames"], tree_cpu_s(marker), task_s(), time.monotonic()
        rows = page.locator("[data-testid=wallboard] tr.call-row").count()
        browser.close()
    wall = w1 - w0
    return {"page": page_kind, "rows": rows, "shown_s": t_shown, "browser_cpu": (c1 - c0) / wall, "main_thread": (t1 - t0) / wall,
            "kib_s": (b1 - b0) / wall / 1024, "frames_s": (f1 - f0) / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--pages", default="live,per-call", help="live, per-call or both (comma-separated)")
    ap.add_argument("--before", default=BEFORE, help="git commit whose supervisor.js is the per-call page")
    args = ap.parse_args()
    from calltone.server.app import ServerThread, create_app
    from calltone.settings import ServerSettings, Settings

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings()
        s.server = ServerSettings(data_dir=Path(tmp), tokens={TOKEN: "supervisor:bench"},
                                  subscriber_queue=1024)
        with ServerThread(create_app(s), s) as srv:
            srv.wait_ready(timeout=300)
            traffic = Traffic(srv, args.calls)
            traffic.start()
            print(f"{args.calls} live calls, 2 events/s each ({2 * args.calls} events/s), {args.seconds:.0f} s measured\n")
            print("| page | all rows shown after (s) | rows shown | browser CPU (cores) | page main thread (s/s) | "
                  "websocket KiB/s | frames/s |")
            print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
            for kind in args.pages.split(","):
                r = measure(srv, kind, args.calls, args.seconds, args.before)
                print(f"| {r['page']} | {r['shown_s']:.1f} | {r['rows']} | {r['browser_cpu']:.3f} | {r['main_thread']:.3f} | "
                      f"{r['kib_s']:.1f} | {r['frames_s']:.1f} |", flush=True)
            traffic.stop.set()
            traffic.join(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
