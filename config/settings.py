"""Settings: the TOML file, overridden by VIDROP_* environment variables, built once at start.

This is the only module that reads the environment. Everything else receives a `Settings`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from vidrop.config.errors import ConfigError
from vidrop.config.request import GenerationFields, Preset
from vidrop.config.vocabulary import DEFAULT_X264_PRESET, FAMILY_NAMES, X264_PRESETS, MemoryMode

CONFIG_ENV_VAR = "VIDROP_CONFIG"
# Where a Debian operator looks: the system's file (install-systemd writes it), then the user's own.
SYSTEM_CONFIG_FILE = Path("/etc/vidrop/vidrop.toml")
SYSTEM_STATE_DIR = Path("/var/lib/vidrop")  # the state of the system's settings, where they leave it unset
SHIPPED_SETTINGS = "vidrop.toml"  # package data of vidrop.config: every setting, commented, with its default
# Paths a settings file may give relative to itself; under systemd the state follows $STATE_DIRECTORY.
FILE_RELATIVE_PATHS = ("inbox", "outbox", "state_dir", "intake.done_dir", "intake.failed_dir")
ENV_PREFIX = "VIDROP_"
ENV_NESTED_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The name of `pipeline.model` when it is a folder or a model id rather than a name from `pipeline.models`.
DEFAULT_MODEL_NAME = "default"


class LoraSettings(_Section):
    """One LoRA on offer: its file or folder, the families and models it fits, the weights it allows."""

    path: Path = Field(..., description="a local .safetensors file, or a folder holding one")
    families: list[Literal[FAMILY_NAMES]] = Field(default_factory=list, description="families it fits; []: any")
    models: list[str] = Field(default_factory=list, description="model names it fits; []: any")
    weight_range: tuple[float, float] = Field((0.0, 2.0), description="the weights a request may ask for")

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path) -> Path:
        path = path.expanduser()
        if not path.exists():
            raise ValueError(f"LoRA file {path} does not exist")
        if path.is_file() and path.suffix != ".safetensors":
            raise ValueError(f"LoRA file {path} is not a .safetensors file")
        return path


COMPILE_LEVERS = Literal["auto", "off", "regional", "full"]
CACHE_LEVERS = Literal["off", "faster", "pab", "first_block", "taylorseer", "mag"]
QUANTIZE_LEVERS = Literal["off", "fp8"]


class SpeedLeverSettings(_Section):
    """The speed levers for a model (see pipeline/speed.py and the README's Speed section)."""

    compile: COMPILE_LEVERS = Field(
        "auto", description="auto: regional on a CUDA GPU where the denoiser has repeated blocks, else off"
    )
    attention: str = Field("auto", description="auto | native | a diffusers attention backend name")
    cache: CACHE_LEVERS = "off"
    quantize: QUANTIZE_LEVERS = "off"
    preset_cache: dict[str, CACHE_LEVERS] = Field(
        default_factory=lambda: {"fast": "pab"},
        description="the cache a preset's jobs run with where the family has it and `cache` is off",
    )


class SpeedOverrideSettings(_Section):
    """`[pipeline.speed.models.NAME]`: the levers one model sets differently; unset keys are the section's."""

    compile: COMPILE_LEVERS | None = None
    attention: str | None = None
    cache: CACHE_LEVERS | None = None
    quantize: QUANTIZE_LEVERS | None = None
    preset_cache: dict[str, CACHE_LEVERS] | None = None


class SpeedSettings(SpeedLeverSettings):
    """`[pipeline.speed]`: levers for every model, with per-model overrides in `[pipeline.speed.models.NAME]`."""

    models: dict[str, SpeedOverrideSettings] = Field(default_factory=dict)

    def for_model(self, name: str) -> SpeedLeverSettings:
        """The levers a model runs with: what its override sets, else the section's own values."""
        levers = self.model_dump(exclude={"models"})
        override = self.models.get(name)
        if override is not None:
            levers.update({key: value for key, value in override.model_dump().items() if value is not None})
        return SpeedLeverSettings(**levers)


class PresetSettings(GenerationFields):
    """An operator's own values for a preset (fast, standard, high), for the families or models it names:
    steps, guidance, size, frames and LoRAs (a step-distilled LoRA at 4 steps and guidance 1, say)."""

    families: list[Literal[FAMILY_NAMES]] = Field(default_factory=list, description="families it is for; []: any")
    models: list[str] = Field(default_factory=list, description="model names it is for; []: any")

    @model_validator(mode="after")
    def _no_prompt_or_preset(self) -> PresetSettings:
        if self.preset is not None or self.prompt is not None:
            raise ValueError("a preset sets generation fields, not a prompt or another preset")
        return self

    def fits(self, family: str, model: str) -> bool:
        """Whether it is for this family and model name."""
        return (not self.families or family in self.families) and (not self.models or model in self.models)

    def fields(self) -> dict[str, Any]:
        """The generation fields it sets (what a request's preset adds under the request's own fields)."""
        return self.model_dump(exclude_none=True, exclude={"families", "models", "preset", "prompt"})


class PipelineSettings(_Section):
    """Which models run, where, and how images are fitted to them."""

    model: str = Field(
        # Wan 2.2 TI2V-5B: current (2025), image and text in one checkpoint, fits a 24 GB GPU with offload.
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        description="the model used when a request names none: a name from `models`, or a local directory or model id",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description='the models a sidecar may pick with "model": name → local directory or model id',
    )
    switch_after_seconds: float = Field(
        300.0,
        ge=0,
        description="jobs for a model already loaded go first, unless a job for another model "
        "(of the same priority) has waited this long",
    )
    family: Literal[("auto", *FAMILY_NAMES)] = "auto"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    fit: Literal["crop", "pad"] = "crop"
    offline: bool = Field(False, description="never contact the hub (also on when HF_HUB_OFFLINE=1)")
    loras: dict[str, LoraSettings] = Field(
        default_factory=dict,
        description='LoRAs a request may ask for with "loras": name → a path, '
        "or {path, families, models, weight_range}",
    )
    presets: dict[Preset, list[PresetSettings]] = Field(
        default_factory=dict,
        description="the operator's own presets: name → a table (or several, each for its families or models) "
        "of steps, guidance_scale, size, frames and loras, over the family's preset",
    )

    @field_validator("presets", mode="before")
    @classmethod
    def _preset_lists(cls, presets: Any) -> Any:
        if isinstance(presets, dict):
            return {name: [value] if isinstance(value, dict) else value for name, value in presets.items()}
        return presets

    @model_validator(mode="after")
    def _preset_loras_offered(self) -> PipelineSettings:
        """A preset naming a LoRA that is not offered would fail every job asking for it: refuse the start."""
        for name, entries in self.presets.items():
            for entry in entries:
                for lora in entry.loras or ():
                    offered = self.loras.get(lora.name)
                    if offered is None:
                        raise ValueError(
                            f"preset {name!r} names the LoRA {lora.name!r}, which pipeline.loras does not offer "
                            f"(offered: {', '.join(self.loras) or 'none'})"
                        )
                    low, high = offered.weight_range
                    if not low <= lora.weight <= high:
                        raise ValueError(
                            f"preset {name!r} asks for the LoRA {lora.name!r} at weight {lora.weight}, "
                            f"outside its weight_range {low}..{high}"
                        )
        return self

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_paths(cls, loras: Any) -> Any:
        if isinstance(loras, dict):
            return {name: {"path": value} if isinstance(value, str) else value for name, value in loras.items()}
        return loras

    speed: SpeedSettings = SpeedSettings()

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, str]) -> dict[str, str]:
        for name, source in models.items():
            if not re.match(MODEL_NAME_PATTERN, name):
                raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-' (at most 64)")
            if not source:
                raise ValueError(f"model {name!r} needs a local directory or model id")
        return models

    @property
    def default_model_name(self) -> str:
        """The name of the model used when a request names none."""
        return self.model if self.model in self.models else DEFAULT_MODEL_NAME

    def family_of(self, name: str) -> str:
        """The family setting for a model on offer: `family` applies to `model` given as a folder or id;
        models named in `models` are always read from their model_index.json."""
        return self.family if name == self.default_model_name and name not in self.models else "auto"

    def offered_models(self) -> dict[str, str]:
        """Every model a request may name → its folder or model id; the default one first."""
        if self.model in self.models:
            return {self.model: self.models[self.model], **self.models}
        if DEFAULT_MODEL_NAME in self.models:
            raise ValueError(
                f"pipeline.model is a folder or model id, so the name {DEFAULT_MODEL_NAME!r} is "
                "taken by it; give the entry in pipeline.models another name"
            )
        return {DEFAULT_MODEL_NAME: self.model, **self.models}


