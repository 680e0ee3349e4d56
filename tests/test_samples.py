"""Checks on the committed synthetic demo calls in samples/ (see samples/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
LANGS = ["en", "zh"]


def _load(lang: str) -> tuple[np.ndarray, int, dict]:
    with wave.open(str(SAMPLES / f"demo_{lang}.wav"), "rb") as w:
        assert w.getnchannels() == 2
        assert w.getsampwidth() == 2
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    meta = json.loads((SAMPLES / f"demo_{lang}.json").read_text(encoding="utf-8"))
    return pcm.astype(np.float32) / 32768.0, sr, meta


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-9))


def _seg(audio: np.ndarray, sr: int, turn: dict) -> np.ndarray:
    return audio[int(turn["start"] * sr):int(turn["end"] * sr), turn["channel"]]


@pytest.fixture(scope="module", params=LANGS)
def call(request):
    return _load(request.param)


def test_files_present():
    for lang in LANGS:
        for ext in ("wav", "json"):
            assert (SAMPLES / f"demo_{lang}.{ext}").is_file()
    assert (SAMPLES / "make_samples.py").is_file()
    assert (SAMPLES / "README.md").is_file()


def test_format_and_duration(call):
    audio, sr, meta = call
    assert sr == 8000 == meta["sample_rate"]
    assert audio.shape[1] == 2
    assert meta["channels"] == {"customer": 0, "agent": 1}
    dur = len(audio) / sr
    assert abs(dur - meta["duration_s"]) < 0.01
    assert 35.0 <= dur <= 65.0
    assert all(0.0 <= t["start"] < t["end"] <= dur for t in meta["turns"])


def test_turn_structure(call):
    _, _, meta = call
    turns = meta["turns"]
    cust = [t for t in turns if t["speaker"] == "customer"]
    assert 6 <= len(cust) <= 8
    assert all(t["channel"] == meta["channels"][t["speaker"]] for t in turns)
    assert all(t["grade"] == "calm" for t in turns if t["speaker"] == "agent")
    # Customer grades only escalate: calm... anxious... angry...
    order = {"calm": 0, "anxious": 1, "angry": 2}
    grades = [order[t["grade"]] for t in cust]
    assert grades == sorted(grades) and set(grades) == {0, 1, 2}
    first_angry = next(t for t in cust if t["grade"] == "angry")
    assert meta["escalation_onset_s"] == first_angry["start"]
    # Speakers alternate; gaps 0.3-1.2 s except exactly one interruption.
    overlaps = 0
    for prev, cur in zip(turns, turns[1:]):
        assert prev["speaker"] != cur["speaker"]
        gap = cur["start"] - prev["end"]
        if gap < 0:
            overlaps += 1
            assert cur["overlaps_previous"] and gap > -1.0
        else:
            assert 0.29 <= gap <= 1.21
    assert overlaps == 1


def test_customer_channel_quiet_during_agent_only(call):
    audio, sr, meta = call
    cust_ch = meta["channels"]["customer"]
    speech = np.zeros(len(audio), bool)
    agent_only = np.zeros(len(audio), bool)
    for t in meta["turns"]:
        sl = slice(int(t["start"] * sr), int(t["end"] * sr))
        if t["channel"] == cust_ch:
            speech[sl] = True
    for t in meta["turns"]:
        if t["channel"] != cust_ch:
            agent_only[int(t["start"] * sr):int(t["end"] * sr)] = True
    agent_only &= ~speech
    speech_db = _db(audio[speech, cust_ch])
    quiet_db = _db(audio[agent_only, cust_ch])
    assert quiet_db < -40.0
    assert speech_db - quiet_db > 15.0
    # ... but not digital silence: there is line noise.
    assert quiet_db > -70.0


def test_angry_louder_and_higher_than_calm(call):
    librosa = pytest.importorskip("librosa")
    audio, sr, meta = call
    stats: dict[str, list[tuple[float, float]]] = {"calm": [], "angry": []}
    for t in meta["turns"]:
        if t["speaker"] != "customer" or t["grade"] not in stats:
            continue
        x = _seg(audio, sr, t)
        f0 = librosa.yin(x, fmin=60, fmax=500, sr=sr, frame_length=512, hop_length=160)
        stats[t["grade"]].append((_db(x), float(np.median(f0))))
    calm_db = np.median([s[0] for s in stats["calm"]])
    angry_db = np.median([s[0] for s in stats["angry"]])
    calm_f0 = np.median([s[1] for s in stats["calm"]])
    angry_f0 = np.median([s[1] for s in stats["angry"]])
    assert angry_db > calm_db + 3.0, (calm_db, angry_db)
    assert angry_f0 > calm_f0 * 1.2, (calm_f0, angry_f0)


def _espeak_version() -> str | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
    return out[out.index("text-to-speech:") + 1] if "text-to-speech:" in out else None


def test_regeneration_matches_sidecar(tmp_path):
    """With the same espeak-ng build, the generator reproduces the committed timings."""
    meta = json.loads((SAMPLES / "demo_en.json").read_text(encoding="utf-8"))
    version = _espeak_version()
    if version is None or version != meta["generator"].get("espeak_ng_version"):
        pytest.skip("espeak-ng missing or a different version than the one that made the samples")
    pytest.importorskip("scipy")
    subprocess.run([sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    for lang in LANGS:
        old = json.loads((SAMPLES / f"demo_{lang}.json").read_text(encoding="utf-8"))
        new = json.loads((tmp_path / f"demo_{lang}.json").read_text(encoding="utf-8"))
        assert new == old
