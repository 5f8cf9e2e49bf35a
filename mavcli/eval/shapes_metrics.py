"""Does a generated clip follow its prompt? Measured from pixels alone (no model, numpy only).

For a clip of the shapes world (shared/shapes-domain.md) this module estimates, frame by
frame and then over the clip:

- background: the majority nearest background colour of the border pixels;
- the object: pixels whose colour lies more than half-way from the background towards the
  object's colour (a per-pixel coverage estimate ``alpha``), largest 8-connected component;
- colour: nearest palette colour to the median of the object's interior pixels;
- shape: from the coverage-weighted fill ratio of the bounding box (square 1.0, circle pi/4,
  triangle 1/2) and the ratio of the object's width in its top third to its bottom third
  (triangle 1/5, others 1);
- motion: least-squares line through the coverage-weighted centroids; displacement below
  ``still_threshold`` of the side is "still", otherwise the dominant axis (when at least twice
  the other) gives left/right/up/down, else "diagonal";
- stability: relative std of the object's area, std of its colour, flicker (mean absolute
  frame difference over the background), extra connected components, background error.

``evaluate_clip`` compares the predictions with the prompt's facts; ``summarize`` turns many
results into accuracies. Numbers are in normalised frame units (fraction of the side) or in
0-255 pixel levels, as named.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from mavcli.data.shapes import BACKGROUNDS, COLOURS, SHAPES, ShapeSpec, parse_caption

__all__ = ["evaluate_clip", "summarize", "ATTRIBUTES"]

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape", "motion")

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.asarray([BACKGROUNDS[k] for k in _BG_NAMES], dtype=np.float32)  # (3, 3)
_COL_NAMES = list(COLOURS)
_COL_RGB = np.asarray([COLOURS[k] for k in _COL_NAMES], dtype=np.float32)  # (6, 3)
_ONES3 = np.ones(3, dtype=np.float32)  # channel sums as a matrix product (fast in numpy)

# (fill ratio, top-third / bottom-third width ratio) of each ideal shape, and the scale of
# each feature in the distance used to pick the nearest
_SHAPE_PROTOTYPES = {"square": (1.0, 1.0), "circle": (math.pi / 4.0, 1.0), "triangle": (0.5, 0.2)}
_FEATURE_SCALE = (0.08, 0.3)


# ---------------------------------------------------------------------------------------------
# Connected components (run-length, 8-connectivity): a few numpy calls per frame plus a Python
# loop over runs (one or two per row for a clean clip), far cheaper than a per-pixel flood fill.


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in ``mask`` (h, w): rows, starts, ends (exclusive), row-major."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # (h, w + 1): +1 where a run starts, -1 one past its end
    rs, cs = np.nonzero(d == 1)
    _, ce = np.nonzero(d == -1)
    return rs, cs, ce


def _label_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Union-find over runs: runs in adjacent rows touch (8-connected) when their column
    ranges overlap after widening by one. Returns the root id of each run, (n,)."""
    n = len(rows)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    rows_l = rows.tolist()
    starts_l = starts.tolist()
    ends_l = ends.tolist()
    prev_lo = prev_hi = 0  # run index range of the previous row
    i = 0
    while i < n:
        r = rows_l[i]
        j = i
        while j < n and rows_l[j] == r:
            j += 1
        # runs [i, j) are row r; compare with runs of row r - 1 if that was the previous row
        if i > 0 and rows_l[i - 1] == r - 1:
            for a in range(i, j):
                sa, ea = starts_l[a], ends_l[a]
                for b in range(prev_lo, prev_hi):
                    if sa <= ends_l[b] and starts_l[b] <= ea:
                        ra, rb = find(a), find(b)
                        if ra != rb:
                            parent[ra] = rb
        prev_lo, prev_hi = i, j
        i = j
    return np.asarray([find(a) for a in range(n)], dtype=np.int64)


def _main_component(mask: np.ndarray, min_extra: int) -> tuple[np.ndarray | None, int, int]:
    """Largest 8-connected component of ``mask`` (h, w).

    Returns:
        (main mask (h, w) bool or None when empty, its area in pixels, number of other
        components with at least ``min_extra`` pixels).
    """
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        return None, 0, 0
    # fast path (every clean frame of a convex object): one run per row, in consecutive rows,
    # each touching the next -> a single component, no union-find needed
    if np.all(np.diff(rows) == 1) and np.all((starts[1:] <= ends[:-1]) & (starts[:-1] <= ends[1:])):
        return mask, int((ends - starts).sum()), 0
    roots = _label_runs(rows, starts, ends)
    _, inv = np.unique(roots, return_inverse=True)
    areas = np.bincount(inv, weights=(ends - starts)).astype(np.int64)
    k = int(np.argmax(areas))
    extra = int(np.sum(areas >= min_extra)) - (1 if areas[k] >= min_extra else 0)
    main = np.zeros_like(mask, dtype=bool)
    for r, s, e in zip(rows[inv == k].tolist(), starts[inv == k].tolist(), ends[inv == k].tolist()):
        main[r, s:e] = True
    return main, int(areas[k]), extra


