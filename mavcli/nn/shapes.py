"""Shape checks shared by the layers: every layer takes images `(b, c, h, w)` or videos
`(b, c, f, h, w)`; anything else is a ValueError that says what was expected."""

from __future__ import annotations

import torch


def check_input(x: torch.Tensor, channels: int, layer: str) -> bool:
    """Validate `x` for a layer with `channels` input channels; return True for a video (5-D)."""
    if x.ndim not in (4, 5):
        raise ValueError(
            f"{layer} takes images (batch, channels, height, width) or videos "
            f"(batch, channels, frames, height, width); got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{layer} was built for {channels} channels but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); channels are dimension 1"
        )
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{layer} got an empty tensor of shape {tuple(x.shape)}: every dimension must be >= 1")
    return x.ndim == 5