class GenerationDefaults(GenerationFields):
    """Generation parameters used when neither a sidecar nor the family says otherwise (unset format: the
    family's, AnimateDiff's gif)."""


class LimitSettings(_Section):
    """Upper bounds on what one sidecar may ask for; unset means the family's own maximum."""

    max_width: int | None = Field(None, ge=8)
    max_height: int | None = Field(None, ge=8)
    max_frames: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_sidecar_bytes: int = Field(64 * 1024, ge=1024)
    max_image_pixels: int = Field(64_000_000, ge=1)
    max_image_bytes: int = Field(512 * 1024 * 1024, ge=1024)


DEFAULT_IGNORE = (
    ".*",  # rsync's .name.XXXXXX, .DS_Store, ._AppleDouble, .syncthing.*.tmp, .goutputstream-*, .~lock.*
    "~syncthing~*",
    "*~",
    "~$*",
    "*.part",
    "*.crdownload",
    "*.tmp",
    "*.swp",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "$RECYCLE.BIN",
    "System Volume Information",
)


class IntakeSettings(_Section):
    """How files in the inbox are noticed, judged complete and paired."""

    watch: Literal["auto", "events", "polling"] = Field(
        "auto", description="auto: inotify events on local disks, polling on network mounts (NFS, SMB, FUSE)"
    )
    poll_seconds: float = Field(5.0, gt=0, description="how often the inbox is scanned when polling")
    reconcile_seconds: float = Field(30.0, gt=0, description="full reconcile scan interval, always on (jittered)")
    reconcile_cpu_share: float = Field(
        0.005,
        gt=0,
        le=1,
        description="the most of one core the full reconcile may use: on a large inbox it runs "
        "less often than reconcile_seconds (a 0.8 s scan: every 160 s)",
    )
    settle_seconds: float = Field(2.0, ge=0, description="a file must stay unchanged this long (local disks)")
    network_settle_seconds: float = Field(
        10.0, ge=0, description="the same on network mounts, where attributes are also re-read after open()"
    )
    decode_grace_seconds: float = Field(
        60.0, ge=0, description="a file that does not decode or looks unfinished waits until seen unchanged this long"
    )
    pairing_seconds: float = Field(30.0, ge=0, description="how long an image waits for its sidecar")
    tick_seconds: float = Field(0.5, gt=0, le=10, description="main loop tick")
    ignore: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE),
        description="file and folder names never taken (shell patterns, case-insensitive)",
    )
    on_success: Literal["keep", "move", "delete"] = "keep"
    on_failure: Literal["keep", "move"] = "keep"
    done_dir: Path = Field(Path("done"), description="where on_success = move puts inputs, mirroring the tree")
    failed_dir: Path = Field(Path("failed"), description="where on_failure = move puts inputs")