# ---------------------------------------------------------------------------------------------


def _facts_from(prompt_or_facts: str | Mapping[str, Any] | ShapeSpec) -> dict[str, str]:
    """Expected facts: from a prompt (parsed), a ShapeSpec, or a dict with some of the keys."""
    if isinstance(prompt_or_facts, ShapeSpec):
        return prompt_or_facts.facts()
    if isinstance(prompt_or_facts, str):
        parsed = parse_caption(prompt_or_facts, strict=True)
        return {k: str(v) for k, v in parsed.items()}
    given = dict(prompt_or_facts).items()
    facts = {k: str(v) for k, v in given if k in ATTRIBUTES and v is not None}
    if not facts:
        raise ValueError(f"no facts among {ATTRIBUTES} in {prompt_or_facts!r}")
    return facts


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> tuple[int, float]:
    d = np.linalg.norm(palette - rgb[None, :], axis=1)
    k = int(np.argmin(d))
    return k, float(d[k])


def _border(frames: np.ndarray, width: int) -> np.ndarray:
    """Pixels of the outer ring of every frame: (n, 3)."""
    top = frames[:, :width].reshape(-1, 3)
    bottom = frames[:, -width:].reshape(-1, 3)
    left = frames[:, width:-width, :width].reshape(-1, 3)
    right = frames[:, width:-width, -width:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right], axis=0)


