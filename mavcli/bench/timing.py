"""Timing helpers for benchmarks on a shared, noisy machine: candidates are timed in
interleaved rounds within one process and compared by their medians, so a slow spell hits
all of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 3, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per call of each function, timed alternately round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, rounds: int = 10) -> float:
    """This machine's dense matmul rate (GFLOP/s) for an n x n by n x n product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = interleaved_medians({"mm": lambda: a @ b}, rounds=rounds, device=device)["mm"]
    return 2 * n**3 / t / 1e9


def torch_build() -> str:
    """Which torch runs the benchmark: its version and build, e.g. 'torch 2.13.0+cpu (CPU-only
    build)' or 'torch 2.14.1+cu130 (CUDA 13.0 build, no GPU visible)'. Builds differ in speed
    and memory on the same CPU, so every benchmark says which one it measured."""
    cuda = torch.version.cuda
    if cuda is None:
        build = "CPU-only build"
    else:
        build = f"CUDA {cuda} build, " + (f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
                                          else "no GPU visible")
    return f"torch {torch.__version__} ({build}), {torch.get_num_threads()} threads"
