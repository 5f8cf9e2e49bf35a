"""Cascade benchmark (issue 4): seconds per stage and peak memory of one `pipe(prompt)` run.

Peak memory is the process's resident-set high-water mark (Linux: reset through
/proc/self/clear_refs before the run, read from VmHWM) on CPU, and torch's peak allocation
on CUDA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class CascadeReport:
    pack: str
    device: str
    precision: str
    frames: int
    size: tuple[int, int]
    load_s: float
    total_s: float
    stages: dict[str, float] = field(default_factory=dict)
    peak_mib: float | None = None
    baseline_mib: float | None = None  # resident memory before the run (weights loaded)


def _rss_field(name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_cascade_bench(pack: str | None, *, prompt: str, device: str = "cpu", seed: int = 0,
                      steps: int | None = None, repeats: int = 1, precision: str = "auto") -> CascadeReport:
    from mavcli.pipeline import MakeAVideoPipeline

    t0 = time.perf_counter()
    pipe = MakeAVideoPipeline.from_pretrained(pack, device=device, precision=precision)
    load_s = time.perf_counter() - t0
    pipe(prompt, seed=seed, steps=1)  # warm-up: first-call allocations and kernel selection
    dev = pipe.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = _rss_field("VmRSS")
        _reset_peak()
    best = None
    for _ in range(repeats):
        t1 = time.perf_counter()
        out = pipe(prompt, seed=seed, steps=steps)
        total = time.perf_counter() - t1
        if best is None or total < best[0]:
            best = (total, out)
    total, out = best
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _rss_field("VmHWM")
    return CascadeReport(str(pipe.pack.path), str(dev), pipe.precision, out.frames.shape[0], out.frames.shape[1:3], load_s, total,
                         dict(out.timings), peak, baseline)
