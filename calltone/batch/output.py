"""A report folder: ``<name>.json`` and ``<name>.html`` per call, ``summary.csv`` and
``index.html`` over every call in it, ``assets/`` for the pages (offline)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from calltone.batch.report import CallReport
from calltone.batch.scorer import sha256_of

SUMMARY_COLUMNS = (
    "name", "call_id", "source", "duration_s", "language", "mono", "customer_talk_s", "agent_talk_s",
    "customer_talk_ratio", "silence_s", "silence_ratio", "longest_silence_s", "overtalk_s", "interruptions",
    "customer_speaking_rate", "agent_speaking_rate", "rate_unit", "calm_share", "anxious_share", "angry_share",
    "peak_grade", "peak_index", "escalations", "first_escalation_t", "segments", "report",
)


def summary_row(name: str, r: CallReport) -> dict:
    """One summary.csv row: the report's call summary (docs/events.md, "The call summary")."""
    s = r.summary
    cust = s.grades.get("customer")
    share = cust.share if cust else {}

    def opt(x: object) -> object:
        return "" if x is None else x

    return {
        "name": name, "call_id": r.call_id, "source": r.source, "duration_s": s.duration_s, "language": s.language or "",
        "mono": r.mono, "customer_talk_s": opt(s.talk_s.get("customer")), "agent_talk_s": opt(s.talk_s.get("agent")),
        "customer_talk_ratio": opt(s.talk_share.get("customer")), "silence_s": s.silence_s, "silence_ratio": s.silence_share,
        "longest_silence_s": s.longest_silence_s, "overtalk_s": s.overtalk_s, "interruptions": sum(s.interruptions.values()),
        "customer_speaking_rate": opt(s.speech_rate.get("customer")), "agent_speaking_rate": opt(s.agent_speech_rate),
        "rate_unit": s.speech_rate_unit or "",
        "calm_share": share.get("calm", ""), "anxious_share": share.get("anxious", ""), "angry_share": share.get("angry", ""),
        "peak_grade": s.peak_grade or "", "peak_index": opt(s.peak_index),
        "escalations": s.escalations, "first_escalation_t": opt(s.first_escalation_t),
        "segments": len(r.segments), "report": f"{name}.html",
    }


class ReportDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def json_path(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def is_current(self, name: str, source: Path) -> bool:
        """Whether ``name`` holds a report of exactly this recording (same content hash)."""
        p = self.json_path(name)
        if not p.is_file():
            return False
        try:
            return json.loads(p.read_text(encoding="utf-8")).get("source_sha256") == sha256_of(source)
        except (OSError, ValueError):
            return False

    def save(self, name: str, report: CallReport) -> None:
        from calltone.batch.html import render_call

        _write(self.json_path(name), report.model_dump_json(indent=1))
        _write(self.path / f"{name}.html", render_call(report, json_name=f"{name}.json"))

    def reports(self) -> list[tuple[str, CallReport]]:
        """Every report in the folder (by name)."""
        out = []
        for p in sorted(self.path.glob("*.json")):
            try:
                out.append((p.stem, CallReport.model_validate_json(p.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue  # not one of ours
        return out

    def write_index(self, failures: list[tuple[str, str]]) -> list[tuple[str, CallReport]]:
        from calltone.batch.html import render_index, write_assets

        entries = self.reports()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for name, r in entries:
            w.writerow(summary_row(name, r))
        _write(self.path / "summary.csv", buf.getvalue())
        write_assets(self.path)
        _write(self.path / "index.html", render_index(entries, failures))
        return entries


def _write(path: Path, text: str) -> None:
    """Write via a temporary file, so a report is either complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
