"""Network sizes and settings of a whole pack, by preset: `tiny` (tests: channels 8-16, 16x16
frames) and `shapes` (the shipped default pack, sized for CPU training; the paper's ratios
scaled down: keyframes -> x4 frames -> x2 -> x2 resolution). The `shapes` preset is the one
source of the shipped pack's networks and settings: a fresh export gets what ships."""

from __future__ import annotations

import torch

from mavcli.models.matcher import MatcherConfig
from mavcli.models.prior import PriorConfig
from mavcli.models.stages import build
from mavcli.models.text import ImageEncoderConfig, TextEncoderConfig, Tokenizer
from mavcli.models.unet import UnetConfig
from mavcli.weights.pack import Pack, PackSettings


def preset_configs(preset: str, vocab_size: int) -> tuple[dict[str, object], PackSettings]:
    if preset == "tiny":
        e, t = 16, 16
        unet = dict(dim=8, dim_mults=(1, 2), attn_levels=(False, True), dim_head=8, heads=2, blocks_per_level=1)
        sr = dict(dim=8, dim_mults=(1, 2), dim_head=8, heads=2, blocks_per_level=1)
        settings = PackSettings(keyframes=3, keyframe_size=8, fps=4.0, frame_skip=3, sr_video_size=16, sr_image_size=32,
                                steps={"prior": 3, "keyframes": 3, "interpolation": 2, "sr_video": 2, "sr_image": 2},
                                chunk_frames=4, decoder_word_tokens=True, interp_prefill=True)
        configs = {
            "text_encoder": TextEncoderConfig(vocab_size=vocab_size, dim=t, depth=1, heads=2, embed_dim=e),
            "image_encoder": ImageEncoderConfig(image_size=8, channels=(8, 16), embed_dim=e),
            "prior": PriorConfig(embed_dim=e, text_dim=t, dim=16, depth=1, heads=2),
            "matcher": MatcherConfig(text_dim=t, channels=(8, 16), embed_dim=e, pool_heads=2, time_dim=16),
        }
    elif preset == "shapes":
        e, t = 64, 128
        unet = dict(dim=32, dim_mults=(1, 2, 2), attn_levels=(False, True, True), dim_head=32, heads=4, blocks_per_level=1)
        sr = dict(dim=16, dim_mults=(1, 2, 2), dim_head=32, heads=2, blocks_per_level=1)
        # exactly the shipped pack's settings (tests/test_train.py compares them with pack.json);
        # the model card (mavcli/packs/shapes/README.md) says how each was chosen
        settings = PackSettings(sr_tile=32, sr_tile_overlap=8, decoder_word_tokens=True, interp_prefill=True,
                                interp_start=0.1, keyframe_candidates=6, matcher_guidance=50.0, keyframe_select_times=(0.85, 0.3),
                                guidance={**PackSettings().guidance, "keyframes": 1.5},
                                sr_video_start=0.05, sr_image_start=0.2, stage_samplers={"keyframes": "ddpm"},
                                decoder_words=("moving", "left", "right", "up", "down", "standing", "still"),
                                steps={"prior": 16, "keyframes": 24, "interpolation": 4, "sr_video": 1, "sr_image": 2})
        configs = {
            "text_encoder": TextEncoderConfig(vocab_size=vocab_size, dim=t, depth=3, heads=4, embed_dim=e),
            "image_encoder": ImageEncoderConfig(image_size=32, channels=(32, 64, 128), embed_dim=e),
            "prior": PriorConfig(embed_dim=e, text_dim=t, dim=256, depth=4, heads=4),
            "matcher": MatcherConfig(text_dim=t, channels=(16, 32, 64), embed_dim=e, pool_heads=4),
        }
    else:
        raise ValueError(f"unknown preset {preset!r}; choose 'tiny' or 'shapes'")
    # the decoder also pools the text into its time embedding: motion direction is a global fact
    configs["keyframes"] = UnetConfig(**unet, cond_dim=e, context_dim=t, context_pool_heads=4, fps_cond=True)
    # F_i sees no text: frames, mask, frame skip and fps say all it needs, and the same network
    # then serves real footage, which has no caption
    configs["interpolation"] = UnetConfig(**{**unet, "attn_levels": (False,) * (len(unet["dim_mults"]) - 1) + (True,)},
                                          fps_cond=True, skip_cond=True, extra_in_channels=4, guidance_null=False)
    levels = len(sr["dim_mults"])
    # SR_l^t: temporal attention at the lowest level keeps hallucinated detail consistent
    configs["sr_video"] = UnetConfig(**sr, attn_levels=(False,) * (levels - 1) + (True,), mid_attn=True,
                                     extra_in_channels=3, guidance_null=False)
    # SR_h: convolutional and spatial only; trained on crops, run on whole frames
    configs["sr_image"] = UnetConfig(**sr, attn_levels=(False,) * levels, mid_attn=False, temporal=False,
                                     extra_in_channels=3, guidance_null=False)
    return configs, settings


def init_pack(tokenizer: Tokenizer, preset: str = "tiny", *, seed: int = 0) -> Pack:
    """A freshly initialised pack (random weights) of the preset's sizes."""
    configs, settings = preset_configs(preset, len(tokenizer.vocab))
    torch.manual_seed(seed)
    networks = {stage: build(stage, cfg) for stage, cfg in configs.items()}
    return Pack(None, networks, tokenizer, settings, card=f"# freshly initialised `{preset}` pack (untrained)\n")
