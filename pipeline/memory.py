"""The memory probe: how much memory the device has free, who holds the rest, and what this process uses.

One small protocol (`MemoryProbe`) with a CUDA and a CPU implementation; tests pass a fake one.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import structlog
import torch

log = structlog.get_logger()

GB = 1e9
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class ProcessUse:
    """Another program holding memory on the device."""

    pid: int
    name: str
    bytes: int

    def describe(self) -> str:
        """'blender (pid 4121)'."""
        return f"{self.name} (pid {self.pid})"


@dataclass(frozen=True)
class MemorySnapshot:
    """Free and total memory of one device at one moment, and who holds what."""

    device: str
    free_bytes: int
    total_bytes: int
    ours_bytes: int = 0
    others: tuple[ProcessUse, ...] = ()

    @property
    def is_gpu(self) -> bool:
        """Whether this is GPU memory (else system RAM)."""
        return self.device.startswith("cuda")

    @property
    def kind(self) -> str:
        """'GPU memory' or 'memory', for sentences."""
        return "GPU memory" if self.is_gpu else "memory"

    def held_by(self) -> str:
        """'blender (pid 4121), python (pid 77)', largest first, or what is known when nothing is."""
        if not self.others:
            return "unknown programs" if self.is_gpu else "other programs"
        ranked = sorted(self.others, key=lambda use: use.bytes, reverse=True)
        return ", ".join(use.describe() for use in ranked[:4])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the manifest and the log."""
        data = asdict(self)
        data["others"] = [asdict(use) for use in self.others]
        return data


@dataclass(frozen=True)
class Usage:
    """What this process holds: the CUDA allocator's allocated and reserved bytes, and the resident set."""

    allocated_bytes: int
    reserved_bytes: int
    rss_bytes: int

    def to_dict(self) -> dict[str, int]:
        """JSON-ready."""
        return asdict(self)


class MemoryProbe(Protocol):
    """What the generator asks about memory; tests pass a fake."""

    device: str

    def snapshot(self) -> MemorySnapshot: ...

    def usage(self) -> Usage: ...

    def reset_peak(self) -> None: ...

    def peak_bytes(self) -> int: ...

    def release(self) -> None: ...


def rss_bytes() -> int:
    """This process's resident set size."""
    return int(psutil.Process().memory_info().rss)


def collect_garbage() -> None:
    """Drop unreachable objects and give cached CUDA blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


class CpuProbe:
    """System RAM: available memory from the kernel, peak RSS per job from /proc (VmHWM, reset per job)."""

    device = "cpu"

    def __init__(self) -> None:
        self._rss_at_reset = 0

    def snapshot(self) -> MemorySnapshot:
        memory = psutil.virtual_memory()
        return MemorySnapshot(
            device=self.device, free_bytes=int(memory.available), total_bytes=int(memory.total), ours_bytes=rss_bytes()
        )

    def usage(self) -> Usage:
        return Usage(allocated_bytes=0, reserved_bytes=0, rss_bytes=rss_bytes())

    def reset_peak(self) -> None:
        # Writing 5 to clear_refs resets the high-water mark (Linux ≥ 4.0); elsewhere the RSS now is the floor.
        self._rss_at_reset = rss_bytes()
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            pass

    def peak_bytes(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(int(line.split()[1]) * 1024, self._rss_at_reset)
        except OSError:
            pass
        return max(rss_bytes(), self._rss_at_reset)

    def release(self) -> None:
        collect_garbage()


class CudaProbe:
    """One CUDA device: driver free memory plus our own cached-but-unused blocks; NVML for other processes."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.index = torch.device(device).index or 0
        self._nvml = _Nvml.open(self.index)

    def snapshot(self) -> MemorySnapshot:
        free, total = torch.cuda.mem_get_info(self.index)
        # Our cache is reusable by us: it is not someone else's use.
        cached = torch.cuda.memory_reserved(self.index) - torch.cuda.memory_allocated(self.index)
        return MemorySnapshot(
            device=self.device,
            free_bytes=int(free + max(0, cached)),
            total_bytes=int(total),
            ours_bytes=int(torch.cuda.memory_allocated(self.index)),
            others=self._nvml.others() if self._nvml else (),
        )

    def usage(self) -> Usage:
        return Usage(
            allocated_bytes=int(torch.cuda.memory_allocated(self.index)),
            reserved_bytes=int(torch.cuda.memory_reserved(self.index)),
            rss_bytes=rss_bytes(),
        )

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)

    def peak_bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.index))

    def release(self) -> None:
        collect_garbage()


class _Nvml:
    """Per-process GPU memory from NVML (nvidia-ml-py), when it is installed and says anything."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self.pynvml = pynvml
        self.handle = handle

    @classmethod
    def open(cls, index: int) -> _Nvml | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as exc:  # not installed, no driver, no permission: degrade to "unknown programs"
            log.info("nvml_unavailable", error=f"{type(exc).__name__}: {exc}")
            return None

    def others(self) -> tuple[ProcessUse, ...]:
        me = psutil.Process().pid
        try:
            processes = [
                *self.pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle),
                *self.pynvml.nvmlDeviceGetGraphicsRunningProcesses(self.handle),
            ]
        except Exception:  # WDDM and some containers report nothing usable
            return ()
        found: dict[int, ProcessUse] = {}
        for process in processes:
            used = getattr(process, "usedGpuMemory", None)
            if process.pid == me or not used:
                continue
            found[process.pid] = ProcessUse(pid=process.pid, name=_process_name(process.pid), bytes=int(used))
        return tuple(found.values())


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:  # another PID namespace (containers), or gone already
        return "unknown"


def probe_for(device: str) -> MemoryProbe:
    """The real probe for a resolved device ('cpu', 'cuda', 'cuda:N')."""
    return CudaProbe(device) if device.startswith("cuda") else CpuProbe()


def most_free_cuda_device() -> str | None:
    """'cuda:N' for the CUDA device with the most free memory, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
    return f"cuda:{max(range(len(free)), key=free.__getitem__)}"


@dataclass
class DriftWatch:
    """Remembers usage after warm-up and says when later jobs leave much more behind."""

    threshold_bytes: int
    warmup_jobs: int = 3
    jobs_seen: int = 0
    baseline: Usage | None = None
    history: list[Usage] = field(default_factory=list)

    def observe(self, usage: Usage) -> dict[str, int] | None:
        """Record the usage after one job; the drift in bytes when it exceeds the threshold, else None."""
        self.jobs_seen += 1
        self.history = [*self.history[-99:], usage]
        if self.jobs_seen < self.warmup_jobs:
            return None
        if self.baseline is None:
            self.baseline = usage
            return None
        drift = {
            "allocated_bytes": usage.allocated_bytes - self.baseline.allocated_bytes,
            "reserved_bytes": usage.reserved_bytes - self.baseline.reserved_bytes,
            "rss_bytes": usage.rss_bytes - self.baseline.rss_bytes,
        }
        if self.threshold_bytes > 0 and max(drift.values()) > self.threshold_bytes:
            return drift
        return None

    def restart(self) -> None:
        """Start over after the worker was restarted."""
        self.jobs_seen = 0
        self.baseline = None