def evaluate_clip(
    frames: np.ndarray,
    prompt_or_facts: str | Mapping[str, Any] | ShapeSpec,
    *,
    strong_threshold: float = 48.0,
    still_threshold: float = 0.1,
    min_object_fraction: float = 0.004,
    max_colour_distance: float = 80.0,
) -> dict[str, Any]:
    """Measure a clip of the shapes world against what its prompt says.

    Args:
        frames: uint8 (f, h, w, 3) RGB (a single (h, w, 3) frame is taken as f = 1).
        prompt_or_facts: the prompt (any wording ``parse_caption`` reads), a ``ShapeSpec``, or a
            dict with some of ``background, colour, shape, motion``.
        strong_threshold: RGB distance from the background above which a pixel surely belongs
            to an object (used to find the object colour before the coverage estimate).
        still_threshold: displacement over the clip, fraction of the side, below which the
            object counts as still.
        min_object_fraction: the largest component must cover this fraction of the frame for
            the frame to "have an object".
        max_colour_distance: object colours farther than this (RGB) from every palette colour
            are predicted as ``None`` (not a colour of this world).

    Returns:
        dict with ``predicted`` (attribute -> name or None), ``expected`` (facts given),
        ``correct`` (attribute -> bool, for the attributes given), ``all_correct``,
        ``object_found``, ``measures`` (size, travel, displacement, fill ratio, width ratio,
        colour distance, presence...) and ``stability`` (area_rel_std, colour_std, flicker,
        extra_components, background_error, path_residual).
    """
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < 1:
        raise ValueError(f"frames must be (f, h, w, 3), got shape {tuple(np.shape(frames))}")
    if x.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {x.dtype}")
    expected = _facts_from(prompt_or_facts)
    f, h, w, _ = x.shape

    # --- background: majority vote of the border ring, then its measured colour
    ring = max(1, min(h, w) // 32)
    border = (_border(x, ring) if min(h, w) > 2 * ring else x.reshape(-1, 3)).astype(np.float32)
    bd = np.linalg.norm(border[:, None, :] - _BG_RGB[None], axis=2)  # (n, 3)
    votes = np.bincount(np.argmin(bd, axis=1), minlength=len(_BG_NAMES))
    bg_k = int(np.argmax(votes))
    bg_name = _BG_NAMES[bg_k]
    bg_est = np.median(border[np.argmin(bd, axis=1) == bg_k], axis=0).astype(np.float32)  # (3,)

    predicted: dict[str, str | None] = {
        "background": bg_name,
        "colour": None,
        "shape": None,
        "motion": None,
    }
    measures: dict[str, Any] = {
        "background_vote": float(votes[bg_k] / max(1, votes.sum())),
        "presence": 0.0,
        "size": float("nan"),
        "fill_ratio": float("nan"),
        "width_ratio": float("nan"),
        "colour_rgb": None,
        "colour_distance": float("nan"),
        "displacement": [float("nan"), float("nan")],
        "travel": float("nan"),
    }
    stability: dict[str, float] = {
        "area_rel_std": float("nan"),
        "colour_std": float("nan"),
        "flicker": float("nan"),
        "extra_components": 0.0,
        "background_error": float("nan"),
        "path_residual": float("nan"),
    }

    # --- object colour estimate from the clearly-not-background pixels
    diff = x.astype(np.float32)
    diff -= bg_est  # (f, h, w, 3): pixel - background, in place (these arrays are the cost)
    dist2 = np.square(diff) @ _ONES3  # (f, h, w): squared RGB distance to the background
    strong = dist2 > strong_threshold**2
    min_area = max(4, int(round(min_object_fraction * h * w)))
    alpha = np.zeros((f, h, w), dtype=np.float32)
    n_strong = int(strong.sum())
    if n_strong >= min_area:
        idx = np.flatnonzero(strong)
        if n_strong > 50_000:  # the median of a strided subset is as good and much cheaper
            idx = idx[:: n_strong // 50_000 + 1]
        v = np.median(diff.reshape(-1, 3)[idx], axis=0).astype(np.float32)  # object - background
        vv = float(v @ v)
        if vv > strong_threshold**2:
            # coverage estimate: projection of (pixel - background) on (object - background)
            alpha = diff @ (v / vv)  # (f, h, w)
            np.clip(alpha, 0.0, 1.0, out=alpha)

    mask = alpha > 0.5
    min_extra = max(3, int(round(0.001 * h * w)))
    present: list[int] = []
    areas: list[float] = []
    widths: list[float] = []
    fills: list[float] = []
    ratios: list[float] = []
    cents: list[tuple[float, float]] = []
    cols: list[np.ndarray] = []
    extras: list[int] = []
    object_region = np.zeros((f, h, w), dtype=bool)
    for t in range(f):
        main, area_px, extra = _main_component(mask[t], min_extra)
        extras.append(extra)
        if main is None or area_px < min_area:
            continue
        rows_any = np.nonzero(main.any(axis=1))[0]
        cols_any = np.nonzero(main.any(axis=0))[0]
        y0, y1 = max(0, rows_any[0] - 1), min(h, rows_any[-1] + 2)
        x0, x1 = max(0, cols_any[0] - 1), min(w, cols_any[-1] + 2)
        a = alpha[t, y0:y1, x0:x1].copy()  # coverage in the object's box (+1 px rim)
        mbox = main[y0:y1, x0:x1]
        # keep the main component and its anti-aliased rim, drop other blobs in the box
        a[mask[t, y0:y1, x0:x1] & ~mbox] = 0.0
        a[a < 0.05] = 0.0
        object_region[t, y0:y1, x0:x1] = True
        row_w = a.sum(axis=1)  # (rows,): the object's width in each row
        col_h = a.sum(axis=0)  # (cols,)
        area = float(row_w.sum())
        width = float(a.max(axis=0).sum())
        height = float(a.max(axis=1).sum())
        if area <= 0 or width <= 0 or height <= 0:
            continue
        rows_on = np.nonzero(row_w > 0.25)[0]
        if len(rows_on) >= 3:
            third = max(1, (rows_on[-1] - rows_on[0] + 1) // 3)
            top = float(row_w[rows_on[0] : rows_on[0] + third].mean())
            bottom = float(row_w[rows_on[-1] - third + 1 : rows_on[-1] + 1].mean())
            ratios.append(top / bottom if bottom > 0 else float("nan"))
        cx = float((col_h * (np.arange(x0, x1) + 0.5)).sum() / area / w)
        cy = float((row_w * (np.arange(y0, y1) + 0.5)).sum() / area / h)
        cents.append((cx, cy))
        core = mbox & (alpha[t, y0:y1, x0:x1] > 0.8)
        box = x[t, y0:y1, x0:x1]
        pix = box[core] if core.any() else box[mbox]
        cols.append(np.median(pix.astype(np.float32), axis=0))
        present.append(t)
        areas.append(area)
        widths.append(width / w)
        fills.append(area / (width * height))

    stability["extra_components"] = float(np.mean(extras)) if extras else 0.0
    measures["presence"] = len(present) / f
    object_found = len(present) > 0 and len(present) >= 0.5 * f

    # --- background stability: flicker and error over pixels away from any object
    bg_region = ~(object_region | (alpha > 0.05))  # (f, h, w)
    if bg_region.any():
        offset = bg_est - _BG_RGB[bg_k]
        if np.any(offset != 0):
            diff += offset  # now pixel - palette background
        err = np.abs(diff, out=diff) @ _ONES3  # (f, h, w), L1 over channels (diff is spent)
        stability["background_error"] = float(err[bg_region].mean() / 3.0)
    if f > 1:
        both = bg_region[1:] & bg_region[:-1]
        xi = x.astype(np.int16)
        step = np.einsum("fhwc->fhw", np.abs(xi[1:] - xi[:-1]))  # (f-1, h, w), L1
        stability["flicker"] = float(step[both].mean() / 3.0) if both.any() else float("nan")
    else:
        stability["flicker"] = 0.0

    if object_found:
        col = np.median(np.stack(cols), axis=0)
        k, d = _nearest(col, _COL_RGB)
        predicted["colour"] = _COL_NAMES[k] if d <= max_colour_distance else None
        measures["colour_rgb"] = [float(c) for c in col]
        measures["colour_distance"] = d

        fill = float(np.median(fills))
        valid = [r for r in ratios if not math.isnan(r)]
        ratio = float(np.median(valid)) if valid else float("nan")
        measures["fill_ratio"] = fill
        measures["width_ratio"] = ratio
        measures["size"] = float(np.median(widths))
        if not math.isnan(ratio):
            best, best_d = None, float("inf")
            for name in SHAPES:
                pf, pr = _SHAPE_PROTOTYPES[name]
                dd = math.hypot((fill - pf) / _FEATURE_SCALE[0], (ratio - pr) / _FEATURE_SCALE[1])
                if dd < best_d:
                    best, best_d = name, dd
            # a blob unlike all three ideal shapes is no shape of this world
            predicted["shape"] = best if best_d <= 3.0 else None
            measures["shape_distance"] = best_d

        ar = np.asarray(areas)
        stability["area_rel_std"] = float(ar.std() / ar.mean())
        stability["colour_std"] = float(np.stack(cols).std(axis=0).mean())

        if f == 1:
            predicted["motion"] = None  # one frame shows no motion either way
        elif len(present) >= 2:
            tt = np.asarray(present, dtype=np.float64)
            c = np.asarray(cents)  # (n, 2) normalised centroids
            design = np.stack([tt, np.ones_like(tt)], axis=1)
            coef, *_ = np.linalg.lstsq(design, c, rcond=None)  # (2, 2): slope, intercept
            dx, dy = (coef[0] * (f - 1)).tolist()
            resid = c - design @ coef
            stability["path_residual"] = float(np.sqrt((resid**2).sum(axis=1).mean()))
            measures["displacement"] = [dx, dy]
            measures["travel"] = float(math.hypot(dx, dy))
            if max(abs(dx), abs(dy)) < still_threshold:
                predicted["motion"] = "still"
            elif abs(dx) >= 2 * abs(dy):
                predicted["motion"] = "right" if dx > 0 else "left"
            elif abs(dy) >= 2 * abs(dx):
                predicted["motion"] = "down" if dy > 0 else "up"
            else:
                predicted["motion"] = "diagonal"

    correct = {k: predicted.get(k) == v for k, v in expected.items()}
    return {
        "predicted": predicted,
        "expected": expected,
        "correct": correct,
        "all_correct": all(correct.values()),
        "object_found": object_found,
        "measures": measures,
        "stability": stability,
    }


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracies over many ``evaluate_clip`` results.

    Returns:
        ``n``; ``accuracy`` (attribute -> fraction correct, over the results that state it);
        ``all_correct`` (fraction with every stated attribute right); ``object_found``;
        ``per_value`` (attribute -> expected value -> accuracy); ``stability`` (name -> mean over
        clips, NaN ignored); ``confusion`` (attribute -> "expected->predicted" -> count, for
        mistakes only).
    """
    rs = list(results)
    acc: dict[str, list[bool]] = {}
    per_value: dict[str, dict[str, list[bool]]] = {}
    confusion: dict[str, dict[str, int]] = {}
    stab: dict[str, list[float]] = {}
    for r in rs:
        for k, ok in r["correct"].items():
            acc.setdefault(k, []).append(bool(ok))
            exp = str(r["expected"][k])
            per_value.setdefault(k, {}).setdefault(exp, []).append(bool(ok))
            if not ok:
                key = f"{exp}->{r['predicted'].get(k)}"
                confusion.setdefault(k, {})
                confusion[k][key] = confusion[k].get(key, 0) + 1
        for k, v in r.get("stability", {}).items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                stab.setdefault(k, []).append(float(v))
    return {
        "n": len(rs),
        "accuracy": {k: float(np.mean(v)) for k, v in acc.items()},
        "all_correct": float(np.mean([r["all_correct"] for r in rs])) if rs else float("nan"),
        "object_found": float(np.mean([r["object_found"] for r in rs])) if rs else float("nan"),
        "per_value": {
            k: {e: float(np.mean(v)) for e, v in d.items()} for k, d in per_value.items()
        },
        "stability": {k: float(np.mean(v)) for k, v in stab.items()},
        "confusion": confusion,
    }
