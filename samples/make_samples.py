#!/usr/bin/env python3
"""Generate the two synthetic demo calls shipped in ``samples/``.

    python samples/make_samples.py [--out samples]

Writes ``demo_zh.wav`` / ``demo_en.wav`` (stereo, 8 kHz, 16-bit PCM;
channel 0 = customer, channel 1 = agent) and the ground-truth sidecars
``demo_zh.json`` / ``demo_en.json``.

All speech is synthesised locally with espeak-ng (no corpus audio, no
network). The customer starts calm, becomes anxious and ends angry; the
agent stays calm. Each turn is synthesised separately, trimmed, resampled
to 8 kHz and placed on its channel with 0.3-1.2 s gaps (one deliberate
overlap where the customer interrupts). Then line noise is added, the audio
is band-limited to 300-3400 Hz and passed through a G.711 mu-law round trip.

Output is deterministic for a given espeak-ng build (noise and gaps are
seeded). Requires: espeak-ng on PATH, numpy, scipy.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from scipy.signal import butter, resample_poly, sosfilt

SR = 8000
CUSTOMER, AGENT = 0, 1
SEED = 20240611

# espeak-ng settings per intended grade (customer) and for the agent.
# pitch: -p (0-99), speed: -s (wpm), amp: -a (0-200), range: SSML prosody range.
STYLE = {
    "calm": dict(pitch=50, speed=155, amp=90, range="medium"),
    "anxious": dict(pitch=65, speed=175, amp=130, range="high"),
    "angry": dict(pitch=82, speed=200, amp=200, range="x-high"),
    "agent": dict(pitch=50, speed=155, amp=90, range="medium"),
}

# Per-language voices and per-style overrides. The Debian/Ubuntu espeak-ng
# 1.51 "cmn" voice turns Han characters into tone-numbered pinyin and then
# reads that pinyin with English rules ("ni three hao three"); the
# "cmn-latn-pinyin" voice is the same Mandarin voice with pinyin read as
# pinyin, so it is the one that actually speaks Mandarin.
LANGS = {
    "zh": dict(
        customer_voice="cmn-latn-pinyin+m3",
        agent_voice="cmn-latn-pinyin+f3",
        # Slower than English: espeak's Mandarin is hard to follow when rushed.
        speed={"calm": 150, "anxious": 170, "angry": 200, "agent": 165},
    ),
    "en": dict(
        customer_voice="en-us+m3",
        agent_voice="en-us+f3",
        speed={},
    ),
}

# (speaker, grade, text). Agent turns are always "calm".
# The customer turn marked with overlap=True starts before the preceding
# agent turn has finished (the caller interrupts).
SCRIPTS = {
    "en": [
        ("agent", "calm", "Bright Home customer service, this is Lisa. How can I help?"),
        ("customer", "calm", "Hi. I returned a broken blender three weeks ago, and I'm still waiting for my refund."),
        ("agent", "calm", "Sorry about that. What's your order number?"),
        ("customer", "calm", "It's four five seven two nine one. You said the refund takes five days."),
        ("agent", "calm", "I see the return arrived, but the refund is still pending."),
        ("customer", "anxious", "Still pending? This is the third time I've called about this!"),
        ("agent", "calm", "I understand. I'll escalate it to billing right away."),
        ("customer", "anxious", "But when do I get my money? I really need it this month."),
        ("agent", "calm", "Escalations take seven to ten business days."),
        ("customer", "angry", "Ten more days? That's ridiculous! You've had my money for three weeks!", True),
        ("agent", "calm", "I understand. I'm doing everything I can."),
        ("customer", "angry", "No. I want to speak to your supervisor, right now!"),
        ("agent", "calm", "Of course. Please hold while I transfer you."),
        ("customer", "angry", "And if I don't get my refund today, cancel my account!"),
    ],
    "zh": [
        ("agent", "calm", "您好，明家客服，请问有什么可以帮您？"),
        ("customer", "calm", "你好，我退了一个坏的电饭煲，退款还没到。"),
        ("agent", "calm", "请问您的订单号是多少？"),
        ("customer", "calm", "四五七二九一。说好五天退款的。"),
        ("agent", "calm", "退货收到了，退款还在处理中。"),
        ("customer", "anxious", "还在处理？这是我第三次打电话了！"),
        ("agent", "calm", "我理解，马上帮您加急处理。"),
        ("customer", "anxious", "那到底什么时候到账？我急用这笔钱。"),
        ("agent", "calm", "加急一般要七到十个工作日。"),
        ("customer", "angry", "还要十天？太过分了！你们拿我的钱三个星期了！", True),
        ("agent", "calm", "我理解，我会尽力帮您。"),
        ("customer", "angry", "不行！我要投诉，叫你们经理来！"),
        ("agent", "calm", "好的，请稍等，我帮您转接。"),
        ("customer", "angry", "今天不退款，我就注销账户！"),
    ],
}

LEAD_IN_S = 0.5     # silence before the first turn
TAIL_S = 0.5        # silence after the last turn
GAP_S = (0.3, 1.2)  # gap between consecutive turns
OVERLAP_S = 0.4     # how far the interrupting turn starts before the previous ends
NOISE_DBFS = -46.0  # line-noise RMS level (before band-limiting)


INSTALL_HINT = (
    "espeak-ng was not found on PATH. Install it, e.g.\n"
    "  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y espeak-ng\n"
    "  Fedora:        sudo dnf install espeak-ng\n"
    "  macOS:         brew install espeak-ng\n"
)


def espeak_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    parts = out.split()
    for i, p in enumerate(parts):
        if p.startswith("text-to-speech:") and i + 1 < len(parts):
            return parts[i + 1]
    return out.strip()


def synth(exe: str, text: str, voice: str, pitch: int, speed: int, amp: int, prange: str,
          word_gap: int = 0) -> tuple[np.ndarray, int]:
    """Run espeak-ng and return (float32 mono audio in [-1, 1], sample rate)."""
    ssml = f'<speak><prosody range="{prange}">{escape(text)}</prosody></speak>'
    cmd = [exe, "-m", "-z", "-b", "1", "-v", voice, "-p", str(pitch), "-s", str(speed),
           "-a", str(amp), "-g", str(word_gap), "--stdout", ssml]
    wav_bytes = subprocess.run(cmd, capture_output=True, check=True).stdout
    # espeak-ng writes a streaming WAV header with bogus sizes; parse it leniently.
    fmt = wav_bytes.find(b"fmt ")
    data = wav_bytes.find(b"data")
    if fmt < 0 or data < 0:
        raise RuntimeError(f"espeak-ng produced no WAV data for {text!r}")
    channels = int.from_bytes(wav_bytes[fmt + 10:fmt + 12], "little")
    rate = int.from_bytes(wav_bytes[fmt + 12:fmt + 16], "little")
    bits = int.from_bytes(wav_bytes[fmt + 22:fmt + 24], "little")
    if channels != 1 or bits != 16:
        raise RuntimeError(f"unexpected espeak-ng output format: {channels} ch, {bits} bit")
    pcm = wav_bytes[data + 8:]
    pcm = pcm[: len(pcm) // 2 * 2]
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return x, rate


def trim(x: np.ndarray, sr: int, thresh_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence (10 ms frames below thresh_db re. the turn peak)."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n == 0:
        return x
    frames = x[: n * hop].reshape(n, hop)
    rms = np.sqrt(np.mean(frames ** 2, axis=1) + 1e-12)
    keep = np.nonzero(20 * np.log10(rms / (np.abs(x).max() + 1e-9)) > thresh_db)[0]
    if len(keep) == 0:
        return x
    return x[keep[0] * hop:(keep[-1] + 1) * hop]


def to_8k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SR:
        return x.astype(np.float64)
    g = np.gcd(sr, SR)
    return resample_poly(x.astype(np.float64), SR // g, sr // g)


def mulaw_roundtrip(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """8-bit G.711-style mu-law encode + decode."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round((y + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    return np.sign(q) * ((1.0 + mu) ** np.abs(q) - 1.0) / mu


