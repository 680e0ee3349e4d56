#!/usr/bin/env python3
"""Optional sanity check of the demo calls (not needed to build them).

    python samples/check_samples.py --model /path/to/whisper-ct2-dir [--out samples]

For each demo call: prints per-turn RMS level and median F0 (librosa.yin) of
the customer turns, and transcribes every turn with faster-whisper
(CPU, int8, beam 1) next to the scripted text, so you can see how
intelligible the synthetic telephone speech is. ``--model`` is any
CTranslate2 Whisper directory (e.g. the multilingual "base" model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x, sr


def turn_stats(x: np.ndarray, sr: int) -> tuple[float, float]:
    import librosa

    rms_db = 20 * np.log10(np.sqrt(np.mean(x ** 2)) + 1e-9)
    f0 = librosa.yin(x, fmin=60, fmax=500, sr=sr, frame_length=512, hop_length=160)
    return float(rms_db), float(np.median(f0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--model", help="CTranslate2 Whisper model dir; omit to skip transcription")
    ap.add_argument("--lang", action="append", choices=["en", "zh"])
    args = ap.parse_args(argv)

    model = None
    if args.model:
        from faster_whisper import WhisperModel

        model = WhisperModel(args.model, device="cpu", compute_type="int8", cpu_threads=1)
    import soxr

    for lang in args.lang or ["en", "zh"]:
        meta = json.loads((Path(args.out) / f"demo_{lang}.json").read_text(encoding="utf-8"))
        audio, sr = load(Path(args.out) / f"demo_{lang}.wav")
        print(f"== demo_{lang}: {len(audio) / sr:.1f} s, escalation at {meta['escalation_onset_s']} s")
        for i, t in enumerate(meta["turns"]):
            seg = audio[int(t["start"] * sr):int(t["end"] * sr), t["channel"]]
            rms_db, f0 = turn_stats(seg, sr)
            line = f"{i:2d} {t['speaker']:8s} {t['grade']:7s} {t['start']:6.2f}-{t['end']:6.2f}  rms {rms_db:6.1f} dBFS  F0 {f0:5.0f} Hz"
            print(line)
            if model is not None:
                # Give Whisper 0.4 s of the line either side of the turn.
                ctx = audio[max(0, int((t["start"] - 0.4) * sr)):int((t["end"] + 0.4) * sr), t["channel"]]
                seg16 = soxr.resample(ctx, sr, 16000)
                segs, _ = model.transcribe(seg16, language=lang, beam_size=1)
                print(f"     script:  {t['text']}")
                print(f"     whisper: {''.join(s.text for s in segs).strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