class HookSettings(_Section):
    """What to tell the systems around vidrop when a job is done or failed."""

    command: list[str] = Field(default_factory=list, description="argv to run; the manifest on its stdin")
    urls: list[str] = Field(default_factory=list, description="webhooks: the manifest is POSTed as JSON")
    events: list[Literal["done", "failed"]] = ["done", "failed"]
    timeout_seconds: float = Field(10.0, gt=0, description="per attempt")
    retries: int = Field(3, ge=0, description="attempts after the first")
    backoff_seconds: float = Field(2.0, ge=0, description="wait before the first retry; doubled each time")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="how long a stopping daemon keeps delivering")

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"hook url must start with http:// or https://, not {url!r}")
        return urls

    @property
    def is_configured(self) -> bool:
        """Whether there is anything to call."""
        return bool(self.command or self.urls)


class RecoverySettings(_Section):
    """Leases for a fleet of instances, and how long to wait for an outbox or a ledger that is unavailable."""

    lease_seconds: float = Field(
        30.0, ge=1, description="a claimed job is another instance's after this long without a heartbeat"
    )
    outbox_retry_seconds: float = Field(
        2.0, gt=0, description="first wait before trying an unavailable outbox again; doubles each time"
    )
    outbox_retry_max_seconds: float = Field(120.0, gt=0, description="longest wait between two tries")
    max_attempts: int = Field(
        3,
        ge=1,
        description="a job whose process died or lost its lease this many times "
        "is failed (set aside) instead of run again; `vidrop retry` "
        "queues it once more",
    )
    ledger_retry_seconds: float = Field(
        2.0,
        gt=0,
        description="first wait before trying an unavailable ledger (full disk, lock, database down) again; doubles",
    )
    ledger_retry_max_seconds: float = Field(60.0, gt=0, description="longest wait between two tries of the ledger")
    ledger_busy_seconds: float = Field(
        10.0,
        gt=0,
        description="how long one SQLite statement waits for another "
        "process's lock before the ledger counts as unavailable",
    )


