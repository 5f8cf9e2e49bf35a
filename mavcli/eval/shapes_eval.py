"""`mav eval shapes`: generate a video per prompt and judge it from pixels alone
(shapes_metrics), the acceptance test of the default pack (issue 6): by default every
held-out colour-shape pair with every motion and background, in canonical wording."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mavcli.data.shapes import BACKGROUNDS, HELD_OUT, MOTIONS
from mavcli.errors import UserInputError
from mavcli.eval.shapes_metrics import ATTRIBUTES, evaluate_clip, summarize


def canonical_prompt(colour: str, shape: str, motion: str, background: str) -> str:
    if motion == "still":
        return f"a {colour} {shape} standing still on a {background} background"
    return f"a {colour} {shape} moving {motion} on a {background} background"


def default_prompts(pairs: Iterable[tuple[str, str]] = sorted(HELD_OUT), motions: Iterable[str] = MOTIONS,
                    backgrounds: Iterable[str] = tuple(BACKGROUNDS)) -> list[str]:
    return [canonical_prompt(c, s, m, b) for c, s in pairs for m in motions for b in backgrounds]


@dataclass
class EvalReport:
    pack: str
    prompts: int
    summary: dict
    rows: list[dict] = field(default_factory=list)
    seconds_per_video: float = 0.0


def run_shapes_eval(pipe, prompts: list[str], *, seed: int = 0, steps=None,
                    on_video: Callable[[int, int, dict], None] | None = None,
                    save_dir: Path | None = None, stop_after: str | None = None,
                    candidates: int | None = None, matcher_guidance: float | None = None,
                    select_times: tuple[float, ...] | None = None) -> EvalReport:
    """Generate (seed, seed+1, ...) and evaluate every prompt; `on_video(i, n, row)` after each.
    `stop_after` ("keyframes", "interpolation", "sr_video") judges an early stage's output, to
    tell which stage loses a fact. `candidates` / `matcher_guidance` / `select_times`: as in
    `MakeAVideoPipeline.keyframes` (default: the pack's)."""
    rows = []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        video = pipe(prompt, seed=seed + i, steps=steps, stop_after=stop_after, candidates=candidates,
                     matcher_guidance=matcher_guidance, select_times=select_times)
        result = evaluate_clip(video.frames, prompt)
        row = {"prompt": prompt, "seed": seed + i, **result, "seconds": round(sum(video.timings.values()), 2)}
        rows.append(row)
        if save_dir is not None:
            from mavcli.video import write_video

            write_video(save_dir / f"{i:03d}-{prompt.replace(' ', '-')}.mp4", video.frames, video.fps,
                        metadata={"prompt": prompt, "seed": seed + i}, overwrite=True)
        if on_video is not None:
            on_video(i + 1, len(prompts), row)
    elapsed = time.perf_counter() - t0
    summary = summarize(rows)
    return EvalReport(str(pipe.pack.path), len(prompts), summary, rows, elapsed / max(1, len(prompts)))


#: a clip is stable when its object's area varies by less than this (relative std over frames)
STABLE_AREA_STD = 0.10


def breakdown(rows: list[dict]) -> dict:
    """What one seed set says beyond the accuracies: per expected shape and per background,
    the clips with the shape right, all four right and stable; the object's fill ratio (min,
    median) per shape and background; the share of stable clips."""
    def stable(r: dict) -> bool:
        v = (r.get("stability") or {}).get("area_rel_std")
        return v is not None and not math.isnan(v) and v < STABLE_AREA_STD

    groups: dict[str, dict[str, list[dict]]] = {"shape": {}, "background": {}}
    fills: dict[str, list[float]] = {}
    for r in rows:
        exp = r["expected"]
        for key in groups:
            if key in exp:
                groups[key].setdefault(str(exp[key]), []).append(r)
        fill = r["measures"].get("fill_ratio")
        if fill is not None and not math.isnan(fill) and "shape" in exp:
            fills.setdefault(f"{exp['shape']} on {exp.get('background', '?')}", []).append(float(fill))
    out: dict = {"stable": sum(map(stable, rows)) / max(1, len(rows)), "stable_threshold": STABLE_AREA_STD}
    for key, by_value in groups.items():
        out[f"by_{key}"] = {v: {"n": len(rs), "shape_right": sum(bool(r["correct"].get("shape")) for r in rs),
                                "all_right": sum(bool(r["all_correct"]) for r in rs), "stable": sum(map(stable, rs))}
                            for v, rs in sorted(by_value.items())}
    out["fill_ratio"] = {k: {"min": min(v), "median": float(np.median(v)), "n": len(v)} for k, v in sorted(fills.items())}
    return out


def disjoint_seed_sets(bases: list[int], count: int) -> None:
    """Refuse seed sets that share a seed: set k uses bases[k] .. bases[k] + count - 1."""
    spans = sorted((b, b + count) for b in bases)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        if b0 < a1:
            raise UserInputError(f"--seeds {a0} and {b0} overlap: each set uses {count} seeds from its first "
                                 f"(one per prompt); start the next at {a1} or later")


def write_report(report: EvalReport, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"pack": report.pack, "prompts": report.prompts, "summary": report.summary,
                               "seconds_per_video": report.seconds_per_video, "videos": report.rows}, indent=2, default=_plain))
    os.replace(tmp, path)
    return path


def write_seed_sets(reports: list[tuple[int, EvalReport]], breakdowns: list[dict], path: Path) -> Path:
    """One JSON report for several seed sets: each set's summary, `breakdown` and videos."""
    tmp = path.with_name(f".{path.name}.partial")
    sets = [{"first_seed": seed, "prompts": r.prompts, "summary": r.summary, "breakdown": b,
             "seconds_per_video": r.seconds_per_video, "videos": r.rows} for (seed, r), b in zip(reports, breakdowns)]
    tmp.write_text(json.dumps({"pack": reports[0][1].pack, "seed_sets": sets}, indent=2, default=_plain))
    os.replace(tmp, path)
    return path


def _plain(value):
    """numpy scalars and arrays in the report become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


__all__ = ["ATTRIBUTES", "STABLE_AREA_STD", "EvalReport", "breakdown", "canonical_prompt", "default_prompts",
           "disjoint_seed_sets", "run_shapes_eval", "write_report", "write_seed_sets"]
