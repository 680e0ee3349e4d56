"""Offline HTML for a report folder: ``<name>.html`` per call and ``index.html``.

The pages open from ``file://`` with no network: classic ``<script src="assets/...">``
(no ES modules), the vendored uPlot as the global ``uPlot``, and each call's data
embedded as JSON in ``<script type="application/json" id="report-data">``.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from calltone.batch.report import CallReport
from calltone.events import GRADES

_HERE = Path(__file__).parent
ASSETS = ("report.js", "report.css")
VENDOR = ("uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE")


def clock(s: float | None, hours: bool = False) -> str:
    """Seconds as m:ss (h:mm:ss past an hour, or always with ``hours``); '–' for none."""
    if s is None:
        return "–"
    s = max(0, round(s))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h or hours else f"{m}:{sec:02d}"


def _pct(x: float | None, digits: int = 0) -> str:
    return f"{x * 100:.{digits}f}%" if isinstance(x, (int, float)) else "–"


def _num(x: float | None, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "–"


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "–"


def _href(name: str) -> str:
    return quote(name, safe="")


def _roles(d: dict) -> list:
    """Items of a role-keyed dict, customer first, then agent, then the rest."""
    return sorted(d.items(), key=lambda kv: (kv[0] != "customer", kv[0] != "agent", kv[0]))


def _script_json(data: object) -> Markup:
    """JSON safe inside a <script> element: no '<', '>' or '&' (so no '</script>' or '<!--')."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _evidence(ev: dict) -> dict[str, list[str]]:
    """The key evidence of an alert, compact: rule(s), voice cues, phrases, words heard."""
    def items(key: str) -> list:
        v = ev.get(key)
        return v if isinstance(v, list) else []

    rules = [r.get("rule") for r in items("rules") if isinstance(r, dict) and r.get("rule")] or (
        [ev["rule"]] if ev.get("rule") else [])
    cues = []
    for c in items("cues"):
        if isinstance(c, dict):
            label = c.get("label") or c.get("name") or "?"
            z = c.get("z")
            cues.append(f"{label} (z {z:+.1f})" if isinstance(z, (int, float)) else str(label))
        else:
            cues.append(str(c))
    phrases = [f"“{p.get('text') or p.get('phrase') or '?'}”" + (f" ({p['label']})" if p.get("label") else "")
               if isinstance(p, dict) else f"“{p}”" for p in items("phrases")]
    words = [f"{clock(w['t'])} “{w.get('text', '')}”" if isinstance(w, dict) and isinstance(w.get("t"), (int, float))
             else f"“{w.get('text', '') if isinstance(w, dict) else w}”" for w in items("words")]
    out = {"rule": [", ".join(dict.fromkeys(rules))] if rules else [], "cues": cues, "phrases": phrases, "words": words}
    return {k: v for k, v in out.items() if v}


_env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(clock=clock, pct=_pct, num=_num, date=_date, href=_href, roles=_roles)
_env.globals.update(GRADES=GRADES, evidence=_evidence)


def write_assets(out_dir: Path) -> None:
    """Copy report.js, report.css and the vendored uPlot into ``out_dir / 'assets'``."""
    import calltone.server

    dest = Path(out_dir) / "assets"
    dest.mkdir(parents=True, exist_ok=True)
    vendor = Path(calltone.server.__file__).parent / "static" / "vendor"
    for src in [_HERE / "assets" / n for n in ASSETS] + [vendor / n for n in VENDOR]:
        if src.suffix != ".LICENSE" or src.is_file():  # uPlot's licence travels with it where present
            shutil.copyfile(src, dest / src.name)


def render_call(report: CallReport, json_name: str | None = None) -> str:
    """The per-call page (saved as DIR/<name>.html, beside DIR/<name>.json and DIR/assets/)."""
    data = report.model_dump(mode="json", exclude={"events", "options"})
    return _env.get_template("call.html").render(r=report, m=report.summary, data=_script_json(data),
                                                 json_href=_href(json_name) if json_name else None)


def render_index(entries: list[tuple[str, CallReport]], failures: list[tuple[str, str]],
                 title: str = "calltone QA report") -> str:
    """DIR/index.html over ``entries`` ((name, report); pages ``<name>.html`` and ``<name>.json``) and the
    recordings that could not be scored (``failures``: (path, error))."""
    totals = {"calls": len(entries), "audio_s": sum(r.duration_s for _, r in entries),
              "escalated": sum(1 for _, r in entries if r.summary.escalations)}
    return _env.get_template("index.html").render(entries=entries, failures=failures, title=title, totals=totals)