class MemorySettings(_Section):
    """How vidrop shares the device: admission, waiting, recovery, idle unload, drift restarts."""

    mode: Literal[("auto", *(mode.value for mode in MemoryMode))] = Field(
        "auto", description="auto picks the fastest mode that fits; a name forces that mode"
    )
    reserve_gb: float = Field(1.0, ge=0, description="free memory left for other programs")
    max_wait_seconds: float = Field(1800.0, ge=0, description="a job waiting for memory longer than this fails")
    wait_poll_seconds: float = Field(5.0, gt=0, description="first pause between memory checks while waiting")
    wait_poll_max_seconds: float = Field(60.0, gt=0, description="longest pause between memory checks")
    idle_unload_seconds: float = Field(600.0, ge=0, description="unload the model after this long idle; 0 = never")
    drift_restart_gb: float = Field(
        2.0, ge=0, description="restart the worker when usage after a job grows by more than this; 0 = never"
    )
    warmup_jobs: int = Field(3, ge=1, description="jobs before the usage baseline is taken")
    max_resident_models: int = Field(
        0,
        ge=0,
        description="models kept loaded at once, the least recently used unloaded first; 0 = as many as memory allows",
    )
    cuda_alloc_conf: str = Field("expandable_segments:True", description="PYTORCH_CUDA_ALLOC_CONF unless already set")

    @property
    def forced_mode(self) -> MemoryMode | None:
        """The mode every job runs in, or None where auto picks one per job."""
        return None if self.mode == "auto" else MemoryMode(self.mode)


class GallerySettings(_Section):
    """The pages and status files written into the outbox for people on the share."""

    enabled: bool = Field(True, description="write index.html, _status.json and _STATUS.txt into the outbox")
    page_size: int = Field(50, ge=1, le=1000, description="cards per page")
    refresh_seconds: int = Field(5, ge=1, le=3600, description="how often a page with pending work reloads itself")


class OutputSettings(_Section):
    """How the videos are encoded."""

    x264_preset: Literal[X264_PRESETS] = Field(
        DEFAULT_X264_PRESET,
        description="libx264 speed against file size "
        "for MP4 (crf 18): veryfast is 2-2.5x faster than medium, files "
        "8-15 % larger",
    )


class ServiceSettings(_Section):
    """How the daemon stops."""

    stop_timeout_seconds: float = Field(60.0, ge=0, description="how long a stop lets the running job finish")


class MetricsSettings(_Section):
    """Prometheus metrics (needs prometheus_client: the `metrics` extra)."""

    port: int | None = Field(None, ge=1, le=65535, description="serve /metrics on this port; unset: off")
    port_offset: int = Field(0, ge=0, description="added to port (vidrop@N sets N) so instances do not collide")
    bind: str = Field("127.0.0.1", description="address the metrics server listens on")
    textfile: Path | None = Field(None, description="instead, write a node_exporter textfile here (atomically)")

    @property
    def is_configured(self) -> bool:
        return self.port is not None or self.textfile is not None


