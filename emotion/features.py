"""Prosody features for one stretch of speech (eGeMAPS-inspired, telephone-safe).

Everything is computed on an 8 kHz version of the signal and spectral features are
band-limited to 300-3400 Hz, so the same numbers come out of wideband (16 kHz)
and G.711 telephone audio: nothing above 4 kHz is used, and nothing below 300 Hz
except the pitch period itself (YIN finds a missing fundamental from the harmonics).

Cost: one vectorised YIN pass (FFT autocorrelation) plus one 256-point STFT at
8 kHz; a few ms of CPU per second of audio (see ``models/README.md``).

Public API
----------
``FEATURE_NAMES``            ordered feature ids
``FEATURE_INFO``             id -> dict(label_up, label_down, unit, group)
``extract_features(audio, sr=16000, segments=None) -> np.ndarray`` (float32)
``SpeakerBaseline``          unlabeled per-speaker statistics, shrunk toward the population
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_INFO",
    "extract_features",
    "feature_label",
    "SpeakerBaseline",
    "FS",
    "HOP_S",
    "FEATURE_VERSION",
]

FEATURE_VERSION = "1.1"  # bump when feature computation changes (invalidates caches)
FS = 8000  # analysis rate (telephone band)
HOP = 80  # 10 ms
HOP_S = HOP / FS
YIN_FRAME = 400  # 50 ms analysis frame
YIN_WIN = 200  # integration window
FMIN, FMAX = 60.0, 620.0
YIN_THRESHOLD = 0.1
VOICED_MAX_CMNDF = 0.35
N_FFT = 256
F0_REF_HZ = 27.5  # semitone reference, as eGeMAPS
MIN_PAUSE_S = 0.15

# (id, label when the value goes up, label when it goes down, unit, group)
_SPEC: list[tuple[str, str, str, str, str]] = [
    ("f0_mean", "voice pitch raised", "voice pitch lowered", "semitones", "pitch"),
    ("f0_std", "more pitch variation", "flatter pitch", "semitones", "pitch"),
    ("f0_p20", "low pitch raised", "low pitch lowered", "semitones", "pitch"),
    ("f0_p50", "median pitch raised", "median pitch lowered", "semitones", "pitch"),
    ("f0_p80", "high pitch raised", "high pitch lowered", "semitones", "pitch"),
    ("f0_range", "wider pitch range", "narrower pitch range", "semitones", "pitch"),
    ("f0_rise", "steeper pitch rises", "gentler pitch rises", "semitones/s", "pitch"),
    ("f0_fall", "steeper pitch falls", "gentler pitch falls", "semitones/s", "pitch"),
    ("voiced_frac", "more voiced sound", "less voiced sound", "fraction", "pitch"),
    ("loud_mean", "louder", "quieter", "dB", "loudness"),
    ("loud_std", "more loudness variation", "steadier loudness", "dB", "loudness"),
    ("loud_p20", "quiet parts louder", "quiet parts quieter", "dB", "loudness"),
    ("loud_p80", "loud parts louder", "loud parts quieter", "dB", "loudness"),
    ("loud_range", "wider loudness range", "narrower loudness range", "dB", "loudness"),
    ("loud_peak_rate", "more loudness peaks", "fewer loudness peaks", "1/s", "loudness"),
    ("loud_rise", "sharper onsets", "softer onsets", "dB/s", "loudness"),
    ("syll_rate", "faster speech", "slower speech", "syllables/s", "rate"),
    ("artic_rate", "faster articulation", "slower articulation", "syllables/s", "rate"),
    ("voiced_seg_mean", "longer voiced stretches", "shorter voiced stretches", "s", "rate"),
    ("pause_rate", "more pauses", "fewer pauses", "1/s", "pauses"),
    ("pause_mean", "longer pauses", "shorter pauses", "s", "pauses"),
    ("pause_max", "longer longest pause", "shorter longest pause", "s", "pauses"),
    ("pause_ratio", "more time in pauses", "less time in pauses", "fraction", "pauses"),
    ("jitter", "shakier pitch (jitter)", "steadier pitch (jitter)", "fraction", "quality"),
    ("shimmer", "shakier loudness (shimmer)", "steadier loudness (shimmer)", "dB", "quality"),
    ("hnr_mean", "clearer voice (HNR)", "rougher/breathier voice (HNR)", "dB", "quality"),
    ("hnr_std", "more variable voice quality", "steadier voice quality", "dB", "quality"),
    ("alpha_ratio", "softer, darker voice", "tenser, brighter voice", "dB", "spectrum"),
    ("hammarberg", "softer voice (Hammarberg)", "tenser voice (Hammarberg)", "dB", "spectrum"),
    ("spec_slope", "less high-frequency energy", "more high-frequency energy", "dB/kHz", "spectrum"),
    ("centroid", "brighter voice", "darker voice", "Hz", "spectrum"),
    ("centroid_std", "more variable brightness", "steadier brightness", "Hz", "spectrum"),
    ("flux", "faster spectral change", "slower spectral change", "a.u.", "spectrum"),
    ("flux_std", "more variable spectral change", "steadier spectral change", "a.u.", "spectrum"),
    ("alpha_ratio_uv", "softer unvoiced sounds", "sharper unvoiced sounds", "dB", "spectrum"),
    ("hf_ratio", "more energy 2-3.4 kHz", "less energy 2-3.4 kHz", "dB", "spectrum"),
]
for _k in range(1, 5):
    _SPEC.append((f"mfcc{_k}", f"timbre (MFCC{_k}) up", f"timbre (MFCC{_k}) down", "a.u.", "spectrum"))
for _k in range(1, 5):
    _SPEC.append((f"mfcc{_k}_std", f"timbre (MFCC{_k}) more variable", f"timbre (MFCC{_k}) steadier", "a.u.", "spectrum"))

FEATURE_NAMES: list[str] = [s[0] for s in _SPEC]
FEATURE_INFO: dict[str, dict[str, str]] = {
    s[0]: {"label_up": s[1], "label_down": s[2], "unit": s[3], "group": s[4]} for s in _SPEC
}
_IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def feature_label(name: str, direction: float) -> str:
    """Plain-words label for a feature moving in ``direction`` (sign)."""
    info = FEATURE_INFO[name]
    return info["label_up"] if direction >= 0 else info["label_down"]


# ---------------------------------------------------------------------------
# helpers

_MEL_CACHE: dict = {}


def _to_8k(audio: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=-1) if x.shape[-1] < x.shape[0] else x.mean(axis=0)
    if sr != FS:
        import soxr

        x = soxr.resample(x, sr, FS, quality="MQ").astype(np.float32)
    return x


def _frame(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    if len(x) < length:
        x = np.pad(x, (0, length - len(x)))
    n = 1 + (len(x) - length) // hop
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, length), strides=(x.strides[0] * hop, x.strides[0]), writeable=False
    )


def _yin(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised YIN at 8 kHz. Returns (f0_hz, cmndf_min) per 10 ms frame."""
    pad = YIN_FRAME // 2
    xp = np.pad(x, (pad, pad))
    fr = _frame(xp, YIN_FRAME, HOP).astype(np.float64)
    fr = fr - fr.mean(axis=1, keepdims=True)
    tau_min = int(FS / FMAX)
    tau_max = min(int(FS / FMIN), YIN_FRAME - YIN_WIN - 1)
    nfft = 512
    a = np.fft.rfft(fr, nfft)
    b = np.fft.rfft(fr[:, :YIN_WIN], nfft)
    acf = np.fft.irfft(a * np.conj(b), nfft)[:, : tau_max + 1]
    cs = np.concatenate([np.zeros((fr.shape[0], 1)), np.cumsum(fr**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy = cs[:, taus + YIN_WIN] - cs[:, taus]
    d = energy[:, :1] + energy - 2.0 * acf
    d[:, 0] = 0.0
    d = np.maximum(d, 0.0)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    c = cmndf[:, tau_min - 1 : tau_max + 1]  # with one guard sample on each side
    mid = c[:, 1:-1]
    trough = (mid < c[:, :-2]) & (mid <= c[:, 2:])
    cand = trough & (mid < YIN_THRESHOLD)
    has = cand.any(axis=1)
    first = np.where(has, np.argmax(cand, axis=1), np.argmin(mid, axis=1))
    rows = np.arange(len(mid))
    # parabolic interpolation
    y0 = c[rows, first]
    y1 = c[rows, first + 1]
    y2 = c[rows, first + 2]
    den = y0 - 2 * y1 + y2
    shift = np.where(np.abs(den) > 1e-12, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
    shift = np.clip(shift, -1, 1)
    period = tau_min + first + shift
    f0 = FS / np.maximum(period, 1.0)
    return f0, y1


PITCH_PREPROC = False
_SOS: dict = {}


def _pitch_signal(x: np.ndarray) -> np.ndarray:
    """Signal for the pitch tracker, identical for wideband and telephone input: the
    300-3400 Hz telephone band, half-wave rectified (re-creates the fundamental a
    telephone line removes, as difference tones of the harmonics) and low-passed at 1 kHz."""
    from scipy.signal import butter, sosfilt

    if not _SOS:
        _SOS["bp"] = butter(4, [300.0, 3400.0], btype="bandpass", fs=FS, output="sos")
        _SOS["lp"] = butter(4, 1000.0, btype="lowpass", fs=FS, output="sos")
    y = sosfilt(_SOS["bp"], x)
    y = np.maximum(y, 0.0)
    y = sosfilt(_SOS["lp"], y)
    return (y - y.mean()).astype(np.float32)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of True runs."""
    if not mask.any():
        return []
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist()))


def _median3(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return x
    p = np.pad(x, 1, mode="edge")
    return np.median(np.stack([p[:-2], p[1:-1], p[2:]]), axis=0)


def _mel_dct(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    key = n_bins
    if key not in _MEL_CACHE:
        n_mel = 24
        lo, hi = 300.0, 3400.0
        mel = lambda f: 2595 * np.log10(1 + f / 700.0)  # noqa: E731
        imel = lambda m: 700 * (10 ** (m / 2595.0) - 1)  # noqa: E731
        pts = imel(np.linspace(mel(lo), mel(hi), n_mel + 2))
        freqs = np.linspace(0, FS / 2, n_bins)
        fb = np.zeros((n_mel, n_bins))
        for i in range(n_mel):
            l, c, r = pts[i], pts[i + 1], pts[i + 2]
            fb[i] = np.clip(np.minimum((freqs - l) / (c - l), (r - freqs) / (r - c)), 0, None)
        n = np.arange(n_mel)
        dct = np.cos(np.pi / n_mel * (n + 0.5)[None, :] * np.arange(1, 5)[:, None]) * np.sqrt(2.0 / n_mel)
        _MEL_CACHE[key] = (fb, dct)
    return _MEL_CACHE[key]


def _pct(x: np.ndarray, q) -> np.ndarray:
    return np.percentile(x, q) if len(x) else np.zeros(np.size(q))


# ---------------------------------------------------------------------------


def extract_features(
    audio: np.ndarray,
    sr: int = 16000,
    segments: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Prosody feature vector (float32, ``len(FEATURE_NAMES)``) for one stretch of speech.

    ``audio``: mono float waveform in [-1, 1] at ``sr`` (8 kHz or 16 kHz typical).
    ``segments``: optional VAD speech segments in seconds relative to the start of
    ``audio``; gaps between them count as pauses. Without them, pauses come from
    an energy threshold.  Returns all zeros (finite) for silence or < 0.1 s audio.
    """
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    x = _to_8k(audio, sr)
    if len(x) < int(0.1 * FS) or not np.any(x):
        return out.astype(np.float32)
    x = x - float(np.mean(x))
    dur = len(x) / FS

    # ---- frame energy & spectrum (10 ms hop, 32 ms window) -----------------
    pad = N_FFT // 2
    fr = _frame(np.pad(x, (pad, pad)), N_FFT, HOP)
    win = np.hanning(N_FFT).astype(np.float32)
    spec = np.abs(np.fft.rfft(fr * win, axis=1)) ** 2  # (T, 129)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / FS)
    band = (freqs >= 300) & (freqs <= 3400)
    e_band = spec[:, band].sum(axis=1)
    loud = 10 * np.log10(e_band / (N_FFT * win.sum()) + 1e-10)  # dB (relative to full scale-ish)

    f0, cm = _yin(_pitch_signal(x) if PITCH_PREPROC else x)
    T = min(len(loud), len(f0))
    loud, f0, cm, spec = loud[:T], f0[:T], cm[:T], spec[:T]

    # ---- speech / silence ---------------------------------------------------
    peak = np.percentile(loud, 95)
    floor = np.percentile(loud, 10)
    thr = max(peak - 35.0, floor + 0.4 * (peak - floor) if peak - floor > 10 else floor + 3.0)
    active = loud > thr
    if segments:
        vad = np.zeros(T, dtype=bool)
        for s, e in segments:
            vad[max(0, int(s / HOP_S)) : min(T, int(np.ceil(e / HOP_S)))] = True
        if vad.any():
            active = vad & (loud > peak - 45.0)
            speech_mask = vad
        else:
            speech_mask = active
    else:
        speech_mask = active
    voiced = active & (cm < VOICED_MAX_CMNDF) & (f0 >= FMIN) & (f0 <= FMAX)
    # drop isolated voiced frames
    for s, e in _runs(voiced):
        if e - s < 3:
            voiced[s:e] = False
    if not active.any():
        return out.astype(np.float32)

    # ---- pitch --------------------------------------------------------------
    st = 12.0 * np.log2(np.maximum(f0, 1.0) / F0_REF_HZ)
    vst = _median3(st[voiced]) if voiced.any() else np.zeros(0)
    # clean octave jumps: drop frames more than 9 st away from the clip median
    if len(vst):
        med = np.median(vst)
        good = np.abs(vst - med) < 9.0
        vidx = np.flatnonzero(voiced)[good]
        vst = vst[good]
    else:
        vidx = np.zeros(0, dtype=int)
    n_act = active.sum()
    out[_IDX["voiced_frac"]] = len(vst) / max(n_act, 1)
    if len(vst) >= 3:
        p20, p50, p80 = _pct(vst, [20, 50, 80])
        out[_IDX["f0_mean"]] = vst.mean()
        out[_IDX["f0_std"]] = vst.std()
        out[_IDX["f0_p20"]], out[_IDX["f0_p50"]], out[_IDX["f0_p80"]] = p20, p50, p80
        out[_IDX["f0_range"]] = p80 - p20
        # slopes within contiguous voiced runs
        contiguous = np.diff(vidx) == 1
        dst = np.diff(vst)[contiguous] / HOP_S
        rises, falls = dst[dst > 0], dst[dst < 0]
        out[_IDX["f0_rise"]] = np.mean(np.clip(rises, 0, 300)) if len(rises) else 0.0
        out[_IDX["f0_fall"]] = -np.mean(np.clip(falls, -300, 0)) if len(falls) else 0.0
        # jitter: relative period perturbation between consecutive voiced frames
        per = 1.0 / (F0_REF_HZ * 2 ** (vst / 12.0))
        dp = np.abs(np.diff(per))[contiguous]
        rel = dp / per[1:][contiguous]
        rel = rel[rel < 0.2]  # ignore pitch-tracking jumps
        out[_IDX["jitter"]] = rel.mean() if len(rel) else 0.0
        # shimmer: dB difference of consecutive voiced frame loudness
        lv = loud[vidx]
        dl = np.abs(np.diff(lv))[contiguous]
        dl = dl[dl < 6.0]
        out[_IDX["shimmer"]] = dl.mean() if len(dl) else 0.0
        hnr = 10 * np.log10(np.clip(1 - cm[vidx], 1e-3, 1) / np.clip(cm[vidx], 1e-3, 1))
        out[_IDX["hnr_mean"]] = hnr.mean()
        out[_IDX["hnr_std"]] = hnr.std()

    # ---- loudness -----------------------------------------------------------
    la = loud[active]
    out[_IDX["loud_mean"]] = la.mean()
    out[_IDX["loud_std"]] = la.std()
    lp20, lp80 = _pct(la, [20, 80])
    out[_IDX["loud_p20"]], out[_IDX["loud_p80"]] = lp20, lp80
    out[_IDX["loud_range"]] = lp80 - lp20
    # smoothed contour (50 ms) for peaks and syllable nuclei
    k = np.hanning(7)
    k /= k.sum()
    ls = np.convolve(loud, k, mode="same")
    is_peak = np.zeros(T, dtype=bool)
    if T >= 3:
        is_peak[1:-1] = (ls[1:-1] > ls[:-2]) & (ls[1:-1] >= ls[2:])
    # prominence: drop below peak on both sides within 100 ms
    w = 10
    lp = np.pad(ls, w, mode="edge")
    left_min = np.min(_frame(lp, w + 1, 1)[:T], axis=1)
    right_min = np.min(_frame(lp[w:], w + 1, 1)[:T], axis=1)
    prom = ls - np.maximum(left_min, right_min)
    sp_thr = np.median(ls[active]) - 2.0
    loud_peaks = is_peak & active & (prom > 3.0)
    out[_IDX["loud_peak_rate"]] = loud_peaks.sum() / dur
    dl_on = np.diff(ls)[active[1:]] / HOP_S
    pos = dl_on[dl_on > 0]
    out[_IDX["loud_rise"]] = np.mean(pos) if len(pos) else 0.0

    # syllable nuclei: prominent intensity peaks above the speech median that are voiced
    vmask = np.zeros(T, dtype=bool)
    vmask[vidx] = True
    vdil = vmask.copy()
    vdil[1:] |= vmask[:-1]
    vdil[:-1] |= vmask[1:]
    nuclei = np.flatnonzero(is_peak & (ls > sp_thr) & (prom > 2.0) & vdil)
    # enforce >= 80 ms between nuclei
    kept: list[int] = []
    for i in nuclei:
        if not kept or i - kept[-1] >= 8:
            kept.append(i)
        elif ls[i] > ls[kept[-1]]:
            kept[-1] = i
    n_syl = len(kept)

    # ---- pauses -------------------------------------------------------------
    sp_runs = _runs(speech_mask)
    if sp_runs:
        first, last = sp_runs[0][0], sp_runs[-1][1]
        span = (last - first) * HOP_S
        gaps = [
            (b0 - a1) * HOP_S
            for (_, a1), (b0, _) in zip(sp_runs[:-1], sp_runs[1:])
            if (b0 - a1) * HOP_S >= MIN_PAUSE_S
        ]
    else:
        span, gaps = dur, []
    gaps_a = np.asarray(gaps)
    total_pause = float(gaps_a.sum()) if len(gaps_a) else 0.0
    out[_IDX["pause_rate"]] = len(gaps_a) / max(span, 0.1)
    out[_IDX["pause_mean"]] = gaps_a.mean() if len(gaps_a) else 0.0
    out[_IDX["pause_max"]] = gaps_a.max() if len(gaps_a) else 0.0
    out[_IDX["pause_ratio"]] = total_pause / max(span, 0.1)
    out[_IDX["syll_rate"]] = n_syl / max(span, 0.1)
    out[_IDX["artic_rate"]] = n_syl / max(span - total_pause, 0.1)
    vr = _runs(vmask)
    out[_IDX["voiced_seg_mean"]] = np.mean([(e - s) * HOP_S for s, e in vr]) if vr else 0.0

    # ---- spectral balance (300-3400 Hz) -------------------------------------
    lo = (freqs >= 300) & (freqs < 1000)
    hi = (freqs >= 1000) & (freqs <= 3400)
    h0 = (freqs >= 300) & (freqs < 2000)
    h1 = (freqs >= 2000) & (freqs <= 3400)
    eps = 1e-10
    sa = spec[active]
    alpha = 10 * np.log10((sa[:, lo].sum(1) + eps) / (sa[:, hi].sum(1) + eps))
    vsel = vmask[active]
    if vsel.any():
        out[_IDX["alpha_ratio"]] = alpha[vsel].mean()
        sv = sa[vsel]
        ham = 10 * np.log10((sv[:, h0].max(1) + eps) / (sv[:, h1].max(1) + eps))
        out[_IDX["hammarberg"]] = ham.mean()
        # spectral slope of the log spectrum in the band (dB per kHz), voiced frames
        ldb = 10 * np.log10(sv[:, band] + eps)
        fb_k = freqs[band] / 1000.0
        fc = fb_k - fb_k.mean()
        out[_IDX["spec_slope"]] = float(np.mean((ldb - ldb.mean(1, keepdims=True)) @ fc / (fc @ fc)))
    uv = ~vsel
    if uv.sum() >= 3:
        out[_IDX["alpha_ratio_uv"]] = alpha[uv].mean()
    else:
        out[_IDX["alpha_ratio_uv"]] = alpha.mean()
    sb = sa[:, band]
    fbnd = freqs[band]
    tot = sb.sum(1) + eps
    cen = (sb @ fbnd) / tot
    out[_IDX["centroid"]] = cen.mean()
    out[_IDX["centroid_std"]] = cen.std()
    out[_IDX["hf_ratio"]] = float(np.mean(10 * np.log10((sa[:, h1].sum(1) + eps) / tot)))
    mag = np.sqrt(sb)
    magn = mag / (mag.sum(1, keepdims=True) + eps)
    if len(magn) > 1:
        fl = np.sum(np.diff(magn, axis=0) ** 2, axis=1) * 100.0
        out[_IDX["flux"]] = fl.mean()
        out[_IDX["flux_std"]] = fl.std()
    fbm, dct = _mel_dct(spec.shape[1])
    logmel = np.log(sa @ fbm.T + 1e-8)
    mf = logmel @ dct.T  # (n, 4)
    out[_IDX["mfcc1"] : _IDX["mfcc4"] + 1] = mf.mean(0)
    out[_IDX["mfcc1_std"] : _IDX["mfcc4_std"] + 1] = mf.std(0)

    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------


class SpeakerBaseline:
    """Unlabelled statistics of one speaker within a call, shrunk toward the population.

    ``update(features)`` adds one utterance; ``normalise(features)`` returns
    ``(x - mu_s) / sd_s`` where the speaker mean and spread are blended with the
    population statistics (``pop_mean``, ``pop_std``) with weight ``n / (n + prior_n)``.
    With no utterances the result is simply the population z-score, so a caller who
    is upset from the first second is measured against other people, not against an
    upset baseline.  The classifier is fed both the population z-score and this
    speaker-relative value.
    """

    def __init__(
        self,
        pop_mean: np.ndarray,
        pop_std: np.ndarray,
        prior_n: float = 8.0,
        within_scale: np.ndarray | float = 1.0,
        emb_pop_mean: np.ndarray | None = None,
    ) -> None:
        self.pop_mean = np.asarray(pop_mean, dtype=np.float64)
        self.pop_std = np.maximum(np.asarray(pop_std, dtype=np.float64), 1e-6)
        # typical within-speaker spread (as a fraction of the population spread)
        self.within_scale = np.broadcast_to(np.asarray(within_scale, dtype=np.float64), self.pop_mean.shape)
        self.prior_n = float(prior_n)
        self.n = 0.0
        self._sum = np.zeros_like(self.pop_mean)
        self._sumsq = np.zeros_like(self.pop_mean)
        # optional utterance embedding (e.g. Whisper encoder): centred on a shrunk speaker mean
        self.emb_pop_mean = None if emb_pop_mean is None else np.asarray(emb_pop_mean, dtype=np.float64)
        self.emb_n = 0.0
        self._emb_sum = None if emb_pop_mean is None else np.zeros_like(self.emb_pop_mean)

    def update(self, features: np.ndarray, weight: float = 1.0, embedding: np.ndarray | None = None) -> None:
        """Add one utterance (or a batch of rows); ``embedding`` (same rows) is optional."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 2:
            embs = [None] * len(f) if embedding is None else np.atleast_2d(embedding)
            for row, e in zip(f, embs):
                self.update(row, weight, e)
            return
        if not np.all(np.isfinite(f)):
            return
        self.n += weight
        self._sum += weight * f
        self._sumsq += weight * f * f
        if embedding is not None and self._emb_sum is not None:
            self.emb_n += weight
            self._emb_sum += weight * np.asarray(embedding, dtype=np.float64)

    def center_embedding(self, embedding: np.ndarray) -> np.ndarray:
        """Embedding minus the speaker's mean embedding shrunk toward the population mean."""
        e = np.asarray(embedding, dtype=np.float64)
        if self.emb_pop_mean is None:
            return e.astype(np.float32)
        mean = self.emb_pop_mean
        if self.emb_n > 0:
            w = self.emb_n / (self.emb_n + self.prior_n)
            mean = w * (self._emb_sum / self.emb_n) + (1 - w) * self.emb_pop_mean
        return (e - mean).astype(np.float32)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Shrunk (mean, std) used by ``normalise``."""
        w = self.n / (self.n + self.prior_n)
        prior_sd = self.pop_std * self.within_scale
        if self.n <= 0:
            return self.pop_mean.copy(), prior_sd.copy()
        m = self._sum / self.n
        var = np.maximum(self._sumsq / self.n - m * m, 0.0)
        mean = w * m + (1 - w) * self.pop_mean
        # spread: pooled toward the typical within-speaker spread
        v = (self.n * var + self.prior_n * prior_sd**2) / (self.n + self.prior_n)
        return mean, np.sqrt(np.maximum(v, (0.1 * self.pop_std) ** 2))

    def normalise(self, features: np.ndarray) -> np.ndarray:
        mean, sd = self.stats()
        return ((np.asarray(features, dtype=np.float64) - mean) / sd).astype(np.float32)

    def to_dict(self) -> dict:
        return {"n": self.n, "sum": self._sum.tolist(), "sumsq": self._sumsq.tolist()}


def speaker_stats_table(groups: Iterable, feats: np.ndarray) -> dict:
    """Helper for offline use: per-group (mean, std) of feature rows."""
    groups = np.asarray(list(groups))
    res = {}
    for g in np.unique(groups):
        f = feats[groups == g]
        res[g] = (f.mean(0), f.std(0))
    return res
