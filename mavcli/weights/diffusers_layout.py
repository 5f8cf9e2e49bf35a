"""Read a latent text-to-video model saved in the diffusers folder layout (ModelScope
text-to-video, Zeroscope) into mavcli's networks.

The layout: `model_index.json`, and folders `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and
`scheduler/`, each with a `config.json` (`scheduler_config.json` for the scheduler) and weights
`<name>.safetensors`, `<name>.fp16.safetensors` (the fp16 variant) or shards listed in
`<name>.safetensors.index.json`. Only safetensors are read; a folder that offers only pickled
`.bin` / `.ckpt` weights is refused, since unpickling runs code from the file.

The U-Net becomes mavcli's own `LatentUnet3D`: its config is read into `LatentUnetConfig`, and
every tensor is mapped by name and shape (`unet_key_map`), strictly: a tensor of the file that
maps nowhere, or a parameter that nothing fills, is an error that names it. The map also runs
backwards (`unet_to_diffusers`), which the tests use to prove the correspondence on the real
configurations without their weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mavcli.errors import PackError
from mavcli.models.latent_unet import LatentUnet3D, LatentUnetConfig

#: weights file stem per component folder
WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_PICKLES = (".bin", ".ckpt", ".pt", ".pth")

_DOWN = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_UP = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


def is_diffusers_folder(path: str | Path) -> bool:
    """True for a folder in the diffusers layout with a 3-D U-Net."""
    p = Path(path)
    return (p / "model_index.json").is_file() and (p / "unet" / "config.json").is_file()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PackError(f"{path} is missing; a diffusers-layout model needs it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise PackError(f"{path} must hold a JSON object")
    return data


def unet_config_from_diffusers(cfg: dict[str, Any], where: str = "unet/config.json") -> LatentUnetConfig:
    """`LatentUnetConfig` from the values of a `UNet3DConditionModel` config.json. Values this
    network does not implement are refused by name rather than silently ignored."""
    cls = cfg.get("_class_name", "UNet3DConditionModel")
    if cls != "UNet3DConditionModel":
        raise PackError(f"{where}: mavcli runs UNet3DConditionModel U-Nets, this one is {cls}")
    unsupported = {
        "act_fn": ("silu", None),
        "num_attention_heads": (None,),
        "time_cond_proj_dim": (None,),
        "downsample_padding": (1, None),
    }
    for key, allowed in unsupported.items():
        if cfg.get(key) not in allowed:
            raise PackError(f"{where}: {key}={cfg.get(key)!r} is not supported (only {allowed[0]!r})")
    down = list(cfg.get("down_block_types", ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)))
    up = list(cfg.get("up_block_types", ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3))
    for name in down + up:
        if name not in _DOWN and name not in _UP:
            raise PackError(f"{where}: block type {name} is not supported")
    attention = tuple(_DOWN[n] for n in down)
    if tuple(_UP[n] for n in reversed(up)) != attention:
        raise PackError(f"{where}: up_block_types must mirror down_block_types")
    head_dim = cfg.get("attention_head_dim", 64)
    if not isinstance(head_dim, int):
        raise PackError(f"{where}: attention_head_dim must be one integer, got {head_dim!r}")
    groups = cfg.get("norm_num_groups", 32)
    if groups is None:
        raise PackError(f"{where}: norm_num_groups=None (no output norm) is not supported")
    try:
        return LatentUnetConfig(
            in_channels=int(cfg.get("in_channels", 4)),
            out_channels=int(cfg.get("out_channels", 4)),
            block_out_channels=tuple(int(c) for c in cfg.get("block_out_channels", (320, 640, 1280, 1280))),
            attention=attention,
            layers_per_block=int(cfg.get("layers_per_block", 2)),
            head_dim=head_dim,
            norm_groups=int(groups),
            norm_eps=float(cfg.get("norm_eps", 1e-5)),
            context_dim=int(cfg.get("cross_attention_dim", 1024)),
            mid_scale=float(cfg.get("mid_block_scale_factor", 1.0)),
        )
    except (TypeError, ValueError) as err:
        raise PackError(f"{where}: {err}") from None


# --- the name map ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Mapped:
    """Where one mavcli tensor comes from: `sources` (diffusers names) concatenated along dim 0
    (`to_qkv` / `to_kv` from separate q, k, v), or one source reshaped (`Conv3d` (3,1,1)
    kernels to `Conv1d` kernels)."""

    sources: tuple[str, ...]
    kind: str = "copy"  # "copy" | "cat" | "conv3d"


_BLOCK_RULES = [  # inside a transformer block: (mavcli suffix, diffusers suffixes, kind)
    ("attn1.norm.", ("norm1.",), "copy"),
    ("attn1.to_qkv.weight", ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"), "cat"),
    ("attn1.to_out.", ("attn1.to_out.0.",), "copy"),
    ("attn2.norm.", ("norm2.",), "copy"),
    ("attn2.to_qkv.weight", ("attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight"), "cat"),
    ("attn2.to_q.weight", ("attn2.to_q.weight",), "copy"),
    ("attn2.to_kv.weight", ("attn2.to_k.weight", "attn2.to_v.weight"), "cat"),
    ("attn2.to_out.", ("attn2.to_out.0.",), "copy"),
    ("ff.norm.", ("norm3.",), "copy"),
    ("ff.proj_in.", ("ff.net.0.proj.",), "copy"),
    ("ff.proj_out.", ("ff.net.2.",), "copy"),
]


def _map_transformer(rest: str) -> tuple[tuple[str, ...], str]:
    if not rest.startswith("block."):
        return (rest,), "copy"  # norm, proj_in, proj_out
    tail = rest[len("block."):]
    for mine, theirs, kind in _BLOCK_RULES:
        if tail.startswith(mine):
            end = tail[len(mine):]
            return tuple(f"transformer_blocks.0.{t}{end}" for t in theirs), kind
    raise KeyError(rest)


def _map_layer(kind: str, index: str, rest: str, prefix: str) -> Mapped:
    if kind == "res":
        rest = rest.replace("time_proj.", "time_emb_proj.", 1).replace("skip.", "conv_shortcut.", 1)
        return Mapped((f"{prefix}resnets.{index}.{rest}",))
    if kind == "time_conv":
        m = re.fullmatch(r"(norms|convs)\.(\d+)\.(\w+)", rest)
        if not m:
            raise KeyError(rest)
        layer = int(m.group(2))
        if m.group(1) == "norms":
            return Mapped((f"{prefix}temp_convs.{index}.conv{layer + 1}.0.{m.group(3)}",))
        slot = 2 if layer == 0 else 3  # (GroupNorm, SiLU, [Dropout,] Conv3d)
        how = "conv3d" if m.group(3) == "weight" else "copy"
        return Mapped((f"{prefix}temp_convs.{index}.conv{layer + 1}.{slot}.{m.group(3)}",), how)
    folder = {"space_attn": "attentions", "time_attn": "temp_attentions"}[kind]
    names, how = _map_transformer(rest)
    return Mapped(tuple(f"{prefix}{folder}.{index}.{n}" for n in names), how)


def unet_source(key: str) -> Mapped:
    """The diffusers tensor(s) a `LatentUnet3D` state-dict key is made from."""
    simple = {"time_in.": "time_embedding.linear_1.", "time_out.": "time_embedding.linear_2.",
              "conv_in.": "conv_in.", "conv_out.": "conv_out.", "norm_out.": "conv_norm_out."}
    for mine, theirs in simple.items():
        if key.startswith(mine):
            return Mapped((theirs + key[len(mine):],))
    if key.startswith("temporal_in."):
        names, how = _map_transformer(key[len("temporal_in."):])
        return Mapped(tuple("transformer_in." + n for n in names), how)
    m = re.fullmatch(r"(down|up)sample\.(\d+)\.(\w+)", key)
    if m:
        side = "down_blocks" if m.group(1) == "down" else "up_blocks"
        sampler = "downsamplers" if m.group(1) == "down" else "upsamplers"
        return Mapped((f"{side}.{m.group(2)}.{sampler}.0.conv.{m.group(3)}",))
    m = re.fullmatch(r"(down|up)\.(\d+)\.(res|time_conv|space_attn|time_attn)\.(\d+)\.(.+)", key)
    if m:
        side = "down_blocks" if m.group(1) == "down" else "up_blocks"
        return _map_layer(m.group(3), m.group(4), m.group(5), f"{side}.{m.group(2)}.")
    m = re.fullmatch(r"mid\.(res|time_conv)\.(\d+)\.(.+)", key)
    if m:
        return _map_layer(m.group(1), m.group(2), m.group(3), "mid_block.")
    m = re.fullmatch(r"mid\.(space_attn|time_attn)\.(.+)", key)
    if m:
        return _map_layer(m.group(1), "0", m.group(2), "mid_block.")
    raise KeyError(key)


def unet_key_map(model: LatentUnet3D) -> dict[str, Mapped]:
    return {k: unet_source(k) for k in model.state_dict()}


def _convert(mapped: Mapped, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    parts = [tensors[s] for s in mapped.sources]
    if mapped.kind == "cat":
        return torch.cat(parts, dim=0)
    if mapped.kind == "conv3d":
        t = parts[0]
        if t.ndim != 5 or t.shape[-2:] != (1, 1):
            raise PackError(f"{mapped.sources[0]}: expected a (out, in, k, 1, 1) Conv3d kernel, got {tuple(t.shape)}")
        return t[..., 0, 0]
    return parts[0]


def unet_from_diffusers(model: LatentUnet3D, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Fill `model` from a diffusers U-Net state dict (or a `LazyTensors` over its files); strict
    both ways, shapes checked. Each parameter is copied in as it is converted, so with lazy
    tensors the peak memory is the model and one converted tensor, not the model twice."""
    own = model.state_dict()
    mapping = unet_key_map(model)
    used = {s for m in mapping.values() for s in m.sources}
    missing = sorted(s for s in used if s not in tensors)
    if missing:
        raise PackError(f"{where}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                        f"({len(missing)} in all): the weights do not match unet/config.json")
    extra = sorted(set(tensors) - used)
    if extra:
        raise PackError(f"{where}: tensors that map onto no part of the network: {extra[:5]}"
                        f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all)")
    with torch.no_grad():
        for key, mapped in mapping.items():
            value = _convert(mapped, tensors)
            if value.shape != own[key].shape:
                raise PackError(f"{where}: {', '.join(mapped.sources)} has shape {tuple(value.shape)}, "
                                f"the network's {key} needs {tuple(own[key].shape)}")
            own[key].copy_(value)  # the state dict's tensors are the parameters themselves


def unet_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse map: a `LatentUnet3D` state dict in diffusers names and shapes."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        mapped = unet_source(key)
        if mapped.kind == "cat":
            for name, part in zip(mapped.sources, value.chunk(len(mapped.sources), dim=0)):
                out[name] = part
        elif mapped.kind == "conv3d":
            out[mapped.sources[0]] = value[..., None, None]
        else:
            out[mapped.sources[0]] = value
    return out


# --- files ----------------------------------------------------------------------------------

def weight_files(folder: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors file(s) of one component: the variant's (`fp16`) when asked for and
    present, else the plain one; shards through their index. Pickled weights are refused."""
    names = ([f"{stem}.{variant}"] if variant else []) + [stem]
    for name in names:
        single = folder / f"{name}.safetensors"
        if single.is_file():
            return [single]
        index = folder / f"{name}.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise PackError(f"{index}: no weight_map")
            shards = sorted(set(weight_map.values()))
            for s in shards:
                if "/" in s or "\\" in s or not s.endswith(".safetensors"):
                    raise PackError(f"{index}: shard name {s!r} is not a safetensors file in this folder")
            return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in _PICKLES)
    if pickles:
        raise PackError(
            f"{folder} offers only pickled weights ({', '.join(pickles)}); mavcli reads safetensors only, "
            "because unpickling a file can run code from it. Use a revision of the repository that has "
            f"{stem}.safetensors (or convert the weights yourself with a tool you trust)"
        )
    raise PackError(f"{folder}: no {stem}.safetensors (or .safetensors.index.json) found")


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of safetensors `files` by name, each read (and cast to `dtype`) only when
    asked for: a model can then be filled one tensor at a time. Use as a context manager."""

    def __init__(self, files: list[Path], dtype: torch.dtype | None = None) -> None:
        self._dtype, self._handles, self._where = dtype, [], {}
        try:
            for path in files:
                handle = safe_open(str(path), framework="pt")
                self._handles.append(handle)
                for key in handle.keys():
                    self._where[key] = (handle, path)
        except FileNotFoundError as err:
            raise PackError(f"{err.filename or files} is missing") from None
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise PackError(f"{files} holds a file that is not readable safetensors ({err}); download it again") from None

    def __enter__(self) -> LazyTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.clear()
        self._where.clear()

    def __getitem__(self, key: str) -> torch.Tensor:
        handle, path = self._where[key]
        try:
            t = handle.get_tensor(key)
        except Exception as err:
            raise PackError(f"{path} is not a readable safetensors file ({err}); download it again") from None
        return t if self._dtype is None or not t.is_floating_point() else t.to(self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where


def read_tensors(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    tensors[key] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
        except FileNotFoundError:
            raise PackError(f"{path} is missing") from None
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise PackError(f"{path} is not a readable safetensors file ({err}); download it again") from None
    return tensors


def build_unet(folder: str | Path) -> LatentUnet3D:
    """A `LatentUnet3D` shaped by `unet/config.json`, its tensors uninitialised (build it under
    `torch.device("meta")` to allocate nothing)."""
    path = Path(folder) / "unet" / "config.json"
    return LatentUnet3D(unet_config_from_diffusers(read_json(path), str(path)))


def load_unet(folder: str | Path, *, variant: str | None = "fp16", dtype: torch.dtype = torch.float32) -> LatentUnet3D:
    """The `unet/` of a diffusers-layout folder as a `LatentUnet3D` in `dtype`."""
    unet_dir = Path(folder) / "unet"
    with torch.device("meta"):
        model = build_unet(folder)
    model = model.to_empty(device="cpu").to(dtype)
    with LazyTensors(weight_files(unet_dir, WEIGHT_NAMES["unet"], variant), dtype) as tensors:
        unet_from_diffusers(model, tensors, str(unet_dir))
    return model.eval()


# --- the library parts: VAE (diffusers) and CLIP text encoder + tokenizer (transformers) ---

EXTRA_INSTALL = 'pip install "mavcli[open-weights]"'


def require_extra(module: str) -> Any:
    """Import `module` of the optional extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PackError(f"this pack needs {module.split('.')[0]}, which the base install leaves out; "
                        f"install it with: {EXTRA_INSTALL}") from None


def _load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str,
                 ignore: tuple[str, ...] = ()) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith(ignore)] if ignore else missing
    unexpected = [k for k in unexpected if not k.endswith(ignore)] if ignore else unexpected
    if missing or unexpected:
        raise PackError(f"{where}: tensors missing {missing[:5]}, left over {unexpected[:5]} "
                        f"({len(missing)} and {len(unexpected)} in all): the weights do not match config.json")


def _config(path: Path) -> dict[str, Any]:
    """A library config.json without its bookkeeping keys (`_class_name`, `_diffusers_version`)."""
    return {k: v for k, v in read_json(path).items() if not k.startswith("_")}


def build_vae(folder: str | Path):
    """diffusers' `AutoencoderKL` shaped by `vae/config.json`, randomly initialised."""
    return require_extra("diffusers").AutoencoderKL.from_config(_config(Path(folder) / "vae" / "config.json"))


def build_text_encoder(folder: str | Path):
    """transformers' `CLIPTextModel` shaped by `text_encoder/config.json`, randomly initialised."""
    transformers = require_extra("transformers")
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**_config(Path(folder) / "text_encoder" / "config.json")))


def parameter_count(folder: str | Path) -> int:
    """Parameters of the U-Net, VAE and text encoder of a diffusers-layout folder, from their
    config.json files alone: nothing is allocated and the weight files need not be there yet, so
    memory can be checked before a download."""
    with torch.device("meta"):
        models = (build_unet(folder), build_vae(folder), build_text_encoder(folder))
    return sum(p.numel() for m in models for p in m.parameters())


def load_vae(folder: str | Path, *, variant: str | None = "fp16", dtype: torch.dtype = torch.float32):
    """diffusers' `AutoencoderKL` from `vae/` (config.json + safetensors), loaded strictly."""
    vae_dir = Path(folder) / "vae"
    vae = build_vae(folder)
    _load_strict(vae, read_tensors(weight_files(vae_dir, WEIGHT_NAMES["vae"], variant), dtype), str(vae_dir))
    # torch's own cast: diffusers' override warns about float32 modules even when it names none
    return (vae if dtype == torch.float32 else torch.nn.Module.to(vae, dtype)).eval()


def load_text_encoder(folder: str | Path, *, variant: str | None = "fp16", dtype: torch.dtype = torch.float32):
    """transformers' `CLIPTextModel` from `text_encoder/`, and its `CLIPTokenizer` from `tokenizer/`
    (tokenizer.json or vocab.json + merges.txt: plain text, nothing pickled)."""
    transformers = require_extra("transformers")
    enc_dir, tok_dir = Path(folder) / "text_encoder", Path(folder) / "tokenizer"
    model = build_text_encoder(folder)
    # position_ids is a buffer that older transformers saved and newer ones rebuild
    _load_strict(model, read_tensors(weight_files(enc_dir, WEIGHT_NAMES["text_encoder"], variant), dtype),
                 str(enc_dir), ignore=("position_ids",))
    if not ((tok_dir / "tokenizer.json").is_file() or all((tok_dir / n).is_file() for n in ("vocab.json", "merges.txt"))):
        raise PackError(f"{tok_dir} needs tokenizer.json, or vocab.json and merges.txt, for the CLIP tokenizer")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir))
    return model.to(dtype).eval(), tokenizer


_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                   "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range")


def load_schedule(folder: str | Path):
    """The training noise schedule from `scheduler/scheduler_config.json` (any diffusers scheduler
    class: mavcli samples it with DDIM, the class these repositories ship)."""
    from mavcli.diffusion.discrete import DiscreteSchedule

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    cfg = read_json(path)
    if cfg.get("trained_betas") is not None:
        raise PackError(f"{path}: trained_betas is not supported")
    values = {k: cfg[k] for k in _SCHEDULER_KEYS if k in cfg}
    values["multistep_spacing"] = cfg.get("timestep_spacing", "linspace")
    try:
        return DiscreteSchedule(**values), str(cfg.get("_class_name", "DDIMScheduler"))
    except (TypeError, ValueError) as err:
        raise PackError(f"{path}: {err}") from None
