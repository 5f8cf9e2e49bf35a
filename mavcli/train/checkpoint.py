"""Training checkpoints as one safetensors file: model, EMA and optimizer tensors plus JSON
metadata (step, configs). Written to a temporary name and renamed, so a run killed at any
moment leaves its last good checkpoint intact; the one before it is kept beside it
(`previous_path`), so a checkpoint damaged later (a full disk, a bad copy) still leaves one
to resume from. Never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from mavcli.errors import MavError, PackError
from mavcli.weights.safetensors_io import save_file_atomic


def _optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten Adam-style state into named tensors (safetensors has no nested objects)."""
    tensors, scalars = {}, {}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            name = names[id(p)]
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{name}/{key}"] = value
    return tensors, scalars


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before `path` is kept: `last.safetensors` -> `last-previous.safetensors`."""
    path = Path(path)
    return path.with_name(f"{path.stem}-previous{path.suffix}")


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, step: int, meta: dict) -> Path:
    """Write the checkpoint to `path`; the file that was there becomes `previous_path(path)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    scalars = {}
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        opt_tensors, scalars = _optimizer_tensors(optimizer, names)
        tensors.update(opt_tensors)
    metadata = {"format": "mavcli-checkpoint", "step": str(step), "meta": json.dumps(meta),
                "optim_scalars": json.dumps(scalars)}
    if path.is_file():
        os.replace(path, previous_path(path))
    try:
        return save_file_atomic(tensors, path, metadata)
    except Exception as err:  # safetensors reports a full disk as its own error type
        from mavcli.runtime import is_disk_full

        if not is_disk_full(err):
            raise
        kept = previous_path(path)
        resume = (f"; {kept.name} (the checkpoint before) is kept, and --resume continues from it once there is "
                  "space" if kept.is_file() else "")
        raise MavError(f"the disk holding {path.parent} is full: the checkpoint of step {step} was not "
                       f"written{resume}") from err


def read_checkpoint(path: str | os.PathLike) -> tuple[int, dict, dict[str, torch.Tensor], dict]:
    """(step, meta, tensors, optimizer scalars) of a checkpoint file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - any reader failure means an unusable file
        raise PackError(f"checkpoint {path} is not readable safetensors ({err})") from None
    if md.get("format") != "mavcli-checkpoint":
        raise PackError(f"{path} is not a mavcli training checkpoint")
    return int(md["step"]), json.loads(md["meta"]), tensors, json.loads(md.get("optim_scalars", "{}"))


def read_checkpoint_or_previous(path: str | os.PathLike, on_message=None) -> tuple[Path, tuple]:
    """`read_checkpoint(path)`, or, when that file is missing or unreadable, the previous
    checkpoint kept beside it (saying so through `on_message(str)`). Returns (the file read,
    its contents)."""
    path, prev = Path(path), previous_path(path)
    try:
        return path, read_checkpoint(path)
    except (PackError, OSError) as err:
        if not prev.is_file():
            problem = "does not exist" if not path.exists() else f"cannot be read ({err})"
            raise PackError(f"checkpoint {path} {problem}, and there is no earlier checkpoint ({prev.name}) to "
                            "fall back to: start the stage again without --resume (the damaged file is left as it "
                            "is), or put a good copy of the checkpoint in its place") from None
        contents = read_checkpoint(prev)
        if on_message is not None:
            what = "is missing" if not path.exists() else "cannot be read"
            on_message(f"{path} {what}; resuming from the checkpoint before it, {prev.name} (step {contents[0]})")
        return prev, contents


def restore(path, *, model, ema, optimizer, on_message=None) -> tuple[int, dict]:
    """Load a checkpoint into model / EMA / optimizer (strict); returns (step, meta). A missing
    or damaged `path` falls back to the checkpoint before it (`read_checkpoint_or_previous`)."""
    from mavcli.weights.safetensors_io import load_state_strict

    path, (step, meta, tensors, scalars) = read_checkpoint_or_previous(path, on_message)
    sub = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    load_state_strict(model, sub("model/"), f"{path} (model)")
    if ema is not None:
        load_state_strict(ema, sub("ema/"), f"{path} (ema)")
    if optimizer is not None:
        by_name = dict(model.named_parameters())
        for key, value in sub("optim/").items():
            name, field = key.rsplit("/", 1)
            optimizer.state[by_name[name]][field] = value.to(by_name[name].device)
        for key, value in scalars.items():
            name, field = key.rsplit("/", 1)
            optimizer.state[by_name[name]][field] = value
    return step, meta
