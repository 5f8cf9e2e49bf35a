"""Assemble a pack from the EMA weights of each stage's last training checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mavcli.errors import UserInputError
from mavcli.models import SAMPLED_STAGES
from mavcli.models.config import config_from_dict, config_to_dict
from mavcli.models.presets import preset_configs
from mavcli.models.stages import STAGES, build
from mavcli.models.text import Tokenizer
from mavcli.train.checkpoint import read_checkpoint
from mavcli.train.tasks import FLOW_INTERP_CONFIGS
from mavcli.weights.pack import Pack, load_pack, save_pack
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
    "matcher": ("matcher", ""),
    "ranker": ("ranker", ""),
    "flow_interpolation": ("flow_interpolation", ""),
}
CASCADE = ("text_encoder", "image_encoder", *SAMPLED_STAGES, "matcher", "ranker")
# a cascade pack works without them (no ranking or steering of keyframes; without a ranker the
# matcher ranks)
OPTIONAL = ("matcher", "ranker")


def network_configs(source: str, model: torch.nn.Module) -> dict[str, dict]:
    """The config of every pack network that training stage `source` makes, by pack stage, for
    the checkpoint's metadata: export then builds each network as it was trained, whatever the
    preset says now."""
    out = {}
    for stage, (src, prefix) in SOURCES.items():
        if src == source:
            net = getattr(model, prefix.rstrip(".")) if prefix else model
            out[stage] = config_to_dict(net.config)
    return out


def _trained_start(path: Path) -> float | None:
    """The SR start time a checkpoint was trained for by `--sr-start` (None: not given)."""
    _, meta, _, _ = read_checkpoint(path)
    return meta.get("config", {}).get("sr_start")


def export_pack(runs: str | Path, out: str | Path, *, preset: str = "shapes", card: str = "",
                dtype: torch.dtype = torch.float16, overwrite: bool = False, base: str | Path | None = None,
                stages: tuple[str, ...] = CASCADE) -> Path:
    """Write a pack from the EMA weights of each stage's last checkpoint under `runs`. With a
    `base` pack, stages that have no checkpoint keep the base pack's network (and the pack keeps
    the base's settings and vocabulary): train one stage further, export, compare. `stages`
    picks the networks (default: the whole cascade; ("flow_interpolation",) for the real-footage
    interpolator's own pack, which has no text stage and no tokenizer)."""
    unknown = [s for s in stages if s not in SOURCES]
    if unknown or not stages:
        raise UserInputError(f"unknown pack stages {unknown}; choose from {', '.join(SOURCES)}")
    runs = Path(runs)
    base_pack = load_pack(base) if base is not None else None
    vocab = base_pack.tokenizer.vocab if base_pack is not None else None
    networks = {}
    for stage in stages:
        source, prefix = SOURCES[stage]
        path = runs / source / "last.safetensors"
        if not path.is_file():
            if base_pack is not None and stage in base_pack.networks:
                networks[stage] = base_pack.networks[stage].float()
                continue
            if stage in OPTIONAL:
                continue
            hint = " (or pass --base PACK to keep that pack's network)" if base_pack is None else ""
            raise UserInputError(f"no checkpoint for stage {source} at {path}: train it first (mav train {source}){hint}")
        _, meta, tensors, _ = read_checkpoint(path)
        if source in ("clip", "prior", "keyframes", "matcher", "ranker"):  # the stages that read text share one vocabulary
            if vocab is None:  # the clip stage comes first and defines it
                vocab = meta["vocab"]
            elif meta["vocab"] != vocab:
                raise UserInputError(f"{path} was trained with another vocabulary than the clip stage")
        if meta["config"]["preset"] != preset:
            raise UserInputError(f"{path} was trained with preset {meta['config']['preset']!r}, not {preset!r}")
        if stage in meta.get("networks", {}):  # the config it was trained with
            net = build(stage, config_from_dict(STAGES[stage][1], meta["networks"][stage]))
        elif stage == "flow_interpolation":  # checkpoints from before configs were saved
            net = build(stage, FLOW_INTERP_CONFIGS[preset])
        else:
            configs, _ = preset_configs(preset, len(vocab or ()))
            net = build(stage, configs[stage])
        sub = {k[len("ema/") + len(prefix):]: v for k, v in tensors.items() if k.startswith("ema/" + prefix)}
        load_state_strict(net, sub, f"{path} ({stage})")
        networks[stage] = net
    _, settings = preset_configs(preset, len(vocab or ()))
    if base_pack is not None:
        # sampling settings (steps, guidance, samplers, start times, candidates, matcher
        # guidance) are the base pack's, never the preset's: they were tuned on that pack. Only
        # what a retrained network was conditioned on in training follows the preset it used.
        def retrained(stage: str) -> bool:
            return stage in stages and (runs / stage / "last.safetensors").is_file()

        follow = {}
        if retrained("keyframes"):
            follow["decoder_word_tokens"] = settings.decoder_word_tokens
        if retrained("interpolation"):
            follow["interp_prefill"] = settings.interp_prefill
        for sr in ("sr_video", "sr_image"):  # a start the run trained for (--sr-start)
            start = _trained_start(runs / sr / "last.safetensors") if retrained(sr) else None
            if start is not None:
                follow[f"{sr}_start"] = start
        settings = dataclasses.replace(base_pack.settings, **follow)
    pack = Pack(None, networks, Tokenizer(vocab) if vocab is not None else None, settings, card=card)
    return save_pack(out, pack, dtype=dtype, overwrite=overwrite)
