"""The published configurations of the open latent video models (mavcli/weights/open_configs,
provenance in its README): diffusers' UNet3DConditionModel, AutoencoderKL and transformers'
CLIPTextModel built on the meta device from them, and every U-Net tensor mapped by name and
shape onto mavcli's LatentUnet3D and back. No weights are needed: the real repositories' key
sets and shapes follow from their configs."""

from __future__ import annotations

import json

import pytest
import torch

from mavcli.bench.latent import CONFIG_DIR
from mavcli.models.latent_unet import LatentUnet3D
from mavcli.weights.diffusers_layout import unet_config_from_diffusers, unet_from_diffusers, unet_to_diffusers

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PACKS = sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "unet_config.json").is_file())


def _config(pack: str, part: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / pack / f"{part}_config.json").read_text()).items()
            if not k.startswith("_")}


def test_the_packs_with_published_unet_configs():
    assert "modelscope" in PACKS and "zeroscope-xl" in PACKS


@pytest.mark.parametrize("pack", PACKS)
def test_real_unet_config_maps_every_tensor_both_ways(pack):
    cfg = _config(pack, "unet")
    with torch.device("meta"):
        reference = diffusers.UNet3DConditionModel.from_config(cfg)
        ours = LatentUnet3D(unet_config_from_diffusers(cfg, f"{pack} unet"))
    ref_state = reference.state_dict()
    back = unet_to_diffusers(ours.state_dict())
    assert set(back) == set(ref_state)
    bad = [k for k in ref_state if tuple(back[k].shape) != tuple(ref_state[k].shape)]
    assert not bad, bad[:5]
    unet_from_diffusers(ours, ref_state, f"{pack} unet")  # strict both ways, shapes checked
    n_ref = sum(v.numel() for v in ref_state.values())
    assert sum(v.numel() for v in ours.state_dict().values()) == n_ref
    assert n_ref > 1_000_000_000  # the full-size 1.4B-parameter network, not a toy


@pytest.mark.parametrize("pack", [p for p in PACKS if (CONFIG_DIR / p / "vae_config.json").is_file()])
def test_real_vae_config_builds_the_sd_vae(pack):
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL.from_config(_config(pack, "vae"))
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4
    assert 80e6 < sum(p.numel() for p in vae.parameters()) < 90e6  # SD's 83.7M-parameter VAE


@pytest.mark.parametrize("pack", [p for p in PACKS if (CONFIG_DIR / p / "text_encoder_config.json").is_file()])
def test_real_text_encoder_config_builds_open_clip_h(pack):
    cfg = transformers.CLIPTextConfig(**_config(pack, "text_encoder"))
    with torch.device("meta"):
        model = transformers.CLIPTextModel(cfg)
    assert cfg.hidden_size == _config(pack, "unet")["cross_attention_dim"]  # its states feed the U-Net's cross-attention
    assert 300e6 < sum(p.numel() for p in model.parameters()) < 400e6


def test_memory_check_counts_the_published_weights_from_configs_alone(tmp_path):
    """`parameter_count` (what the memory check before a download reads) against ModelScope's
    pinned fp16 files in weights.toml: two bytes per parameter plus each file's JSON header."""
    from mavcli.weights.diffusers_layout import parameter_count
    from mavcli.weights.manifest import load_manifest

    for part in ("unet", "vae", "text_encoder"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text((CONFIG_DIR / "modelscope" / f"{part}_config.json").read_text())
    entry = load_manifest().packs["modelscope"]
    stored = sum(f.size for f in entry.files if f.path.endswith(".safetensors"))
    headers = stored - 2 * parameter_count(tmp_path)
    assert 0 < headers < 2**20, headers  # 256 kB of headers for 1.84 billion parameters
