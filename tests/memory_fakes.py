"""A fake memory probe and an injected out-of-memory: no GPU exists on the machines that run the tests."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vidrop.pipeline.memory import CpuProbe, MemorySnapshot, ProcessUse, Usage, collect_garbage

GIB = 2**30


class FakeProbe:
    """Reports the free memory the test chooses (a sequence: one value per snapshot, the last repeats).

    Peaks and usage come from the real CPU probe unless `usage_of` says otherwise, so the facts stay real.
    """

    def __init__(
        self,
        free: Sequence[int],
        *,
        device: str = "cuda:0",
        total: int = 24 * GIB,
        others: Sequence[ProcessUse] = (),
        usage_of: Callable[[], Usage] | None = None,
    ) -> None:
        self.device = device
        self.free = list(free)
        self.total = total
        self.others = tuple(others)
        self.usage_of = usage_of
        self.snapshots = 0
        self.releases = 0
        self._cpu = CpuProbe()

    def snapshot(self) -> MemorySnapshot:
        free = self.free[min(self.snapshots, len(self.free) - 1)]
        self.snapshots += 1
        return MemorySnapshot(device=self.device, free_bytes=free, total_bytes=self.total, others=self.others)

    def usage(self) -> Usage:
        return self.usage_of() if self.usage_of is not None else self._cpu.usage()

    def reset_peak(self) -> None:
        self._cpu.reset_peak()

    def peak_bytes(self) -> int:
        return self._cpu.peak_bytes()

    def release(self) -> None:
        self.releases += 1
        collect_garbage()


class InjectedOOM:
    """Raises torch.OutOfMemoryError from a module's forward when `should_fail(call_number)` says so.

    A forward pre-hook on the real module (the denoiser, or the VAE's decoder), removed by `remove()`.
    """

    def __init__(self, module: torch.nn.Module, should_fail: Callable[[int], bool]) -> None:
        self.calls = 0
        self.raised = 0
        self.should_fail = should_fail
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1
        if self.should_fail(self.calls):
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    def remove(self) -> None:
        self.handle.remove()


class CallCounter:
    """Counts forward calls of a module (denoiser steps)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        self.handle.remove()
