"""One settings object for the whole process.

Values come, highest priority first, from keyword arguments, environment variables
(``CALLTONE_`` prefix, ``__`` between nested names, e.g. ``CALLTONE_ASR__MODEL=tiny.en``),
then a TOML file (``CALLTONE_CONFIG=/etc/calltone.toml`` or ``--config``), then the
defaults below, which run on a 2-core laptop.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

Language = Literal["zh", "en", "auto"]


class AsrSettings(BaseModel):
    model: str = Field("base", description="'base', 'tiny.en' or a CTranslate2 Whisper directory")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where Whisper runs: 'cpu', or 'cuda' on a node with an "
                                           "NVIDIA GPU (float16, larger batches; docs/asr.md)")
    compute_type: str = Field("auto", description="CTranslate2 compute type; 'auto': int8 on cpu, float16 on cuda")
    workers: int = Field(0, ge=0, description="ASR worker processes, each with its own Whisper model and cpu_threads "
                         "threads, fed by one queue (0 = one per core on cpu, one on cuda; 1 = a thread in this process)")
    cpu_threads: int = Field(1, ge=0, description="threads of each ASR worker (0 = all cores)")
    language: Language = "auto"
    languages: list[str] = Field(["zh", "en"], description="with language 'auto', what detection chooses among: the "
                                 "most likely of these (a short or noisy utterance is otherwise now and then heard as "
                                 "Vietnamese or German and garbled); [] = any language Whisper knows")
    live_beam_size: int = Field(1, description="beam for live finals (partials are always greedy); 5: Mandarin "
                                "CER 14.7 -> 13.3 % clean, 23.8 -> 19.2 % at 8 kHz for ~13 % more CPU per final (docs/asr.md)")
    offline_beam_size: int = Field(1, description="beam for batch scoring and `calltone transcribe`")
    window_s: float = Field(10.0, description="encoder window; utterances longer than this use 20 or 30 s")
    partial_interval_s: float = Field(1.0, description="how often a partial hypothesis is refreshed while someone speaks")
    max_batch: int = Field(0, ge=0, description="requests decoded together in one encoder/decoder pass (0 = 8 on cpu, "
                           "32 on cuda)")
    partial_lag_drop_s: float = Field(1.5, description="when the ASR queue is this far behind, partials are skipped")
    batch_pack_s: float = Field(5.0, ge=0.0, description="batch scoring: the agent's short utterances share one decode, "
                                "up to this many seconds of audio (speech/packing.py; docs/batch.md); 0 = one decode each")
    partial_roles: list[str] = Field(["customer"], description="channels that get partial transcripts (the agent knows what they said; their finals still come)")
    word_timestamps: bool = True
    decode_lead_s: float = Field(0.3, ge=0.0, description="a final is decoded from this much audio before its VAD "
                                 "onset (not before the previous utterance), which the VAD often marks late on "
                                 "8 kHz speech; words start at the onset. Not on channels whose voice is graded: the lead "
                                 "shifts the voice embedding and lowered angry grades on a held-out caller (docs/asr.md)")
    hotwords: list[str] = Field(default_factory=list, description="call-centre vocabulary (product, plan or place "
                                "names) every decode is conditioned on, as faster-whisper's hotwords; they are spelt "
                                "as given where said (docs/asr.md); off by default")
    prompts: dict[str, str] = Field(default_factory=dict, description="per language, the text an utterance with no "
                                    "previous final is conditioned on, e.g. {zh = '...'}; none by default: a "
                                    "customer-service sentence measured worse on Mandarin (docs/asr.md)")


class VadSettings(BaseModel):
    threshold: float = 0.5
    min_silence_ms: int = Field(500, description="silence that ends an utterance")
    min_speech_ms: int = 200
    speech_pad_ms: int = 150
    max_utterance_s: float = Field(14.0, description="a longer utterance is cut at its quietest point")


class EmotionSettings(BaseModel):
    score_agent: bool = Field(False, description="grade the agent's emotion too (opt-in; the customer is always graded)")
    model_dir: Path | None = Field(None, description="folder with emotion.onnx and emotion_prosody.onnx (+ .json sidecars), "
                                   "e.g. one written by `calltone train`; default: the shipped models")
    lexicon_extra: list[Path] = Field(default_factory=list, description="extra phrase files (TOML) for text cues")
    tracking_config: Path | None = None
    escalation_config: Path | None = None
    guidance_extra: Path | None = None
    score_speech_so_far: bool = Field(False, description="also score the voice about once a second during an "
                                      "utterance (off: each whole utterance is scored once; on held-out callers the "
                                      "once-a-second scores of partial speech lowered segment UAR by 0.01-0.03, "
                                      "bench/heldout.py)")


class PrivacySettings(BaseModel):
    mask_pii: bool = Field(True, description="mask card/phone/ID numbers and e-mail in transcripts before storage")
    keep_audio: bool = Field(False, description="store raw call audio (off by default)")
    retention_days: int = Field(30, description="calls older than this are purged (0 = keep forever)")
    purge_interval_s: float = Field(3600.0, gt=0, description="how often the retention purge runs (with server.bus_url: "
                                    "by one node per interval)")


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    recordings_dir: Path | None = Field(None, description="POST /v1/jobs may name server-side recordings under this folder (off when unset)")
    max_upload_mb: int = Field(500, description="largest recording accepted by POST /v1/jobs, per file")
    data_dir: Path | None = Field(None, description="SQLite database and kept audio; default <cache_dir>/data")
    database_url: str | None = Field(None, pattern=r"^(postgres(ql)?://|sqlite:///)", description="the store shared by "
                                     "many nodes, e.g. 'postgresql://calltone@db:5432/calltone' (needs the scaleout "
                                     "extra); unset: SQLite in <data_dir>/calltone.db (docs/deploy.md)")
    tokens: dict[str, str] = Field(default_factory=dict, description="bearer token -> role[:agent_id], e.g. {'s3cr3t': 'agent:a42'}")
    max_frame_bytes: int = Field(64_000, description="largest binary audio frame accepted")
    max_calls: int | None = Field(None, ge=0, description="live calls this node takes before new ones are refused "
                                  "(at_capacity, close 1013; /readyz 503); unset: 6 per ASR worker "
                                  "(server/admission.py); 0: no limit")
    max_asr_lag_s: float = Field(3.0, ge=0, description="new calls are refused too (asr_lagging) while the ASR "
                                 "queue's oldest job has waited this long; 0: off")
    subscriber_queue: int = Field(256, description="events buffered per subscriber before coalescing")
    bus_url: str = Field("", description="Redis Streams bus shared by many nodes, e.g. 'redis://127.0.0.1:6379/0' "
                         "(the `scaleout` extra); unset: the in-process bus")
    bus_ttl_s: float = Field(300.0, gt=0, description="Redis bus: seconds a call's stream is kept after call.ended")
    node_heartbeat_s: float = Field(2.0, gt=0, description="with bus_url: how often a node refreshes its heartbeat and "
                                    "the leases of its calls in Redis (docs/deploy.md, 'Many nodes: call ownership')")
    node_ttl_s: float = Field(6.0, gt=0, description="with bus_url: a node without a heartbeat this long is dead: its "
                              "calls may be resumed on any node and are marked interrupted (at least 2 x node_heartbeat_s)")
    webhooks: list[str] = Field(default_factory=list, description="URLs that receive escalation alerts (JSON POST)")
    webhook_secret: str = Field("", description="HMAC-SHA256 key for the X-Calltone-Signature header")
    webhook_timeout_s: float = Field(5.0, gt=0, description="seconds one webhook attempt waits for an answer")
    webhook_claim_idle_s: float = Field(30.0, gt=0, description="with bus_url: a delivery its node has not touched for "
                                        "this long (the node died) is taken over by another node (docs/deploy.md)")
    allowed_origins: list[str] = Field(default_factory=list, description="browser origins besides the service's own that may "
                                       "open websockets and send POSTs, e.g. ['https://crm.example.com'] (docs/security.md)")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses/CIDRs of reverse proxies whose "
                                       "X-Forwarded-Proto/-For are believed, e.g. ['127.0.0.1'] (docs/security.md)")
    audiohook_keys: dict[str, str] = Field(default_factory=dict, description="Genesys AudioHook: API key -> base64 client "
                                           "secret; WS /v1/audiohook refuses every upgrade while empty")
    twilio_auth_token: str = Field("", description="Twilio account auth token: WS /v1/twilio then requires a valid "
                                   "X-Twilio-Signature instead of a bearer token in the TwiML parameters")
    public_url: str = Field("", description="the service's public base URL as platforms call it, e.g. "
                            "'wss://calltone.example.com' (Twilio signs that URL); default: rebuilt from the request")


AnomalyKpi = Literal["angry_call_share", "escalation_rate"]  # KPIs that are shares of calls (server/anomaly.py)


class AnomalySettings(BaseModel):
    """ops.anomaly alerts: a queue's or agent's KPI this hour against the same hour of the weeks before (docs/ops.md)."""

    enabled: bool = True
    interval_s: float = Field(300.0, gt=0, description="how often the current and the previous hour are judged (by "
                              "one node: the first to take the interval's turn in the store)")
    kpis: list[AnomalyKpi] = Field(["angry_call_share", "escalation_rate"], description="the KPIs judged")
    scopes: list[Literal["queue", "agent"]] = Field(["queue", "agent"], description="judged per queue and per agent")
    baseline_weeks: int = Field(4, ge=1, le=12, description="the baseline: the same hour of the same weekday, this "
                                "many weeks back")
    min_calls: int = Field(10, ge=1, description="calls the hour needs before it can alarm (one call never does)")
    min_baseline_calls: int = Field(20, ge=2, description="calls the baseline needs")
    min_increase: float = Field(0.15, gt=0, le=1, description="the share must exceed the baseline by at least this "
                                "much (0.15: 15 percentage points)")
    min_z: float = Field(3.0, gt=0, description="and by at least this many standard errors of the baseline share "
                         "over the hour's calls")


class BatchSettings(BaseModel):
    engine: Literal["local", "ray"] = Field("local", description="where `calltone score` and POST /v1/jobs score: "
                                            "'local' (worker processes / the server's own runtime) or 'ray' (Ray actors; "
                                            "the `scaleout` extra; docs/batch.md)")
    ray_address: str = Field("", description="the Ray cluster, e.g. '10.0.0.5:6379'; empty: RAY_ADDRESS, else the "
                             "cluster `ray start` made on this machine, else a new local one")
    ray_workers: int | None = Field(None, ge=1, description="Ray actors per job, each one CPU with its own models "
                                    "(default: the cluster's CPUs, at most one per file)")
    reports_dir: Path | None = Field(None, description="POST /v1/jobs: the folder of each job's reports and uploads, "
                                     "shared by every node (default <data_dir>/jobs)")
    lease_s: float = Field(30.0, gt=0, description="seconds a node's claim on a running job lasts (renewed every "
                           "third of it); a job whose claim ran out is resumed by another node")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLTONE_", env_nested_delimiter="__", extra="ignore")

    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "calltone")
    blas_threads: int = Field(1, ge=0, description="threads of numpy's BLAS (OpenBLAS) per process; 1 because the CPU pool "
                              "already runs calls in parallel and idle BLAS threads spin (0 = the library's default)")
    asr: AsrSettings = AsrSettings()
    vad: VadSettings = VadSettings()
    emotion: EmotionSettings = EmotionSettings()
    privacy: PrivacySettings = PrivacySettings()
    server: ServerSettings = ServerSettings()
    batch: BatchSettings = BatchSettings()
    anomaly: AnomalySettings = AnomalySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CALLTONE_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"CALLTONE_CONFIG points to {path}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