class Settings(BaseSettings):
    """Every setting of vidrop, in one object."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    state_dir: Path = Path("state")
    ledger_url: str = Field("", description="empty: SQLite in state_dir; postgresql://… for several hosts")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console", "journal"] = "auto"
    pipeline: PipelineSettings = PipelineSettings()
    generation: GenerationDefaults = GenerationDefaults()
    limits: LimitSettings = LimitSettings()
    intake: IntakeSettings = IntakeSettings()
    hooks: HookSettings = HookSettings()
    gallery: GallerySettings = GallerySettings()
    output: OutputSettings = OutputSettings()
    memory: MemorySettings = MemorySettings()
    service: ServiceSettings = ServiceSettings()
    recovery: RecoverySettings = RecoverySettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("ledger_url")
    @classmethod
    def _known_ledger(cls, value: str) -> str:
        if value == "" or value.startswith(("postgresql://", "postgres://", "sqlite:///")):
            return value
        raise ValueError(f"ledger_url must be empty, postgresql://… or sqlite:///…, not {value!r}")

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
        # The file as load_settings read and parsed it once: a second read could meet other bytes.
        if settings_cls.model_config.get("toml_data"):
            sources.append(InitSettingsSource(settings_cls, init_kwargs=settings_cls.model_config["toml_data"]))
        return tuple(sources)

    @property
    def ledger_path(self) -> Path:
        """The default SQLite ledger inside the state directory."""
        return self.state_dir / "ledger.sqlite3"

    @property
    def dead_letter_path(self) -> Path:
        """Hook deliveries that never got through, one JSON line each."""
        return self.state_dir / "hooks-dead-letter.jsonl"

    @property
    def is_offline(self) -> bool:
        """Whether the hub must never be contacted."""
        return self.pipeline.offline


# Settings a reload (SIGHUP) applies at once; every other change waits for a restart.
LIVE_SETTINGS = ("log_level", "generation.", "limits.", "intake.", "service.")


def is_live_setting(name: str) -> bool:
    """Whether a dotted setting name can change without a restart."""
    return any(name == prefix or name.startswith(prefix) for prefix in LIVE_SETTINGS)


@dataclass(frozen=True)
class ServiceManager:
    """What systemd tells a service through its environment (see systemd.exec(5))."""

    invocation_id: str | None
    journal_stream: str | None
    notify_socket: str | None
    watchdog_usec: int | None

    @property
    def is_under_systemd(self) -> bool:
        """Whether systemd started this process (it sets INVOCATION_ID for every unit)."""
        return bool(self.invocation_id)


def service_manager() -> ServiceManager:
    """Read systemd's environment variables, once, at start."""
    watchdog = os.environ.get("WATCHDOG_USEC", "")
    return ServiceManager(
        invocation_id=os.environ.get("INVOCATION_ID") or None,
        journal_stream=os.environ.get("JOURNAL_STREAM") or None,
        notify_socket=os.environ.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(watchdog) if watchdog.isdigit() else None,
    )


class LoadedSettings(BaseModel):
    """Settings plus where they came from, for `vidrop config` and reload."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    settings: Settings
    config_file: Path | None
    sources: dict[str, str]
    # VIDROP_* variables that name no setting, each with the nearest known name (None: nothing close)
    unknown_variables: list[tuple[str, str | None]] = []
    config_origin: str = ""  # which rule found config_file: --config, $VIDROP_CONFIG, the system's, the user's


def shipped_settings_text() -> str:
    """The commented default settings, as shipped in the package (the template of /etc/vidrop/vidrop.toml)."""
    return resources.files("vidrop.config").joinpath(SHIPPED_SETTINGS).read_text(encoding="utf-8")


def user_config_file() -> Path:
    """$XDG_CONFIG_HOME/vidrop/vidrop.toml, ~/.config/vidrop/vidrop.toml where it is unset (the XDG rule)."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if Path(base).is_absolute() else Path.home() / ".config"
    return root / "vidrop" / "vidrop.toml"


def find_config_file(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """--config, else $VIDROP_CONFIG, else /etc/vidrop/vidrop.toml, else the user's; and which rule found it."""
    if explicit:
        return Path(explicit), "--config"
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR]), f"${CONFIG_ENV_VAR}"
    for path, origin in ((SYSTEM_CONFIG_FILE, "the system's settings"), (user_config_file(), "the user's settings")):
        if path.is_file():
            return path, origin
    return None, "none found: built-in defaults"


