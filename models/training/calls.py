"""Labelled calls as training clips: a contact centre's own calls next to the acted corpora.

``call_manifest(folders, out)`` cuts every labelled customer segment (``calltone eval --calls``
format, :mod:`calltone.batch.labels`) out of its recording's customer channel, writes it as a 16 kHz
FLAC clip under ``out/clips/`` and returns a :class:`Manifest` of those clips (absolute paths), in
the columns ``calltone train`` reads.  Each call's customer is one speaker (``customer_speaker``
from the labels when given, else the call's name), so speaker-grouped cross-validation never
scores a caller with a model trained on the same caller.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from calltone.batch.labels import LabelledRecording, find_labelled_calls
from calltone.speech.audio import load_recording

from .dataset import EMO_TO_CLASS, Manifest

GRADE_EMOTION = {"calm": "calm", "anxious": "fear", "angry": "anger"}  # the corpora's labels for each grade
COLUMNS = ["path", "corpus", "lang", "speaker", "gender", "emotion", "grade", "intensity", "duration_s", "text"]
MIN_CLIP_S = 0.5


def _emotion(label: str | None, grade: str) -> str:
    """The corpus label of a segment: its own finer label when training knows it (happiness and surprise train
    the happy-vs-angry gate), else the one its grade stands for."""
    return label if label in EMO_TO_CLASS else GRADE_EMOTION[grade]


def _clips(rec: LabelledRecording, out: Path) -> list[dict]:
    audio = load_recording(rec.audio, channel_roles={"customer": rec.labels.customer_channel})
    x, sr = audio.channels["customer"], audio.sample_rate
    speaker = rec.labels.customer_speaker or f"call:{rec.name}"
    rows = []
    for i, seg in enumerate(rec.labels.customer_segments):
        clip = x[int(seg.start * sr): int(seg.end * sr)]
        if len(clip) < MIN_CLIP_S * sr:
            continue
        path = out / f"{rec.name}-{i:03d}.flac"
        sf.write(str(path), np.asarray(clip, dtype=np.float32), sr)
        rows.append({"path": str(path.resolve()), "corpus": "calls", "lang": rec.labels.language or "",
                     "speaker": speaker, "gender": "", "emotion": _emotion(seg.emotion, seg.grade), "grade": seg.grade,
                     "intensity": "", "duration_s": round(len(clip) / sr, 3), "text": seg.text or ""})
    return rows


def call_manifest(folders: list[Path], out: Path) -> tuple[Manifest, list[tuple[str, str]]]:
    """Clips of every labelled call in ``folders`` (written under ``out/clips``) and the problems found."""
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    problems: list[tuple[str, str]] = []
    for folder in folders:
        found, bad = find_labelled_calls(folder)
        problems += bad
        for rec in found:
            rows += _clips(rec, clips)
    with open(out / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return Manifest(out, rows), problems


def merged(manifests: list[Manifest]) -> Manifest:
    """One manifest of several (paths made absolute, so each keeps its own root)."""
    rows = [{**{c: "" for c in COLUMNS}, **r, "path": str((m.root / r["path"]).resolve())} for m in manifests for r in m.rows]
    return Manifest(Path("/"), rows)
