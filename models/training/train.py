"""Train the emotion classifier: speaker-grouped CV for model selection, ONNX export.

``run(manifest, out, telephony_aug=True, ...)`` writes ``out`` (e.g. models/emotion.onnx)
and its JSON sidecar; with ``embedding=True`` it also writes the prosody-only model
``emotion_prosody.onnx`` beside it.  Feature extraction is cached under /tmp.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calltone.emotion.features import FEATURE_NAMES

from .baselines import PRIOR_N, PopStats, pop_stats, speaker_z
from .dataset import CLASSES, EMO_TO_CLASS, GRADES, Manifest, embeddings_for, features_for, load_manifest
from .export import export_onnx
from .metrics import fold_probs, report, speaker_folds

VERSION = "1.0.0"
TRAIN_VARIANTS_TEL = ["clean", "aug_tel", "aug_clean"]
TRAIN_VARIANTS_CLEAN = ["clean", "aug_clean"]


def make_model(kind: str, C: float = 1.0, seed: int = 0, pca: int | None = None):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    steps = [StandardScaler()]
    if pca:
        steps += [PCA(n_components=pca, random_state=seed), StandardScaler()]
    if kind == "lr":
        clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    elif kind == "svm":
        clf = SVC(C=C, kernel="rbf", gamma="scale", probability=True, class_weight="balanced", random_state=seed)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=C, max_iter=400, early_stopping=False, random_state=seed)
    else:
        raise ValueError(kind)
    return make_pipeline(*steps, clf)


@dataclass
class Config:
    kind: str = "svm"
    C: float = 1.0
    classes: list[str] = field(default_factory=lambda: list(CLASSES))  # which model classes to train
    use_embedding: bool = False
    emb_speaker_norm: bool = True  # minus the speaker's mean embedding, shrunk toward the population mean
    pca: int | None = None
    tel_aug: bool = True
    prior_n: float = PRIOR_N  # SpeakerBaseline shrinkage: utterances' worth of population prior
    baseline: str = "mixed"  # training baselines: "mixed" (clip + any of the speaker's clips) or "calls"

    def name(self) -> str:
        return f"{self.kind}-C{self.C}-prior{self.prior_n:g}-{'+'.join(self.classes)}-emb{int(self.use_embedding)}-pca{self.pca}-tel{int(self.tel_aug)}-baseline_{self.baseline}"


class Data:
    """All cached arrays for one or more manifests (each cached on its own: adding a contact centre's
    labelled calls to the corpora does not recompute the corpora's features)."""

    def __init__(self, m: Manifest | list[Manifest], variants: list[str], embedding: bool = False, progress: bool = True) -> None:
        parts = m if isinstance(m, list) else [m]
        rows = [r for p in parts for r in p.rows]

        def col(name: str) -> np.ndarray:
            return np.array([r.get(name, "") for r in rows])

        self.speaker, self.corpus, self.lang, self.emotion = col("speaker"), col("corpus"), col("lang"), col("emotion")
        self.cls = np.array([EMO_TO_CLASS.get(e, "other") for e in self.emotion])
        self.grade_idx = np.array([GRADES.index(g) if g in GRADES else -1 for g in col("grade")])
        self.X = {v: np.concatenate([features_for(p, v, progress=progress) for p in parts]) for v in variants}
        self.E = ({v: np.concatenate([embeddings_for(p, v, progress=progress) for p in parts]) for v in variants
                   if v in ("clean", "tel")} if embedding else {})


def _emb_variant(d: Data, variant: str) -> str:
    return variant if variant in d.E else ("tel" if "tel" in variant else "clean")


def design(d: Data, idx: np.ndarray, variant: str, ps: PopStats, cfg: Config, rng=None) -> np.ndarray:
    """[raw prosody ‖ speaker-relative prosody (‖ embedding, speaker-centred if cfg.emb_speaker_norm)]."""
    X = d.X[variant][idx]
    E = d.E[_emb_variant(d, variant)][idx] if cfg.use_embedding else None
    calm = (d.cls[idx] == "calm") if cfg.baseline == "calls" else None
    Z, EZ = speaker_z(X, d.speaker[idx], ps, rng, E=E if (E is not None and cfg.emb_speaker_norm) else None, calm=calm)
    parts = [X, Z]
    if cfg.use_embedding:
        parts.append(EZ if cfg.emb_speaker_norm else E)
    return np.concatenate(parts, axis=1).astype(np.float32)


def _design_sizes(d, idx, variant, ps, cfg, rng, k):
    X = d.X[variant][idx]
    E = d.E[_emb_variant(d, variant)][idx] if cfg.use_embedding else None
    Z, EZ = speaker_z(X, d.speaker[idx], ps, rng, sizes=[k], E=E if (E is not None and cfg.emb_speaker_norm) else None)
    parts = [X, Z] + ([EZ if cfg.emb_speaker_norm else E] if cfg.use_embedding else [])
    return np.concatenate(parts, axis=1).astype(np.float32)


def train_rows(d: Data, idx: np.ndarray, cfg: Config, seed: int = 0, ps: PopStats | None = None):
    """Training matrix: every variant of every training clip whose class is in cfg.classes.
    Speaker baselines come from random subsets of the speaker's clips (all emotions, no labels)."""
    rng = np.random.default_rng(seed)
    variants = TRAIN_VARIANTS_TEL if cfg.tel_aug else TRAIN_VARIANTS_CLEAN
    if cfg.use_embedding:
        variants = ["clean", "tel"] if cfg.tel_aug else ["clean"]
    if ps is None:
        E = None
        if cfg.use_embedding and cfg.emb_speaker_norm:
            E = np.concatenate([d.E[_emb_variant(d, v)][idx] for v in variants])
        ps = pop_stats(np.concatenate([d.X[v][idx] for v in variants]), np.concatenate([d.speaker[idx]] * len(variants)),
                       prior_n=cfg.prior_n, E=E)
    sel = np.isin(d.cls[idx], cfg.classes)
    y1 = np.array([cfg.classes.index(c) for c in d.cls[idx][sel]])
    Xs, ys = [], []
    for v in variants:
        Xs.append(design(d, idx, v, ps, cfg, rng)[sel])
        ys.append(y1)
    return np.concatenate(Xs), np.concatenate(ys), ps


GATE_POWERS = [0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
MAX_HAPPY_AS_ANGRY = 0.10


def apply_gate(P3: np.ndarray, g: np.ndarray, power: float) -> np.ndarray:
    """Move angry probability to calm by (1 - g**power), g = P(angry | angry or happy)."""
    p = np.array(P3, dtype=np.float64, copy=True)
    if power <= 0:
        return p
    moved = p[:, 2] * (1.0 - np.clip(g, 0, 1) ** power)
    p[:, 2] -= moved
    p[:, 0] += moved
    return p


def gate_config(cfg: Config) -> Config:
    return Config(kind=cfg.kind, C=cfg.C, classes=["angry", "happy"], use_embedding=cfg.use_embedding,
                  emb_speaker_norm=cfg.emb_speaker_norm, pca=cfg.pca, tel_aug=cfg.tel_aug, prior_n=cfg.prior_n)


def cross_validate(d: Data, cfg: Config, eval_variants=("clean", "tel"), n_folds: int = 5, verbose: bool = True,
                   gate: bool = True, test_baseline: int | None = None) -> dict:
    """Speaker-grouped CV. Test speakers' baselines use all their clips (no labels).

    Returns {"by_power": {power: {variant: report}}, "power": chosen, variant: report (chosen)}.
    The gate power is chosen as the smallest in GATE_POWERS whose happy->angry rate is
    <= MAX_HAPPY_AS_ANGRY on every eval variant (else the largest)."""
    folds = speaker_folds(d.speaker, d.corpus, n_folds)
    n = len(d.speaker)
    P = {v: np.zeros((n, 3)) for v in eval_variants}
    G = {v: np.ones(n) for v in eval_variants}
    t0 = time.time()
    gcfg = gate_config(cfg)
    for k, test in enumerate(folds):
        if len(test) == 0:  # fewer speakers than folds
            continue
        train = np.setdiff1d(np.arange(n), test)
        X, y, ps = train_rows(d, train, cfg, seed=k)
        model = make_model(cfg.kind, cfg.C, seed=k, pca=cfg.pca).fit(X, y)
        if gate:
            Xg, yg, _ = train_rows(d, train, gcfg, seed=k, ps=ps)
            gm = make_model(gcfg.kind, gcfg.C, seed=k, pca=gcfg.pca).fit(Xg, yg)
        for v in eval_variants:
            # baseline: all of the test speaker's clips, unlabelled (or, with test_baseline=k,
            # the clip itself plus k-1 random other clips of that speaker: early in a call)
            trng = None if test_baseline is None else np.random.default_rng(1000 + k)
            Xt = design(d, test, v, ps, cfg, trng) if trng is None else _design_sizes(d, test, v, ps, cfg, trng, test_baseline)
            P[v][test] = fold_probs(model.predict_proba(Xt), cfg.classes)
            if gate:
                G[v][test] = gm.predict_proba(Xt)[:, 0]
    powers = GATE_POWERS if gate else [0.0]
    by_power = {
        a: {v: report(apply_gate(P[v], G[v], a), d.emotion, d.grade_idx, d.corpus, d.lang) for v in eval_variants}
        for a in powers
    }
    ok = [a for a in powers if all(r["happy_as_angry"] <= MAX_HAPPY_AS_ANGRY for r in by_power[a].values())]
    chosen = min(ok) if ok else max(powers)
    res = {"power": chosen, "by_power": {str(a): r for a, r in by_power.items()}}
    res.update(by_power[chosen])
    if verbose:
        for a in powers:
            s = " | ".join(
                f"{v}: UAR {r['uar']:.3f} "
                + " ".join(f"{k}={x:.3f}" for k, x in r["per_language"].items())
                + f" h->a {r['happy_as_angry']:.3f}"
                for v, r in by_power[a].items()
            )
            print(f"{cfg.name():50s} gate^{a:<3} {s}{'  <== chosen' if a == chosen else ''}", flush=True)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    return res


def fit_and_export(d: Data, cfg: Config, out: Path, cv: dict, extra_meta: dict | None = None,
                   idx: np.ndarray | None = None):
    """Fit on the clips ``idx`` (default: all) and export ONNX + sidecar to ``out``."""
    idx = np.arange(len(d.speaker)) if idx is None else idx
    X, y, ps = train_rows(d, idx, cfg, seed=123)
    model = make_model(cfg.kind, cfg.C, seed=0, pca=cfg.pca).fit(X, y)
    power = float(cv.get("power", 0.0))
    gate_model = None
    if power > 0:
        gcfg = gate_config(cfg)
        Xg, yg, _ = train_rows(d, idx, gcfg, seed=123, ps=ps)
        gate_model = make_model(gcfg.kind, gcfg.C, seed=0, pca=gcfg.pca).fit(Xg, yg)
    out.parent.mkdir(parents=True, exist_ok=True)
    outs = export_onnx(model, X.shape[1], out, gate_model)
    F = len(FEATURE_NAMES)
    layout = [
        {"name": "prosody_raw", "start": 0, "size": F},
        {"name": "prosody_speaker_z", "start": F, "size": F},
    ]
    if cfg.use_embedding:
        layout.append(
            {
                "name": "whisper_embedding",
                "start": 2 * F,
                "size": X.shape[1] - 2 * F,
                "desc": "faster-whisper multilingual base encoder output (int8 CPU) on the clip padded to a 10 s "
                "window (1000 log-mel frames), mean ‖ std over the 20 ms encoder frames that cover the clip; "
                "minus the speaker's running mean embedding shrunk toward emb_pop_mean "
                "(weight n/(n+prior_n)) when speaker_norm is true; SpeakerBaseline.center_embedding does this",
                "speaker_norm": cfg.emb_speaker_norm,
            }
        )
    meta = {
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": list(GRADES),
        "classes": list(cfg.classes),
        "class_to_grade": {c: (c if c in GRADES else "calm") for c in cfg.classes},
        "feature_names": list(FEATURE_NAMES),
        "input_layout": layout,
        "n_inputs": int(X.shape[1]),
        "input_name": "input",
        "prob_output": outs["prob"],
        "gate": (
            {"output": outs["gate"], "power": power, "classes": ["angry", "happy"],
             "rule": "p_angry_moved_to_calm = p_angry * (1 - gate_p_angry ** power)"}
            if gate_model is not None else None
        ),
        "pop_mean": ps.mean.tolist(),
        "pop_std": ps.std.tolist(),
        "within_scale": ps.within_scale.tolist(),
        "prior_n": ps.prior_n,
        "emb_pop_mean": None if ps.emb_mean is None else ps.emb_mean.tolist(),
        "model": cfg.name(),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "train_rows": int(len(y)),
        "training_data": {
            "clips": int(len(idx)),
            "speakers": sorted(set(d.speaker[idx].tolist())),
            "labelled_call_clips": int(np.sum(d.corpus[idx] == "calls")),
            "corpora": {
                "emodb": "EmoDB, German, 10 speakers; TU Berlin, for research",
                "ravdess": "RAVDESS speech, English, actors 01-18; CC BY-NC-SA 4.0 (non-commercial, share-alike)",
                "casia": "CASIA Chinese emotional speech public subset, Mandarin, 2 speakers; for research, informal provenance",
            },
            "augmentation": "G.711 telephone (8 kHz, 300-3400 Hz band-pass, mu-law) + noise + gain" if cfg.tel_aug else "noise + gain",
        },
        "cv_protocol": "speaker-grouped 5-fold (each corpus's speakers spread over folds; CASIA's 2 speakers = "
        "leave-one-speaker-out); test speakers adapted with all their clips, no labels; 'clean' = original 16 kHz, "
        "'tel' = G.711 simulation; gate power chosen on the same CV (smallest with happy->angry <= 10 %)",
        "cv": cv,
    }
    if extra_meta:
        meta.update(extra_meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return (model, gate_model), meta


def run(
    manifest: Path | Manifest | list[Path | Manifest],
    out: Path,
    telephony_aug: bool = True,
    embedding: bool = True,
    kind: str = "svm",
    C: float = 1.0,
    emb_kind: str = "lr",
    emb_C: float = 0.01,
    classes: list[str] | None = None,
    select: bool = False,
    verbose: bool = True,
) -> dict:
    """Train + cross-validate + export. Returns the sidecar dict of the main model.

    ``manifest``: one clip manifest or several (e.g. the corpora plus
    :func:`calltone.models.training.calls.call_manifest` of a contact centre's labelled calls).

    Prosody-only model: ``kind``/``C`` (default RBF-SVM, C=1). With ``embedding=True`` (default)
    the main model ``out`` takes [prosody ‖ Whisper embedding] (``emb_kind``/``emb_C``, default
    logistic regression C=0.01) and the prosody-only model goes to ``<out dir>/emotion_prosody.onnx``;
    with ``embedding=False`` the prosody model is written to ``out``.
    Both get an angry-vs-happy gate whose strength is chosen by the same speaker-grouped CV
    (smallest power keeping happiness/surprise graded angry <= 10 %).
    ``select=True`` tries a small grid of (kind, C) under the same CV (mean clean+telephone UAR).
    Features / embeddings are cached under /tmp (CALLTONE_FEATURE_CACHE).
    """
    out = Path(out)
    m = [load_manifest(Path(p)) if not isinstance(p, Manifest) else p for p in (manifest if isinstance(manifest, list) else [manifest])]
    variants = ["clean", "tel"] + (["aug_tel", "aug_clean"] if telephony_aug else ["aug_clean"])
    d = Data(m, variants, embedding=embedding, progress=verbose)
    base = dict(classes=classes or list(GRADES), tel_aug=telephony_aug)

    def pick(cands: list[Config]) -> tuple[Config, dict]:
        best, best_cv, best_s = None, None, -1.0
        for c in cands:
            r = cross_validate(d, c, verbose=verbose)
            s = (r["clean"]["uar"] + r["tel"]["uar"]) / 2
            if s > best_s:
                best, best_cv, best_s = c, r, s
        return best, best_cv

    if select:
        grid = [Config(kind="svm", C=c, **base) for c in (1.0, 3.0)] + [Config(kind="lr", C=0.3, **base)]
    else:
        grid = [Config(kind=kind, C=C, **base)]
    cfg_p, cv_p = pick(grid)
    if not embedding:
        _, meta = fit_and_export(d, cfg_p, out, cv_p)
        return meta
    if select:
        emb_grid = [Config(kind="lr", C=c, use_embedding=True, **base) for c in (0.01, 0.03)]
    else:
        emb_grid = [Config(kind=emb_kind, C=emb_C, use_embedding=True, **base)]
    cfg_e, cv_e = pick(emb_grid)
    prosody_out = out.parent / "emotion_prosody.onnx"
    fit_and_export(d, cfg_p, prosody_out, cv_p)
    _, meta = fit_and_export(d, cfg_e, out, cv_e, {"prosody_model": prosody_out.name})
    return meta


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", default="models/emotion.onnx")
    ap.add_argument("--no-telephony-aug", action="store_true")
    ap.add_argument("--no-embedding", action="store_true")
    ap.add_argument("--select", action="store_true")
    a = ap.parse_args()
    r = run(Path(a.manifest), Path(a.out), telephony_aug=not a.no_telephony_aug, embedding=not a.no_embedding, select=a.select)
    print(json.dumps(r["cv"], indent=1))
