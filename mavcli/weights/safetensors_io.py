"""Save and load one network as safetensors with its config dataclass in the metadata.

Loading is strict: a key mismatch lists the missing and unexpected keys; only safetensors
(never pickle); tensors can be cast to float16 / bfloat16 when saved or loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mavcli.errors import PackError
from mavcli.models.config import config_from_json, config_to_json

FORMAT = "mavcli-network"


def save_network(path: str | os.PathLike, module: torch.nn.Module, *, dtype: torch.dtype | None = None,
                 extra_metadata: dict[str, str] | None = None) -> Path:
    """Write `module.state_dict()` (optionally cast) and `module.config` to `path`, atomically."""
    path = Path(path)
    tensors = {}
    for k, v in module.state_dict().items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().cpu()
    metadata = {"format": FORMAT, "class": type(module).__name__, "config": config_to_json(module.config)}
    metadata.update(extra_metadata or {})
    return save_file_atomic(tensors, path, metadata)


def save_file_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """safetensors `save_file` to a temporary name, then a rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_network(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a network file; a PackError if it is not valid safetensors."""
    path = Path(path)
    if not path.is_file():
        raise PackError(f"missing network file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise PackError(f"{path} is not a valid safetensors file ({err}); delete it and fetch the pack again") from None
    if meta.get("format") != FORMAT:
        raise PackError(f"{path} is not a mavcli network file (metadata format={meta.get('format')!r})")
    return meta, tensors


def load_network(path: str | os.PathLike, cls: type, config_cls: type, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> Any:
    """Build `cls(config)` from the file's config and load its weights strictly."""
    meta, tensors = read_network(path)
    if meta.get("class") != cls.__name__:
        raise PackError(f"{path} holds a {meta.get('class')}, expected a {cls.__name__}")
    config = config_from_json(config_cls, meta.get("config", "null"))
    module = cls(config)
    load_state_strict(module, tensors, str(path))
    module.to(device=device)
    if dtype is not None:
        module.to(dtype=dtype)
    return module.eval()


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str,
                      fresh: tuple[str, ...] = ()) -> None:
    """`load_state_dict(strict=True)` with a message that lists missing and unexpected keys and
    shape mismatches; tensors are cast to the parameter's dtype (a float16 pack loads into a
    float32 network exactly as float16 values). Keys under a `fresh` prefix may be missing:
    those parts keep their initialisation (a module added to a trained network)."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(tensors) if not k.startswith(fresh))
    unexpected = sorted(set(tensors) - set(own))
    shapes = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5]))
        raise PackError(f"{where} does not match its config: " + "; ".join(parts))
    module.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in tensors.items()}}, strict=True)
