"""The five networks of the cascade (Make-A-Video section 3, DESIGN.md section 1) plus the
text and image encoders, by stage name, with the class and config each is built from."""

from __future__ import annotations

from mavcli.models import SAMPLED_STAGES
from mavcli.models.flowinterp import FlowInterpConfig, FlowInterpNet
from mavcli.models.matcher import MatcherConfig, VideoTextMatcher
from mavcli.models.prior import Prior, PriorConfig
from mavcli.models.text import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from mavcli.models.unet import SpaceTimeUnet, UnetConfig

STAGES: dict[str, tuple[type, type]] = {
    "text_encoder": (TextEncoder, TextEncoderConfig),  # C_x
    "image_encoder": (ImageEncoder, ImageEncoderConfig),  # CLIP image tower (training / eval only)
    "prior": (Prior, PriorConfig),  # P
    "keyframes": (SpaceTimeUnet, UnetConfig),  # D^t
    "interpolation": (SpaceTimeUnet, UnetConfig),  # F_i
    "sr_video": (SpaceTimeUnet, UnetConfig),  # SR_l^t
    "sr_image": (SpaceTimeUnet, UnetConfig),  # SR_h
    # not stages of the paper's cascade: the noised video-text matcher that steers D^t's samples
    # and ranks them (optional in a pack); a second matcher that only ranks them, where a pack
    # has one (trained to also know that sizes are steady); the real-footage interpolator, in a
    # pack of its own
    "matcher": (VideoTextMatcher, MatcherConfig),
    "ranker": (VideoTextMatcher, MatcherConfig),
    "flow_interpolation": (FlowInterpNet, FlowInterpConfig),
}

# what generation needs; the image encoder is only used to train the prior and decoder
GENERATION_STAGES = ("text_encoder", *SAMPLED_STAGES)


def build(stage: str, config) -> object:
    cls, config_cls = STAGES[stage]
    if not isinstance(config, config_cls):
        raise TypeError(f"stage {stage} takes a {config_cls.__name__}, got {type(config).__name__}")
    return cls(config)
