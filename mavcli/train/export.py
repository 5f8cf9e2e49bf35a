"""Assemble a pack from the EMA weights of each stage's last training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from mavcli.errors import UserInputError
from mavcli.models.presets import preset_configs
from mavcli.models.stages import build
from mavcli.models.text import Tokenizer
from mavcli.train.checkpoint import read_checkpoint
from mavcli.weights.pack import Pack, save_pack
from mavcli.weights.safetensors_io import load_state_strict

# pack stage <- (training stage, prefix inside that stage's model)
SOURCES = {
    "text_encoder": ("clip", "text_encoder."),
    "image_encoder": ("clip", "image_encoder."),
    "prior": ("prior", ""),
    "keyframes": ("keyframes", ""),
    "interpolation": ("interpolation", ""),
    "sr_video": ("sr_video", ""),
    "sr_image": ("sr_image", ""),
}


def export_pack(runs: str | Path, out: str | Path, *, preset: str = "shapes", card: str = "",
                dtype: torch.dtype = torch.float16, overwrite: bool = False) -> Path:
    runs = Path(runs)
    vocab = None
    networks = {}
    steps = {}
    for stage, (source, prefix) in SOURCES.items():
        path = runs / source / "last.safetensors"
        if not path.is_file():
            raise UserInputError(f"no checkpoint for stage {source} at {path}: train it first (mav train {source})")
        step, meta, tensors, _ = read_checkpoint(path)
        steps[source] = step
        if vocab is None:  # the clip stage comes first and defines the vocabulary
            vocab = meta["vocab"]
        elif source in ("prior", "keyframes") and meta["vocab"] != vocab:  # the stages that read text
            raise UserInputError(f"{path} was trained with another vocabulary than the clip stage")
        if meta["config"]["preset"] != preset:
            raise UserInputError(f"{path} was trained with preset {meta['config']['preset']!r}, not {preset!r}")
        tokenizer = Tokenizer(vocab)
        configs, settings = preset_configs(preset, len(vocab))
        net = build(stage, configs[stage])
        sub = {k[len("ema/") + len(prefix):]: v for k, v in tensors.items() if k.startswith("ema/" + prefix)}
        load_state_strict(net, sub, f"{path} ({stage})")
        networks[stage] = net
    pack = Pack(None, networks, tokenizer, settings, card=card)
    return save_pack(out, pack, dtype=dtype, overwrite=overwrite)
