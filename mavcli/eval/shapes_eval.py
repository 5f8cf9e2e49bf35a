"""`mav eval shapes`: generate a video per prompt and judge it from pixels alone
(shapes_metrics), the acceptance test of the default pack (issue 6): by default every
held-out colour-shape pair with every motion and background, in canonical wording."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mavcli.data.shapes import BACKGROUNDS, HELD_OUT, MOTIONS
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
                    candidates: int | None = None, matcher_guidance: float | None = None) -> EvalReport:
    """Generate (seed, seed+1, ...) and evaluate every prompt; `on_video(i, n, row)` after each.
    `stop_after` ("keyframes", "interpolation", "sr_video") judges an early stage's output, to
    tell which stage loses a fact. `candidates` / `matcher_guidance`: as in
    `MakeAVideoPipeline.keyframes` (default: the pack's)."""
    rows = []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        video = pipe(prompt, seed=seed + i, steps=steps, stop_after=stop_after, candidates=candidates,
                     matcher_guidance=matcher_guidance)
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


def write_report(report: EvalReport, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"pack": report.pack, "prompts": report.prompts, "summary": report.summary,
                               "seconds_per_video": report.seconds_per_video, "videos": report.rows}, indent=2, default=_plain))
    os.replace(tmp, path)
    return path


def _plain(value):
    """numpy scalars and arrays in the report become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


__all__ = ["ATTRIBUTES", "EvalReport", "canonical_prompt", "default_prompts", "run_shapes_eval", "write_report"]
