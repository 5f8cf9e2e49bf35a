"""The training loop shared by every stage: AdamW with warm-up, gradient clipping, an EMA of
the weights, periodic atomic checkpoints and exact resume, and data parallelism with
torch.distributed (DDP; NCCL on GPUs, gloo on CPU) when run under torchrun.

Sample indices are global: step s of a run with global batch B uses samples
[s*B, (s+1)*B); rank r of N takes the r-th slice. With per-sample random draws (tasks.py),
N processes take exactly the optimizer step one process takes with the same global batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mavcli.errors import UserInputError
from mavcli.train.checkpoint import previous_path, restore, save_checkpoint
from mavcli.train.export import network_configs
from mavcli.train.stages import TRAIN_STAGES
from mavcli.train.tasks import Task, load_encoders, shapes_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    out: str = "runs"
    preset: str = "shapes"
    steps: int = 1000
    batch_size: int = 16  # global batch, split across ranks
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 200
    cond_drop: float = 0.1
    encoders: str | None = None  # clip checkpoint (prior, keyframes_image, keyframes)
    init_from: str | None = None  # keyframes: the keyframes_image checkpoint to inflate
    init_pack: str | None = None  # continue from a pack's weights (e.g. the bundled one)
    images: str | None = None  # real data: a folder of images with same-named .txt captions
    videos: str | None = None  # real data: a folder of (uncaptioned) videos
    threads: int | None = None
    # the learning rate of temporal layers (names with "temporal": the pseudo-3D convs'
    # and attentions' time parts, fps conditioning) and of modules added over a trained network
    # (unet.ADDED_MODULES: the decoder's text pool) relative to the rest: video fine-tuning of
    # an image model mostly has to teach those (Make-A-Video section 3.2)
    temporal_lr_mult: float = 1.0
    # keyframes: the share of steps that train D^t on images instead of clips (joint image-video
    # training, as in Ho et al. 2022, "Video Diffusion Models"): image input skips every
    # temporal layer, so these steps sharpen the spatial decoder while the video steps keep motion
    image_mix: float = 0.0
    # diffusion stages: the training times t are u ** time_power for u uniform in [0, 1), so a
    # power above 1 spends more steps at low noise, where fine detail (a square's corners) is drawn
    time_power: float = 1.0
    # keyframes: the time power of the image steps alone (None: time_power). Image steps skip the
    # temporal layers, so low-noise weight there sharpens shapes without taking high-noise clip
    # steps, where motion is decided, away from the video steps
    image_time_power: float | None = None
    # keyframes, packs with decoder_word_tokens: the share of samples at times t <= word_drop_until
    # whose context has its word-embedding half masked out, so D^t also learns to draw from the
    # encoder states alone there (PackSettings.decoder_words_until samples that way)
    word_drop: float = 0.0
    word_drop_until: float = 1.0
    # matcher, ranker: the weight of a term beside the caption and steady-size terms in which
    # each caption prefers its clip over the clip with the object smaller than the domain draws
    # any (data.shapes.undersize): D^t draws some held-out pairs' objects that small (what it did
    # as a ranker and as the steering matcher: docs/evaluation.md, session 27)
    small_twin_weight: float = 0.0
    # sr stages: the share of samples noised from their enlarged low-resolution input at times
    # in [start / 2, start] (the preset's sr_*_start) instead of from the render, the render
    # still the target: the start that sampling gives an SR stage (PackSettings.sr_*_start)
    sr_start_mix: float = 0.0
    # sr stages: the start time --sr-start-mix trains for, and the pack exported from this run
    # samples from (PackSettings.sr_video_start / sr_image_start); None: the --init-pack's
    # setting, else the preset's. A later start lets SR_l^t redraw more of what it is given
    sr_start: float | None = None
    # sr stages: the share of samples whose low-resolution input has its shape's corners
    # rounded (mavcli.data.faults.round_corners) while the target keeps them: the keyframe decoder draws
    # corners round, and an SR stage trained on perfect inputs copies that faithfully
    sr_round_mix: float = 0.0
    # sr_video: the share of clips whose low-resolution input has its object change size over
    # the frames (as the keyframe decoder's do), the steady render the target
    sr_size_mix: float = 0.0

    def __post_init__(self) -> None:
        for name in ("time_power", "image_time_power"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserInputError(f"{name.replace('_', ' ')} must be > 0 (1: uniform times), got {value}")
        for name in ("sr_start_mix", "sr_round_mix", "sr_size_mix"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserInputError(f"{name.replace('_', ' ')} must be in [0, 1] (a share of samples), got {value}")
            stages = ("sr_video",) if name == "sr_size_mix" else ("sr_video", "sr_image")
            if value > 0 and self.stage not in stages:
                raise UserInputError(f"--{name.replace('_', '-')} applies to stage{'s' * (len(stages) > 1)} "
                                     f"{' and '.join(stages)} only")
        if max(self.sr_round_mix, self.sr_size_mix) > 0 and (self.videos is not None or self.images is not None):
            raise UserInputError("--sr-round-mix and --sr-size-mix reshape the shapes world's objects (flat colour "
                                 "on a flat background); train without --videos / --images, or leave them out")
        if self.sr_start is not None:
            if self.stage not in ("sr_video", "sr_image"):
                raise UserInputError("--sr-start applies to stages sr_video and sr_image only")
            if not 0.0 < self.sr_start < 1.0:
                raise UserInputError(f"sr start must be in (0, 1) (a diffusion time), got {self.sr_start}")
            if self.sr_start_mix == 0:
                raise UserInputError("--sr-start sets the start that --sr-start-mix trains for: it needs --sr-start-mix above 0")
        if not 0.0 <= self.word_drop <= 1.0:
            raise UserInputError(f"word drop must be in [0, 1] (a share of samples), got {self.word_drop}")
        if not 0.0 < self.word_drop_until <= 1.0:
            raise UserInputError(f"word drop until must be in (0, 1] (a diffusion time), got {self.word_drop_until}")
        if self.small_twin_weight < 0:
            raise UserInputError(f"small twin weight must be >= 0, got {self.small_twin_weight}")
        if self.small_twin_weight > 0 and self.stage not in ("matcher", "ranker"):
            raise UserInputError("--small-twin-weight applies to stages matcher and ranker only")
        if self.word_drop > 0 and self.stage != "keyframes":
            raise UserInputError("--word-drop applies to stage keyframes only (D^t's context)")
        if self.image_time_power is not None and self.image_mix == 0:
            raise UserInputError("--image-time-power sets the times of image steps: it needs --image-mix above 0")
        if self.stage not in TRAIN_STAGES:
            raise UserInputError(f"unknown stage {self.stage!r}; stages are {', '.join(TRAIN_STAGES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise UserInputError("steps and batch size must be >= 1")
        if not 0.0 <= self.image_mix < 1.0:
            raise UserInputError(f"image mix must be in [0, 1) (the share of image steps), got {self.image_mix}")
        if self.image_mix > 0 and self.stage != "keyframes":
            raise UserInputError("--image-mix applies to stage keyframes only (the other stages train on one kind of data)")
        if self.image_mix > 0 and self.videos is not None and self.images is None:
            raise UserInputError("--image-mix with --videos needs --images too: the image steps would otherwise "
                                 "train on the shapes world")


@dataclass
class StepReport:
    step: int
    total: int
    loss: float
    steps_per_s: float
    lr: float


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun (env:// rendezvous)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _distributed()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))  # short memory early on
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.out) / cfg.stage


def build_task(cfg: TrainConfig) -> Task:
    if cfg.images:
        from mavcli.data.folders import ImageCaptionFolder
        from mavcli.models.text import Tokenizer

        tokenizer = Tokenizer.from_texts(ImageCaptionFolder(cfg.images, size=8).captions())
    else:
        tokenizer = shapes_tokenizer()
    encoders = load_encoders(cfg.encoders, cfg.preset, tokenizer) if cfg.encoders else None
    start = cfg.sr_start
    if start is None and cfg.init_pack and cfg.stage in ("sr_video", "sr_image"):
        from mavcli.weights.pack import read_index

        start = read_index(Path(cfg.init_pack)).get("settings", {}).get(f"{cfg.stage}_start")
    return Task(cfg.stage, cfg.preset, cfg.seed, cfg.cond_drop, tokenizer, encoders, cfg.images, cfg.videos,
                image_mix=cfg.image_mix, time_power=cfg.time_power,
                image_time_power=cfg.image_time_power, sr_start_mix=cfg.sr_start_mix,
                word_drop=cfg.word_drop, word_drop_until=cfg.word_drop_until,
                small_twin_weight=cfg.small_twin_weight, sr_round_mix=cfg.sr_round_mix, sr_size_mix=cfg.sr_size_mix, sr_start_time=start)


def train(cfg: TrainConfig, *, resume: bool = False, device: str | torch.device = "cpu",
          on_step: Callable[[StepReport], None] | None = None, stop_at: int | None = None,
          on_message: Callable[[str], None] | None = None) -> Path:
    """Train one stage; returns the path of the last checkpoint. `stop_at` ends the run early
    (at that step) with the schedule of the full `cfg.steps`, as a killed run would.
    `on_message(str)` hears what the user should know (e.g. a resume from the previous
    checkpoint because the last one is damaged)."""
    rank, world = init_distributed()
    if cfg.batch_size % world:
        raise UserInputError(f"batch size {cfg.batch_size} does not split over {world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(device)
    task = build_task(cfg)
    task.on_message = on_message
    if task.encoders is not None:
        task.encoders.to(device)
    init = None
    if cfg.stage == "keyframes" and cfg.init_from and not resume:
        from mavcli.train.checkpoint import read_checkpoint
        from mavcli.weights.safetensors_io import load_state_strict

        image_task = Task("keyframes_image", cfg.preset, cfg.seed, cfg.cond_drop, task.tokenizer, task.encoders,
                          cfg.images, cfg.videos)
        init = TRAIN_STAGES["keyframes_image"].build_model(image_task)
        _, _, tensors, _ = read_checkpoint(cfg.init_from)
        load_state_strict(init, {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}, cfg.init_from)
    torch.manual_seed(cfg.seed)
    stage = TRAIN_STAGES[cfg.stage]
    model = stage.build_model(task, init).to(device)
    if cfg.init_pack and not resume:
        _load_from_pack(model, cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    from mavcli.models.unet import ADDED_MODULES

    def is_new(name: str) -> bool:  # temporal layers, and modules added over a trained network
        return "temporal" in name or name.startswith(ADDED_MODULES)

    new = [p for n, p in model.named_parameters() if is_new(n)]
    others = [p for n, p in model.named_parameters() if not is_new(n)]
    groups = [{"params": others, "mult": 1.0}]
    if new:
        groups.append({"params": new, "mult": cfg.temporal_lr_mult})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    out = run_dir(cfg)
    last = out / "last.safetensors"
    start = 0
    if resume:
        if not last.is_file() and not previous_path(last).is_file():
            raise UserInputError(f"nothing to resume: {last} does not exist (start without --resume)")
        start, meta = restore(last, model=model, ema=ema, optimizer=opt, on_message=on_message)
        if meta.get("config", {}).get("stage") != cfg.stage:
            raise UserInputError(f"{last} is a checkpoint of stage {meta.get('config', {}).get('stage')}, not {cfg.stage}")
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    local = cfg.batch_size // world
    meta = {"config": asdict(cfg), "vocab": task.tokenizer.vocab, "networks": network_configs(cfg.stage, model)}
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    t_last, s_last = time.perf_counter(), start
    for step in range(start, end):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg) * group["mult"]
        first = step * cfg.batch_size + rank * local
        indices = list(range(first, first + local))
        model.train()
        loss = stage.loss(task, wrapped, indices, step, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, model, step, cfg.ema_decay)
        done = step + 1
        if on_step is not None and rank == 0:
            now = time.perf_counter()
            rate = (done - s_last) / max(now - t_last, 1e-9)
            on_step(StepReport(done, cfg.steps, float(loss.detach()), rate, lr_at(step, cfg)))
        if rank == 0 and (done % cfg.ckpt_every == 0 or done == end):
            save_checkpoint(last, model=model, ema=ema, optimizer=opt, step=done, meta=meta)
            _log(out, {"step": done, "loss": float(loss.detach()), "time": time.time()})
    if world > 1:
        dist.barrier()
    return last


def _load_from_pack(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Warm-start a stage from a pack (float16 weights become the float32 starting point)."""
    from mavcli.models.unet import ADDED_MODULES
    from mavcli.train.export import SOURCES
    from mavcli.weights.pack import read_index
    from mavcli.weights.safetensors_io import load_state_strict, read_network

    folder = Path(cfg.init_pack)
    index = read_index(folder)
    tensors = {}
    for pack_stage, (source, prefix) in SOURCES.items():
        if source != cfg.stage:
            continue
        if pack_stage == "ranker" and "ranker" not in index["stages"] and "matcher" in index["stages"]:
            pack_stage = "matcher"  # a ranker is a matcher trained further (to know steady sizes)
        if pack_stage not in index["stages"]:
            raise UserInputError(f"pack {folder} has no {pack_stage} network to start {cfg.stage} from")
        _, net = read_network(folder / index["stages"][pack_stage])
        tensors.update({prefix + k: v for k, v in net.items()})
    if not tensors:
        raise UserInputError(f"a pack holds no {cfg.stage} network (it is a training-only stage); start it without --init-pack")
    if cfg.stage == "clip":
        tensors["logit_scale"] = model.logit_scale.detach().clone()
    load_state_strict(model, tensors, f"{folder} ({cfg.stage})", fresh=ADDED_MODULES)


def _log(out: Path, row: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