def resolve_config_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The settings file these settings come from (see find_config_file)."""
    return find_config_file(explicit)[0]


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> LoadedSettings:
    """Build the one Settings object; raise ConfigError with one clear sentence when it is unusable."""
    path, origin = find_config_file(config_file)
    toml_data: dict[str, Any] = {}
    if path is not None:
        try:
            toml_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                f"offset {exc.start}); save it as UTF-8"
            ) from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None

    bound = type("BoundSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_data": toml_data}})
    try:
        settings = Settings.model_validate(bound(**overrides).model_dump())
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, path)) from None
    except SettingsError as exc:  # a VIDROP_* value that must be JSON (a list, a table) and is not
        raise ConfigError(_describe_env_json_error(exc)) from None

    sources = _sources(settings, toml_data, overrides)
    settings = _with_derived_values(_anchored(settings, path, sources))
    _check_paths(settings)
    try:
        settings.pipeline.offered_models()
    except ValueError as exc:
        raise ConfigError(f"invalid settings: pipeline.models: {exc}") from None
    return LoadedSettings(
        settings=settings,
        config_file=path,
        sources=sources,
        config_origin=origin,
        unknown_variables=unknown_variables(os.environ),
    )


# Set by vidrop for its hook commands (daemon/hooks.py), so a hook that runs `vidrop` passes them on.
HOOK_ENV_PREFIX = "VIDROP_JOB_"


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each VIDROP_* variable that names no setting (VIDROP_OUTBX, VIDROP_DEBUG__X), which would be silently
    ignored, with the nearest known name."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV_VAR}
    # Compared without the common VIDROP_, which would make every name look close to every other.
    names = [name.upper() for name in Settings.model_fields] + ["CONFIG"]
    sections = [name.upper() for name, info in Settings.model_fields.items() if _is_section(info)]
    unknown = []
    for name in sorted(environ):
        head = name.split(ENV_NESTED_DELIMITER)[0]
        if not name.startswith(ENV_PREFIX) or name.startswith(HOOK_ENV_PREFIX) or head in known:
            continue
        bare = head.removeprefix(ENV_PREFIX)
        nearest = difflib.get_close_matches(bare, sections if head != name else names, n=1, cutoff=0.6)
        unknown.append((name, ENV_PREFIX + nearest[0] + name[len(head) :] if nearest else None))
    return unknown


def _is_section(info: Any) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _describe_env_json_error(exc: SettingsError) -> str:
    """Which VIDROP_* variable holds a malformed JSON value, and why, in one line."""
    match = re.search(r'field "(\w+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = ENV_PREFIX + field.upper()
    for name in sorted(os.environ):
        if name == prefix or name.startswith(prefix + ENV_NESTED_DELIMITER):
            try:
                json.loads(os.environ[name])
            except json.JSONDecodeError as error:
                if os.environ[name].lstrip()[:1] in "[{":
                    return f"invalid settings: {name} is not valid JSON ({error}); write a list or table as JSON"
    return f"invalid settings in VIDROP_* environment variables: {exc}"


def _anchored(settings: Settings, path: Path | None, sources: dict[str, str]) -> Settings:
    """With a settings file, relative paths (its own and the defaults) are relative to that file, never to the
    current folder; under
    systemd a state_dir left at its default is $STATE_DIRECTORY (StateDirectory=vidrop: /var/lib/vidrop), and so
    it is for /etc/vidrop/vidrop.toml outside systemd too (install-systemd, `vidrop status`)."""
    state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    updates: dict[str, dict[str, Any]] = {"": {}, "intake": {}}
    for name in FILE_RELATIVE_PATHS:
        section, _, field = name.rpartition(".")
        value: Path = getattr(getattr(settings, section) if section else settings, field)
        if name == "state_dir" and sources[name] == "default" and (state_directory or path == SYSTEM_CONFIG_FILE):
            updates[section][field] = Path(state_directory or SYSTEM_STATE_DIR)
        elif sources[name] in ("file", "default") and path is not None and not value.expanduser().is_absolute():
            updates[section][field] = path.absolute().parent / value
    intake = settings.intake.model_copy(update=updates["intake"])
    return settings.model_copy(update={**updates[""], "intake": intake})


def _with_derived_values(settings: Settings) -> Settings:
    offline = settings.pipeline.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return settings.model_copy(
        update={
            # Resolved once, here: an inbox that is itself a link (/srv/vidrop/inbox → /mnt/share/inbox) is
            # the operator's choice, and events, scans and pairing then all speak of one real path.
            # Links inside the inbox are still never followed.
            "inbox": settings.inbox.expanduser().resolve(),
            "outbox": settings.outbox.expanduser().resolve(),
            "state_dir": settings.state_dir.expanduser().absolute(),
            "intake": settings.intake.model_copy(
                update={
                    "done_dir": settings.intake.done_dir.expanduser().absolute(),
                    "failed_dir": settings.intake.failed_dir.expanduser().absolute(),
                }
            ),
            "pipeline": settings.pipeline.model_copy(update={"offline": offline}),
        }
    )


def _check_paths(settings: Settings) -> None:
    inbox, outbox = settings.inbox.resolve(), settings.outbox.resolve()
    if inbox == outbox or outbox.is_relative_to(inbox) or inbox.is_relative_to(outbox):
        raise ConfigError(f"inbox ({inbox}) and outbox ({outbox}) must be separate folders, neither inside the other")
    for name in ("done_dir", "failed_dir"):
        folder = getattr(settings.intake, name).resolve()
        if folder == inbox or folder.is_relative_to(inbox):
            raise ConfigError(f"intake.{name} ({folder}) must not be inside the inbox ({inbox})")


def _describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        problems.append(f"{where}: {error['msg']}{shown}")
    origin = f" in {path} or VIDROP_* environment variables" if path else " in VIDROP_* environment variables"
    return f"invalid settings{origin}: " + "; ".join(problems)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _sources(settings: Settings, toml_data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, str]:
    """For each setting, say whether it came from the environment, the file, an override or the default."""
    in_file = _flatten(toml_data)
    in_overrides = _flatten(overrides)
    sources = {}
    for name in _flatten(settings.model_dump(mode="json")):
        env_name = ENV_PREFIX + name.replace(".", ENV_NESTED_DELIMITER).upper()
        if name in in_overrides:
            sources[name] = "command line"
        elif env_name in os.environ:
            sources[name] = f"env {env_name}"
        elif name in in_file:
            sources[name] = "file"
        else:
            sources[name] = "default"
    return sources


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a hook command: vidrop's own, plus the job's facts."""
    return {**os.environ, **extra}


