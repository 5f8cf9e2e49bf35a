"""The pixel-only evaluation recognises the renderer's own clips and is not fooled."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mavcli.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    ShapeSpec,
    caption,
    render,
    sample_spec,
)
from mavcli.eval.shapes_metrics import ATTRIBUTES, evaluate_clip, summarize


def _grid_results(size: int, frames: int) -> list[dict]:
    results = []
    for i, (c, s, m, b) in enumerate(itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)):
        spec = sample_spec(
            np.random.default_rng(1000 + i),
            colours=[c],
            shapes=[s],
            motions=[m],
            backgrounds=[b],
            exclude_held_out=False,  # evaluation covers the held-out pairs too
        )
        results.append(evaluate_clip(render(spec, frames, size), caption(spec)))
    return results


@pytest.mark.parametrize(("size", "frames"), [(64, 16), (128, 25)])
def test_every_rendered_combination_is_recognised(size: int, frames: int) -> None:
    results = _grid_results(size, frames)
    summary = summarize(results)
    assert summary["n"] == 6 * 3 * 5 * 3
    for attr in ATTRIBUTES:
        assert summary["accuracy"][attr] >= 0.99, (attr, summary["confusion"])
    assert summary["all_correct"] >= 0.99
    assert summary["object_found"] == 1.0
    st = summary["stability"]
    assert st["area_rel_std"] < 0.01
    assert st["colour_std"] < 1.0
    assert st["flicker"] < 0.5
    assert st["extra_components"] == 0.0
    assert st["background_error"] < 0.5
    tol = 1.5 / size  # measured sizes are good to about a pixel
    for r in results:
        m = r["measures"]
        assert 0.28 - tol <= m["size"] <= 0.40 + tol
        if r["expected"]["motion"] != "still":
            assert 0.35 - tol <= m["travel"] <= 0.55 + tol
        else:
            assert m["travel"] < 0.01


def test_all_background_clip_has_no_object() -> None:
    for bg in BACKGROUNDS:
        clip = np.broadcast_to(np.asarray(BACKGROUNDS[bg], np.uint8), (16, 64, 64, 3)).copy()
        r = evaluate_clip(clip, f"a red circle moving left on a {bg} background")
        assert r["object_found"] is False
        assert r["predicted"]["colour"] is None
        assert r["predicted"]["shape"] is None
        assert r["predicted"]["motion"] is None
        assert r["correct"] == {
            "colour": False,
            "shape": False,
            "motion": False,
            "background": True,
        }
        assert r["all_correct"] is False


def test_low_noise_is_tolerated_and_measured() -> None:
    rng = np.random.default_rng(0)
    for _ in range(6):
        spec = sample_spec(rng)
        clip = render(spec, 16, 64).astype(np.float32)
        noisy = np.clip(clip + rng.normal(0, 8, clip.shape), 0, 255).astype(np.uint8)
        r = evaluate_clip(noisy, spec)
        assert r["all_correct"], (spec, r["predicted"])
        assert r["stability"]["flicker"] > 3.0  # noise shows up as flicker


def test_wrong_prompt_is_scored_wrong() -> None:
    spec = ShapeSpec("red", "circle", "left", "black", 0.33, (0.7, 0.5), 0.4)
    clip = render(spec, 16, 64)
    r = evaluate_clip(clip, "a blue square moving right on a white background")
    assert r["predicted"] == {
        "background": "black",
        "colour": "red",
        "shape": "circle",
        "motion": "left",
    }
    assert r["correct"] == {"colour": False, "shape": False, "motion": False, "background": False}
    r = evaluate_clip(clip, {"shape": "circle"})  # only the facts given are scored
    assert r["correct"] == {"shape": True}


def test_second_object_and_unsteady_size_are_flagged() -> None:
    a = ShapeSpec("green", "circle", "still", "white", 0.3, (0.25, 0.25), 0.0)
    b = ShapeSpec("green", "square", "still", "white", 0.3, (0.75, 0.75), 0.0)
    ca, cb = render(a, 8, 64), render(b, 8, 64)
    both = np.where(np.any(cb != 255, axis=-1, keepdims=True), cb, ca)
    r = evaluate_clip(both, a)
    assert r["stability"]["extra_components"] == 1.0

    frames = []
    for size in np.linspace(0.28, 0.40, 8):
        s = ShapeSpec("orange", "square", "still", "black", float(size), (0.5, 0.5), 0.0)
        frames.append(render(s, 1, 64)[0])
    r = evaluate_clip(np.stack(frames), "a orange square standing still on a black background")
    assert r["stability"]["area_rel_std"] > 0.1
    assert r["predicted"]["shape"] == "square" and r["predicted"]["motion"] == "still"


def test_background_flicker_and_diagonal_motion() -> None:
    spec = ShapeSpec("blue", "triangle", "still", "gray", 0.3, (0.5, 0.5), 0.0)
    clip = render(spec, 10, 64).astype(np.int16)
    clip[1::2] = np.clip(clip[1::2] + 30, 0, 255)  # whole frame brightens every other frame
    r = evaluate_clip(clip.astype(np.uint8), spec)
    assert r["stability"]["flicker"] > 20

    frames = np.zeros((12, 64, 64, 3), np.uint8)
    for t in range(12):
        x = y = 6 + 2 * t
        frames[t, y : y + 16, x : x + 16] = COLOURS["yellow"]
    r = evaluate_clip(frames, "a yellow square moving right on a black background")
    assert r["predicted"]["motion"] == "diagonal"
    assert r["predicted"]["shape"] == "square" and r["predicted"]["colour"] == "yellow"
    assert r["correct"]["motion"] is False


def test_colour_outside_the_palette_is_not_a_colour() -> None:
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    frames[:, 20:40, 20:40] = 255  # a white square: white is no object colour of this world
    r = evaluate_clip(frames, "a yellow square standing still on a black background")
    assert r["predicted"]["colour"] is None
    assert r["measures"]["colour_distance"] > 80


def test_summarize_counts() -> None:
    ok = ShapeSpec("purple", "square", "down", "white", 0.3, (0.5, 0.3), 0.4)
    results = [
        evaluate_clip(render(ok, 8, 48), ok),
        evaluate_clip(render(ok, 8, 48), "a purple square moving up on a white background"),
    ]
    s = summarize(results)
    assert s["n"] == 2
    assert s["accuracy"] == {"colour": 1.0, "shape": 1.0, "motion": 0.5, "background": 1.0}
    assert s["all_correct"] == 0.5
    assert s["per_value"]["motion"] == {"down": 1.0, "up": 0.0}
    assert s["confusion"] == {"motion": {"up->down": 1}}


def test_rejects_bad_input() -> None:
    prompt = "a red circle moving left on a black background"
    with pytest.raises(ValueError, match="uint8"):
        evaluate_clip(np.zeros((2, 8, 8, 3), np.float32), prompt)
    with pytest.raises(ValueError, match="shape"):
        evaluate_clip(np.zeros((2, 8, 8), np.uint8), prompt)
