"""Tiny random latent video models in the diffusers layout, built with the reference libraries
(diffusers' UNet3DConditionModel, AutoencoderKL, DDIMScheduler and TextToVideoSDPipeline,
transformers' CLIPTextModel and CLIPTokenizer): the oracle that mavcli's loader and networks
are tested against, since the Hub's real weights cannot be downloaded here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET = dict(
    block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=16,
    attention_head_dim=8, in_channels=4, out_channels=4, sample_size=8,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
)
VAE = dict(
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4, in_channels=3,
    out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    sample_size=32,
)
CLIP = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            max_position_embeddings=20, hidden_act="gelu", projection_dim=16)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", num_train_timesteps=1000)


def write_tokenizer_files(folder: Path, max_length: int = 20) -> None:
    """A byte-level CLIP vocabulary with no merges: every word tokenises into its characters."""
    folder.mkdir(parents=True, exist_ok=True)
    # byte-level BPE's alphabet: printable bytes stand for themselves, the rest for 256 + n
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero-initialised layers included), so the
    equality tests exercise every weight."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def build_reference(folder: Path, seed: int = 0, *, unet_overrides: dict | None = None):
    """Save a tiny TextToVideoSDPipeline to `folder` (safetensors) and return it (eval mode)."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**{**UNET, **(unet_overrides or {})})
    vae = AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP, vocab_size=514, bos_token_id=512, eos_token_id=513,
                                                pad_token_id=513))
    for i, m in enumerate((unet, vae, text_encoder)):
        perturb(m, seed * 10 + i)
    tok_dir = folder / "_tokenizer_src"
    write_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=DDIMScheduler(**SCHEDULER))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for p in tok_dir.iterdir():
        p.unlink()
    tok_dir.rmdir()
    for m in (unet, vae, text_encoder):
        m.eval()
    return pipe