def apply_process_environment(settings: Settings) -> None:
    """Set what torch reads from the environment before CUDA starts (an operator's own value wins)."""
    if settings.memory.cuda_alloc_conf:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", settings.memory.cuda_alloc_conf)
    cache_directory = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if cache_directory:  # under systemd (CacheDirectory=vidrop): the models' cache is /var/cache/vidrop
        os.environ.setdefault("HF_HOME", str(Path(cache_directory) / "huggingface"))


def flat_settings(settings: Settings) -> dict[str, Any]:
    """Settings as dotted names and JSON values, for printing and diffing."""
    return _flatten(settings.model_dump(mode="json"))


@dataclass(frozen=True)
class Reloaded:
    """What a reload changes: the settings in force after it, the live names that changed (applied), and the
    changed names that need a restart (not applied)."""

    settings: Settings
    changed: list[str]
    needs_restart: list[str]


def reloaded(current: Settings, fresh: Settings) -> Reloaded:
    """The current settings with fresh's live ones (LIVE_SETTINGS); the rest stays until a restart."""
    before, after = flat_settings(current), flat_settings(fresh)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    live_sections = {prefix.rstrip(".") for prefix in LIVE_SETTINGS}
    updated = current.model_copy(
        update={name: getattr(fresh, name) for name in live_sections if name in type(current).model_fields}
    )
    return Reloaded(
        updated,
        [name for name in changed if is_live_setting(name)],
        [name for name in changed if not is_live_setting(name)],
    )
