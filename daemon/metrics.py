"""Prometheus metrics of one instance (issue 21): a JobListener on the recorder, served over HTTP or written to
a node_exporter textfile. Every known series exists from the start (as 0); labels stay low-cardinality."""

from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path
from typing import Any, Callable

import structlog

from vidrop.config.vocabulary import MemoryMode
from vidrop.daemon.ledger.base import Job, JobState

log = structlog.get_logger()

STATES = tuple(state.value for state in JobState)
FINISHED = ("done", "failed")
PHASES = ("wait", "load", "prepare", "denoise", "decode", "encode", "write")
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MEMORY_MODES = tuple(mode.value for mode in MemoryMode)
HOOKS = ("command", "webhook")
HOOK_RESULTS = ("delivered", "dead_lettered")  # how a delivery ended; failed attempts are counted apart


class MetricsUnavailable(Exception):
    """metrics are configured but prometheus_client is not installed."""


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


class Metrics:
    """The series; `job_changed` keeps them current; `counts` reads the fleet's queue from the ledger."""

    def __init__(self, *, families: tuple[str, ...], counts: Callable[[], dict[str, int]]) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:  # pragma: no cover - the start refuses before this
            raise MetricsUnavailable("metrics need prometheus_client: pip install 'vidrop[metrics]'") from exc
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        self.counts = counts
        self.lock = threading.Lock()
        self.on_change: Callable[[], None] = lambda: None
        self._series(prom, families)
        self.refresh()

    def _series(self, prom: Any, families: tuple[str, ...]) -> None:
        reg = self.registry
        self.jobs = prom.Gauge("vidrop_jobs", "jobs in the ledger by state (the whole fleet)", ["state"], registry=reg)
        self.finished = prom.Counter(
            "vidrop_jobs_finished", "jobs this instance finished, by state", ["state"], registry=reg
        )
        self.running = prom.Gauge("vidrop_jobs_running", "jobs this instance runs now", registry=reg)
        self.last_finished = prom.Gauge(
            "vidrop_last_finished_timestamp_seconds", "when this instance last finished a job", registry=reg
        )
        self.phase = prom.Histogram(
            "vidrop_job_phase_seconds", "time per phase of a job", ["family", "phase"], buckets=BUCKETS, registry=reg
        )
        self.mode = prom.Counter("vidrop_memory_mode_jobs", "jobs by memory mode chosen", ["mode"], registry=reg)
        self.recoveries = prom.Counter("vidrop_oom_recoveries", "out-of-memory recovery steps", registry=reg)
        self.loads = prom.Counter(
            "vidrop_model_loads", "models loaded (at start, for a job, after an unload)", ["family"], registry=reg
        )
        self.switches = prom.Counter(
            "vidrop_model_switches", "jobs that ran on another model than the one before", ["family"], registry=reg
        )
        self.hook_deliveries = prom.Counter(
            "vidrop_hook_deliveries", "hook deliveries by how they ended", ["hook", "result"], registry=reg
        )
        self.hook_failures = prom.Counter(
            "vidrop_hook_attempts_failed", "hook attempts that did not get through", ["hook"], registry=reg
        )
        self.outbox_paused = prom.Gauge("vidrop_outbox_paused", "1 while the outbox cannot be written", registry=reg)
        self.gpu = prom.Gauge("vidrop_gpu_memory_bytes", "CUDA memory (where present)", ["kind"], registry=reg)
        self.info = prom.Info("vidrop_build", "versions", registry=reg)
        self.info.info({name: _version(name) for name in ("vidrop", "diffusers", "torch")})
        for state in STATES:
            self.jobs.labels(state)
        for state in FINISHED:
            self.finished.labels(state)
        for family in families:
            for phase in PHASES:
                self.phase.labels(family, phase)
            self.loads.labels(family)
            self.switches.labels(family)
        for mode in MEMORY_MODES:
            self.mode.labels(mode)
        for hook in HOOKS:
            self.hook_failures.labels(hook)
            for result in HOOK_RESULTS:
                self.hook_deliveries.labels(hook, result)

    def watch(self, outbox_paused: Callable[[], bool]) -> None:
        """Gauges read at each scrape: the outbox pause, and CUDA memory where CUDA is present."""
        self.outbox_paused.set_function(lambda: float(outbox_paused()))
        try:
            import torch
        except ImportError:
            return
        if not torch.cuda.is_available():
            return
        self.gpu.labels("own_allocated").set_function(lambda: torch.cuda.memory_allocated())
        self.gpu.labels("own_reserved").set_function(lambda: torch.cuda.memory_reserved())
        self.gpu.labels("device_free").set_function(lambda: torch.cuda.mem_get_info()[0])
        self.gpu.labels("device_total").set_function(lambda: torch.cuda.mem_get_info()[1])

    def watch_queue(self, control: Callable[[], Any]) -> None:
        """The fleet's queue control (`vidrop pause`, `drain`), as this instance read it last (no ledger call at a
        scrape): vidrop_queue_paused and vidrop_queue_draining, 1 or 0."""
        reg = self.registry
        paused = self.prom.Gauge("vidrop_queue_paused", "1 while the fleet's queue is paused", registry=reg)
        draining = self.prom.Gauge("vidrop_queue_draining", "1 while the fleet's queue drains", registry=reg)
        paused.set_function(lambda: float(control().mode.value == "paused"))
        draining.set_function(lambda: float(control().mode.value == "draining"))

    def refresh(self) -> None:
        """The fleet's counts from the ledger (a failure leaves the last values)."""
        try:
            counts = self.counts()
        except Exception:
            log.warning("metrics_counts_failed", exc_info=True)
            return
        for state in STATES:
            self.jobs.labels(state).set(counts.get(state, 0))

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        with self.lock:
            if state is JobState.RUNNING:
                self.running.set(1)
            elif state in (JobState.DONE, JobState.FAILED) or details.get("superseded"):
                self.running.set(0)
                self.finished.labels(state.value).inc()
                self.last_finished.set_to_current_time()
                self._observe(details.get("manifest") or {}, details)
            elif state is JobState.QUEUED:
                self.running.set(0)
            self.refresh()
        self.on_change()

    def _observe(self, manifest: dict[str, Any], details: dict[str, Any]) -> None:
        if not manifest or details.get("reconciled"):
            return
        family, timings = manifest.get("family", "unknown"), manifest.get("timings", {})
        memory, switch = manifest.get("memory") or {}, manifest.get("model_switch") or {}
        load_seconds = switch.get("load_seconds") or memory.get("reload_seconds")
        phases = {
            "wait": timings.get("queued_seconds"),
            "load": load_seconds,
            "prepare": timings.get("prepare_seconds"),
            "denoise": timings.get("denoise_seconds"),
            "decode": timings.get("decode_seconds"),
            "encode": details.get("encode_seconds"),
            "write": details.get("write_seconds"),
        }
        for phase, seconds in phases.items():
            if isinstance(seconds, (int, float)):
                self.phase.labels(family, phase).observe(seconds)
        if memory.get("mode"):
            self.mode.labels(str(memory["mode"])).inc()
        self.recoveries.inc(len(memory.get("recovery") or []))
        if isinstance(load_seconds, (int, float)):
            self.loads.labels(family).inc()
        if switch.get("from"):  # None: the first model, or the same one loaded again
            self.switches.labels(family).inc()

    def models_loaded(self, described: dict[str, Any]) -> None:
        """The models the start loaded (a generator's `describe()`: one model, or a set with `resident` flags)."""
        models = described.get("models") or {"": {**described, "resident": True}}
        with self.lock:
            for model in models.values():
                if model.get("resident") and model.get("family"):
                    self.loads.labels(str(model["family"])).inc()

    def hook_attempt(self, hook: str, result: str) -> None:
        """A HookDispatcher's report: `failed` for an attempt that did not get through, else how it ended."""
        with self.lock:
            if result == "failed":
                self.hook_failures.labels(hook).inc()
            else:
                self.hook_deliveries.labels(hook, result).inc()
        self.on_change()

    def render(self) -> bytes:
        return self.prom.generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomically (prometheus_client writes a temporary file and renames it)."""
        self.prom.write_to_textfile(str(path), self.registry)

    def serve(self, port: int, bind: str) -> Any:
        server, _thread = self.prom.start_http_server(port, addr=bind, registry=self.registry)
        log.info("metrics_serving", port=port, bind=bind)
        return server


def metrics_port(base: int, offset: int) -> int:
    """vidrop@N serves on base + N so instances on one host do not collide."""
    return base + offset


class TextfileWriter(threading.Thread):
    """Rewrites the textfile every `seconds` (and at once after each change of a job)."""

    def __init__(self, metrics: Metrics, path: Path, seconds: float = 15.0) -> None:
        super().__init__(name="metrics-textfile", daemon=True)
        self.metrics, self.path, self.seconds = metrics, path, seconds
        self.wake = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.metrics.write_textfile(self.path)
            except OSError as exc:
                log.warning("metrics_textfile_failed", path=str(self.path), error=str(exc))
            self.wake.wait(self.seconds)
            self.wake.clear()


def start_metrics(settings: Any, ledger: Any, outbox_paused: Callable[[], bool]) -> Metrics | None:
    """The metrics the settings ask for, serving or writing; None when off. Unusable settings: ConfigError."""
    from vidrop.config.errors import ConfigError
    from vidrop.config.vocabulary import FAMILY_NAMES

    if not settings.is_configured:
        return None
    try:
        metrics = Metrics(families=FAMILY_NAMES, counts=ledger.counts)
    except MetricsUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    metrics.watch(outbox_paused)
    if settings.textfile is not None:
        writer = TextfileWriter(metrics, Path(settings.textfile))
        metrics.on_change = writer.wake.set
        writer.start()
    if settings.port is not None:
        port = metrics_port(settings.port, settings.port_offset)
        try:
            metrics.serve(port, settings.bind)
        except OSError as exc:
            raise ConfigError(f"metrics.port {port} on {settings.bind} cannot be used: {exc}") from exc
    return metrics
