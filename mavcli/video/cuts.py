"""Scene-cut detection: where a new shot starts, so interpolation never blends across it."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np




def _cut_features(frame: np.ndarray, side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Small luma image (<= side px on the long side, values in [0, 1]) and a normalised
    8x8x8 RGB histogram (512,) of one uint8 (h, w, 3) frame."""
    h, w = frame.shape[:2]
    step = max(1, min(h, w) // (2 * side))  # cheap stride first for big frames
    x = frame[::step, ::step].astype(np.float32)
    h2, w2 = x.shape[:2]
    k = max(1, math.ceil(max(h2, w2) / side))
    hh, ww = max(k, h2 // k * k), max(k, w2 // k * k)
    if hh > h2 or ww > w2:  # tiny frame: no block averaging
        small = x
    else:
        small = x[:hh, :ww].reshape(hh // k, k, ww // k, k, 3).mean(axis=(1, 3))
    luma = small @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    q = np.clip(small // 32, 0, 7).astype(np.int64)
    idx = (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel()
    hist = np.bincount(idx, minlength=512).astype(np.float32) / idx.size
    return luma, hist


def _cut_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Luma mean absolute difference + histogram total-variation distance, each in [0, 1]."""
    return float(np.abs(a[0] - b[0]).mean() + 0.5 * np.abs(a[1] - b[1]).sum())


def detect_scene_cuts(
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    ratio: float = 3.0,
    min_score: float = 0.15,
    window: int = 4,
    min_scene_len: int = 2,
) -> list[int]:
    """Indices ``i`` where frame ``i`` starts a new shot (the change from ``i-1`` to ``i`` is a
    hard cut).

    Each consecutive pair gets a score: mean absolute difference of downsampled luma plus the
    total-variation distance of 8x8x8 RGB histograms (both in [0, 1]). A pair is a cut when
    its score is at least ``min_score`` and at least ``ratio`` times the median score of the
    ``window`` pairs on each side, so steady fast motion (every pair scores high) is not a
    cut, while a lone spike is. A one-frame flash (frame ``i`` differs from both neighbours,
    which match each other) is not a cut, and cuts closer than ``min_scene_len`` frames keep
    only the first. Gradual transitions (fades, dissolves) are not detected.

    Args:
        frames: uint8 (f, h, w, 3), or any iterable of (h, w, 3) frames (streamed: only small
            per-frame features are kept).

    Returns:
        Sorted frame indices, all >= 1.
    """
    scores: list[float] = []
    skip2: list[float] = []  # score between frames i-2 and i, for the flash test
    prev: tuple[np.ndarray, np.ndarray] | None = None
    prev2: tuple[np.ndarray, np.ndarray] | None = None
    for frame in frames:
        fr = np.asarray(frame)
        if fr.ndim != 3 or fr.shape[-1] != 3:
            raise ValueError(f"each frame must be (h, w, 3), got {fr.shape}")
        feat = _cut_features(fr)
        if prev is not None:
            scores.append(_cut_score(prev, feat))
            skip2.append(_cut_score(prev2, feat) if prev2 is not None else float("nan"))
        prev2, prev = prev, feat
    n = len(scores)  # pair j is frames (j, j + 1)
    if n == 0:
        return []
    s = np.asarray(scores)
    cand: list[int] = []
    for j in range(n):
        neigh = np.concatenate([s[max(0, j - window) : j], s[j + 1 : j + 1 + window]])
        base = float(np.median(neigh)) if neigh.size else 0.0
        if s[j] >= min_score and s[j] >= ratio * base:
            cand.append(j)
    cand_set = set(cand)
    cuts: list[int] = []
    flashes: set[int] = set()
    for j in cand:
        if j in flashes:
            continue
        # flash: pairs j and j+1 both spike, but frames j and j+2 look alike
        if j + 1 in cand_set and j + 1 < len(skip2) and skip2[j + 1] < 0.5 * min(s[j], s[j + 1]):
            flashes.add(j + 1)
            continue
        i = j + 1  # the frame that starts the new shot
        if cuts and i - cuts[-1] < min_scene_len:
            continue
        cuts.append(i)
    return cuts


