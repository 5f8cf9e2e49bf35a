"""Per-thread scratch buffers for the layers' temporaries.

A big tensor allocated fresh on every call is zero-filled page by page by the kernel on first
touch (glibc hands large blocks back to the OS when they are freed); on the 2-core VM these
layers were tuned on that cost about 1 ms per MB, a fifth of a layer's time. Temporaries that
never leave a call (never returned, never saved for backward) therefore come from buffers kept
per thread and reused from call to call.
"""

from __future__ import annotations

import math
import threading

import torch

# Buffers larger than this are allocated per call instead of kept (bounds what stays resident).
MAX_BYTES = 64 * 2**20


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.bufs: dict[tuple, torch.Tensor] = {}


_scratch = _Scratch()


def buffer(name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised `shape` tensor on `like`'s device for temporary use inside one call:
    valid until the next `buffer(name, ...)` on this thread, so never return or save it."""
    dtype = like.dtype if dtype is None else dtype
    numel = math.prod(shape)
    if numel * dtype.itemsize > MAX_BYTES or like.device.type != "cpu":  # the CUDA allocator caches
        return torch.empty(shape, device=like.device, dtype=dtype)
    key = (name, like.device, dtype)
    buf = _scratch.bufs.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # usable both in and out of inference mode
            buf = torch.empty(numel, device=like.device, dtype=dtype)
        _scratch.bufs[key] = buf
    return buf[:numel].view(shape)


def zero_padded(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of `shape` whose border the caller never writes: kept per shape and
    zeroed once, so the border stays zero from call to call (callers write the interior)."""
    key = ("padded", tuple(shape), like.device, like.dtype)
    buf = _scratch.bufs.get(key)
    if buf is None:
        with torch.inference_mode(False):
            buf = torch.zeros(shape, device=like.device, dtype=like.dtype)
        if math.prod(shape) * like.element_size() <= MAX_BYTES and like.device.type == "cpu":
            padded = [k for k in _scratch.bufs if k[0] == "padded"]
            if len(padded) >= 16:  # a model has few distinct sizes; forget them all past that
                for k in padded:
                    del _scratch.bufs[k]
            _scratch.bufs[key] = buf
    return buf


def clear() -> None:
    """Free this thread's scratch buffers."""
    _scratch.bufs.clear()
