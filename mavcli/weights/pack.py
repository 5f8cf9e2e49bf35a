"""Model packs: a folder with the layout of a Hub repository.

    pack.json              format, version, stage -> file, generation settings, and the
                           sha256 of every other file (checked when the pack is loaded)
    <stage>.safetensors    one network per stage, its config in the metadata
    tokenizer.json         the text encoder's vocabulary
    README.md              model card: data, training, measured quality

Loading is strict and never unpickles; saving writes a temporary folder and renames it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mavcli.errors import PackError, UserInputError
from mavcli.models.blocks import UPSAMPLE_MODES
from mavcli.models.config import config_from_dict, config_to_dict
from mavcli.models.stages import STAGES
from mavcli.models.text import Tokenizer
from mavcli.weights.integrity import sha256_file
from mavcli.weights.safetensors_io import load_network, save_network

PACK_FORMAT = "mavcli-pack"
PACK_VERSION = 1


@dataclass(frozen=True)
class PackSettings:
    """How the cascade runs by default with this pack (saved in pack.json)."""

    keyframes: int = 8  # frames D^t makes
    keyframe_size: int = 32  # D^t's resolution
    fps: float = 4.0  # keyframe rate; the video plays at fps * frame_skip
    frame_skip: int = 4  # F_i fills (frame_skip - 1) frames between keyframes
    interp_window: int = 3  # keyframes per F_i window (as trained)
    interp_start: float = 1.0  # < 1: F_i starts from the linear blend noised to this time (SDEdit)
    # F_i's conditioning shows the unknown frames as the linear blend of their known neighbours
    # (False: zeroed, as the paper masks them)
    interp_prefill: bool = False
    sr_video_size: int = 64  # SR_l^t output
    # < 1: the SR stage starts from its upsampled input noised to this time (SDEdit)
    # instead of pure noise, so the low-resolution geometry is kept and only detail is drawn
    sr_video_start: float = 1.0
    sr_image_start: float = 1.0
    # how both SR stages enlarge their input (their conditioning and SDEdit start; the same in
    # training): "bilinear" or "bicubic", which blunts acute corners less
    sr_upsample: str = "bilinear"
    sr_image_size: int = 128  # SR_h output
    sampler: str = "dpmpp"
    # stage -> sampler, overriding `sampler` for that stage (e.g. {"keyframes": "ddpm"})
    stage_samplers: dict = field(default_factory=dict)
    steps: dict = field(default_factory=lambda: {"prior": 16, "keyframes": 24, "interpolation": 12, "sr_video": 8, "sr_image": 8})
    guidance: dict = field(default_factory=lambda: {"prior": 2.0, "keyframes": 3.0, "interpolation": 1.0, "sr_video": 1.0, "sr_image": 1.0})
    schedule_base: int = 32  # the noise schedule shifts with resolution relative to this
    chunk_frames: int = 32  # frames per SR chunk: memory stays bounded for long videos
    sr_tile: int = 0  # > 0: the SR networks run on overlapping tiles of this side (as trained)
    sr_tile_overlap: int = 8
    # D^t attends to the text encoder's word embeddings too, not only its output states
    # (TextEncoder.word_tokens): how motion words reach the keyframe decoder
    decoder_word_tokens: bool = False
    # > 0: D^t reads the word embeddings only at diffusion times above this; below it, its
    # context is the encoder's states alone (the matcher and ranker still read both)
    decoder_words_until: float = 0.0
    # not empty: of the word embeddings, D^t reads only these words' (the motion words carry
    # the motion; the others pull the objects of held-out colour-shape pairs small). The
    # matcher and ranker still read every word
    decoder_words: tuple[str, ...] = ()
    # with a matcher network in the pack (models/matcher.py): sample this many keyframe clips
    # per prompt and keep the one that fits the prompt best; and steer by its gradient
    keyframe_candidates: int = 1
    matcher_guidance: float = 0.0
    # rank the candidates on the noisy clips at these decreasing diffusion times, dropping the
    # worse half at each and all but the best at the last (empty: rank the finished clips)
    keyframe_select_times: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.keyframe_candidates < 1:
            raise ValueError(f"keyframe_candidates must be >= 1, got {self.keyframe_candidates}")
        if not select_times_ok(self.keyframe_select_times):
            raise ValueError(f"keyframe_select_times must be decreasing diffusion times in (0, 1), got {list(self.keyframe_select_times)}")
        if not 0.0 <= self.decoder_words_until < 1.0:
            raise ValueError(f"decoder_words_until must be a diffusion time in [0, 1), got {self.decoder_words_until}")
        if not all(isinstance(w, str) and w for w in self.decoder_words):
            raise ValueError(f"decoder_words must be words (strings), got {list(self.decoder_words)}")
        if self.matcher_guidance < 0:
            raise ValueError(f"matcher_guidance must be >= 0, got {self.matcher_guidance}")
        if not 0.0 < self.interp_start <= 1.0:
            raise ValueError(f"interp_start must be in (0, 1] (1: F_i starts from pure noise), got {self.interp_start}")
        for stage, name in self.stage_samplers.items():
            if stage not in STAGES or not isinstance(name, str):
                raise ValueError(f"stage_samplers maps a stage ({', '.join(sorted(STAGES))}) to a sampler name, "
                                 f"got {stage!r}: {name!r}")
        if self.sr_upsample not in UPSAMPLE_MODES:
            raise ValueError(f"sr_upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {self.sr_upsample!r}")
        for name in ("sr_video_start", "sr_image_start"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1] (1: the stage starts from pure noise), got {getattr(self, name)}")


def select_times_ok(times) -> bool:
    """Keyframe selection times are decreasing diffusion times in (0, 1)."""
    return all(0.0 < t < 1.0 for t in times) and all(a > b for a, b in zip(times, times[1:]))


@dataclass
class Pack:
    path: Path | None
    networks: dict[str, torch.nn.Module]
    tokenizer: Tokenizer | None  # None for a pack without a text stage
    settings: PackSettings
    card: str = ""
    verified: bool = True  # False: pack.json records no hashes (a pack from an older mavcli)

    def __getitem__(self, stage: str) -> torch.nn.Module:
        try:
            return self.networks[stage]
        except KeyError:
            raise PackError(f"this pack has no {stage!r} network (it has {sorted(self.networks)})") from None


def save_pack(path: str | os.PathLike, pack: Pack, *, dtype: torch.dtype | None = torch.float16, overwrite: bool = False) -> Path:
    """Write `pack` to the folder `path` (atomically: a temporary folder, then a rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserInputError(f"{path} already exists; pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        files = {}
        for stage, net in pack.networks.items():
            if stage not in STAGES:
                raise PackError(f"unknown stage {stage!r}; stages are {sorted(STAGES)}")
            files[stage] = f"{stage}.safetensors"
            save_network(tmp / files[stage], net, dtype=dtype)
        if pack.tokenizer is not None:  # packs without a text stage need none
            (tmp / "tokenizer.json").write_text(pack.tokenizer.to_json())
        (tmp / "README.md").write_text(pack.card or "# mavcli pack\n")
        index = {"format": PACK_FORMAT, "version": PACK_VERSION, "stages": files,
                 "settings": config_to_dict(pack.settings), "sha256": file_hashes(tmp)}
        (tmp / "pack.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a pack folder but pack.json (which records them)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "pack.json"}


def verify_files(path: Path, index: dict, names: list[str]) -> bool:
    """Check `names` against the hashes pack.json records; False when it records none."""
    recorded = index.get("sha256")
    if recorded is None:
        return False
    if not isinstance(recorded, dict):
        raise PackError(f"{path / 'pack.json'}: 'sha256' must map file names to hashes")
    for name in names:
        want = recorded.get(name)
        if want is None:
            raise PackError(f"{path / 'pack.json'} records no sha256 for {name}; re-export the pack")
        if sha256_file(path / name) != want:
            raise PackError(f"{path / name} does not match the sha256 recorded in pack.json: the file was changed "
                            "or damaged. Re-export the pack (mav train export) or download it again")
    return True


def read_index(path: Path) -> dict:
    index_file = path / "pack.json"
    if not index_file.is_file():
        raise PackError(f"{path} is not a mavcli pack: pack.json is missing")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PackError(f"{index_file} is not valid JSON ({err})") from None
    if index.get("format") != PACK_FORMAT:
        raise PackError(f"{index_file}: format is {index.get('format')!r}, expected {PACK_FORMAT!r}")
    if index.get("version") != PACK_VERSION:
        raise PackError(f"{index_file}: pack version {index.get('version')} is not supported (this mavcli reads {PACK_VERSION})")
    for stage, name in index.get("stages", {}).items():
        if stage not in STAGES:
            raise PackError(f"{index_file}: unknown stage {stage!r}")
        if Path(name).name != name:
            raise PackError(f"{index_file}: file name {name!r} for {stage} must be a plain file name inside the pack")
    return index


def load_pack(path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              stages: tuple[str, ...] | None = None) -> Pack:
    """Load a pack folder (strict). `dtype` casts every network (e.g. torch.float16)."""
    path = Path(path)
    index = read_index(path)
    try:
        tokenizer = Tokenizer.from_json((path / "tokenizer.json").read_text())
    except FileNotFoundError:
        if "text_encoder" in index["stages"]:
            raise PackError(f"{path} is missing tokenizer.json") from None
        tokenizer = None
    wanted = {stage: name for stage, name in index["stages"].items() if stages is None or stage in stages}
    for name in wanted.values():
        if not (path / name).is_file():
            raise PackError(f"{path / name} is missing; the pack is incomplete")
    texts = ["tokenizer.json"] if tokenizer is not None else []
    verified = verify_files(path, index, [*wanted.values(), *texts])
    networks = {}
    for stage, name in wanted.items():
        cls, config_cls = STAGES[stage]
        networks[stage] = load_network(path / name, cls, config_cls, device=device, dtype=dtype)
    settings = config_from_dict(PackSettings, index.get("settings", {}))
    card = (path / "README.md").read_text() if (path / "README.md").is_file() else ""
    return Pack(path, networks, tokenizer, settings, card, verified)