def line_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Hiss with a slow level wobble plus a few faint clicks."""
    white = rng.standard_normal(n)
    t = np.arange(n) / SR
    wobble = 1.0 + 0.35 * np.sin(2 * np.pi * rng.uniform(0.05, 0.15) * t + rng.uniform(0, 2 * np.pi))
    noise = white * wobble * 10 ** (NOISE_DBFS / 20)
    for pos in rng.integers(0, n - 40, size=max(1, n // (SR * 6))):
        noise[pos:pos + 40] += rng.uniform(0.01, 0.03) * np.exp(-np.arange(40) / 6.0) * rng.choice([-1, 1])
    return noise


def build_call(lang: str, exe: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    cfg = LANGS[lang]
    turns_out = []
    clips = []
    t = LEAD_IN_S
    prev_end = None
    for item in SCRIPTS[lang]:
        speaker, grade, text = item[:3]
        overlap = len(item) > 3 and item[3]
        style_key = "agent" if speaker == "agent" else grade
        st = dict(STYLE[style_key])
        if style_key in cfg["speed"]:
            st["speed"] = cfg["speed"][style_key]
        voice = cfg["agent_voice"] if speaker == "agent" else cfg["customer_voice"]
        x, sr = synth(exe, text, voice, st["pitch"], st["speed"], st["amp"], st["range"])
        clip = to_8k(trim(x, sr), sr)
        gap = float(rng.uniform(*GAP_S))
        if prev_end is not None:
            t = prev_end - OVERLAP_S if overlap else prev_end + gap
        start = round(t, 3)
        start_n = int(round(start * SR))
        end = round((start_n + len(clip)) / SR, 3)
        clips.append((CUSTOMER if speaker == "customer" else AGENT, start_n, clip))
        turns_out.append({
            "speaker": speaker,
            "channel": CUSTOMER if speaker == "customer" else AGENT,
            "start": start,
            "end": end,
            "text": text,
            "grade": grade,
            "overlaps_previous": bool(overlap),
            "espeak": {"voice": voice, "pitch": st["pitch"], "speed": st["speed"],
                       "amplitude": st["amp"], "pitch_range": st["range"]},
        })
        prev_end = end

    n = int(round((prev_end + TAIL_S) * SR))
    audio = np.zeros((n, 2), dtype=np.float64)
    for ch, s, clip in clips:
        audio[s:s + len(clip), ch] += clip
    # One common gain for both channels so relative loudness is preserved.
    audio *= 0.7 / np.abs(audio).max()
    sos = butter(4, [300, 3400], btype="bandpass", fs=SR, output="sos")
    for ch in range(2):
        audio[:, ch] = sosfilt(sos, audio[:, ch] + line_noise(n, rng))
    audio = mulaw_roundtrip(audio)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")

    angry = [tt["start"] for tt in turns_out if tt["speaker"] == "customer" and tt["grade"] == "angry"]
    meta = {
        "call": f"demo_{lang}",
        "language": lang,
        "sample_rate": SR,
        "sample_width_bits": 16,
        "duration_s": round(n / SR, 3),
        "channels": {"customer": CUSTOMER, "agent": AGENT},
        "escalation_onset_s": min(angry) if angry else None,
        "turns": turns_out,
        "generator": {
            "script": "samples/make_samples.py",
            "tts": "espeak-ng",
            "seed": SEED,
            "processing": "trim, resample to 8 kHz, line noise, 300-3400 Hz band-pass, mu-law round trip",
        },
    }
    return pcm, meta


def write_wav(path: Path, pcm: np.ndarray) -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    path.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent),
                    help="output folder (default: the samples/ folder next to this script)")
    ap.add_argument("--lang", choices=sorted(SCRIPTS), action="append",
                    help="only build this language (repeatable; default: all)")
    args = ap.parse_args(argv)

    exe = shutil.which("espeak-ng")
    if exe is None:
        print("error: " + INSTALL_HINT, file=sys.stderr)
        return 2
    version = espeak_version(exe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, lang in enumerate(args.lang or sorted(SCRIPTS)):
        # A per-language seed keeps each call reproducible on its own.
        rng = np.random.default_rng([SEED, sorted(SCRIPTS).index(lang)])
        pcm, meta = build_call(lang, exe, rng)
        meta["generator"]["espeak_ng_version"] = version
        write_wav(out / f"demo_{lang}.wav", pcm)
        (out / f"demo_{lang}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        n_c = sum(t["speaker"] == "customer" for t in meta["turns"])
        print(f"wrote {out / f'demo_{lang}.wav'}: {meta['duration_s']:.1f} s, "
              f"{len(meta['turns'])} turns ({n_c} customer), escalation at {meta['escalation_onset_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
