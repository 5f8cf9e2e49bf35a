"""The bundled shapes pack itself, one sampler step per stage, against frames recorded from it.

A change anywhere in the cascade (layers, samplers, schedules, pack settings, seeding) that
alters what `mav generate` draws shows up here. The record is the frames' 4x4 block means
(tests/data/shapes_pack_golden.safetensors, 29 x 32 x 32 x 3): a bit-exact hash of the frames
would also change with the torch build and the CPU's kernels, which legitimately round
differently, so the check is a tolerance of 1/255 on the block means (a real change moves them
by far more). Regenerate after an intended change with `python tests/test_bundled_pack.py` and
say why in the commit.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from einops import reduce
from safetensors.numpy import load_file, save_file

GOLDEN = Path(__file__).parent / "data" / "shapes_pack_golden.safetensors"
PROMPT, SEED = "a blue square moving up on a white background", 0


def one_step_video(precision: str = "float32") -> np.ndarray:
    """float32 by default: the record is of the float32 path, which every CPU can run."""
    from mavcli import MakeAVideoPipeline

    pipe = MakeAVideoPipeline.from_pretrained(None, device="cpu", precision=precision)
    return pipe(PROMPT, seed=SEED, steps=1).frames  # (f, h, w, 3) uint8


def block_means(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(reduce(frames.astype(np.float32), "f (h a) (w b) c -> f h w c", "mean", a=4, b=4))


def test_bundled_pack_draws_what_it_drew():
    frames = one_step_video()
    golden = load_file(GOLDEN)["block_means"]
    assert frames.shape == (29, 128, 128, 3) and frames.dtype == np.uint8
    diff = np.abs(block_means(frames) - golden)
    assert diff.max() <= 1.0, f"frames moved: max {diff.max():.2f}, mean {diff.mean():.4f} (0-255)"
    # and even at one step per stage it is the prompt's video: a white background (the median
    # pixel) with a bluish object in every frame (blue above red by 40 on >= 60 pixels, and
    # on >= 300 in the clip's best frames: one step draws the first and last frames faintly,
    # SR_l^t's one step from t = 0.05 keeps them faint)
    assert (np.median(frames.reshape(-1, 3), axis=0) > 240).all()
    bluish = (frames[..., 2].astype(int) - frames[..., 0] > 40).reshape(29, -1).sum(1)
    assert bluish.min() >= 60 and np.sort(bluish)[-10:].min() >= 300


if __name__ == "__main__":
    frames = one_step_video()
    save_file({"block_means": block_means(frames)}, GOLDEN,
              metadata={"torch": torch.__version__, "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest()})
    print(f"wrote {GOLDEN} (torch {torch.__version__})", file=sys.stderr)
