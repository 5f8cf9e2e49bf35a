"""What `mav train STAGE` trains (Make-A-Video section 3.5): each stage's network builder and
its loss, one function per stage, registered by name in `TRAIN_STAGES` (as
`mavcli.models.stages.STAGES` registers the networks a pack holds). The data every loss
draws on is `Task`'s (mavcli/train/tasks.py).

Stages, in training order:
  clip             text encoder C_x + image encoder, contrastive, on captioned frames
  prior            P: text -> image embedding (encoders frozen)
  keyframes_image  D (2-D): images from image embedding + text tokens
  keyframes        D^t: inflated from keyframes_image, learns motion from video (+ fps)
  interpolation    F_i: masked frame interpolation / extrapolation (frame skip, fps)
  sr_video         SR_l^t: low -> high resolution, all frames together
  sr_image         SR_h: low -> high resolution per frame (spatial only)
  matcher          the noised video-text matcher (models/matcher.py) that ranks and steers
                   D^t's samples: noisy keyframes against captions and hard negatives
  flow_interpolation  the real-footage interpolator (models/flowinterp.py): DIS flow refined,
                   on real video windows and synthetic layered motion; its own pack

Every loss is `loss(task, model, indices, step, device) -> scalar` on global sample indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from mavcli.diffusion import CosineSchedule, diffusion_loss
from mavcli.errors import UserInputError
from mavcli.models.blocks import interp_conditioning
from mavcli.models.flowinterp import FlowInterpNet
from mavcli.models.matcher import VideoTextMatcher, matcher_loss, steady_size_loss
from mavcli.models.prior import EMBED_SCALE, Prior
from mavcli.models.text import ImageEncoder, TextEncoder, clip_loss
from mavcli.models.unet import SpaceTimeUnet, inflate_unet
from mavcli.train.tasks import (
    FLOW_INTERP_CONFIGS,
    INTERP_RATE_FACTORS,
    INTERP_SKIPS,
    MATCHER_RATE_FACTORS,
    ClipPair,
    Task,
    per_sample,
    sample_seed,
)

Loss = Callable[[Task, nn.Module, "list[int]", int, torch.device], torch.Tensor]
Builder = Callable[[Task, "nn.Module | None"], nn.Module]


@dataclass(frozen=True)
class TrainStage:
    """A trainable stage: how its network is built (optionally from the network of an earlier
    stage, `init_from`) and its loss; `needs_encoders`: it reads the frozen clip encoders."""

    build: Builder
    loss: Loss
    needs_encoders: bool = False

    def build_model(self, task: Task, init_from: nn.Module | None = None) -> nn.Module:
        if self.needs_encoders and task.encoders is None:
            raise UserInputError(f"stage {task.stage} needs the trained text/image encoders: "
                                 "pass --encoders runs/clip/last.safetensors")
        return self.build(task, init_from)


# --- networks ---------------------------------------------------------------------------------

def build_clip(task: Task, init_from: nn.Module | None) -> nn.Module:
    return ClipPair(TextEncoder(task.configs["text_encoder"]), ImageEncoder(task.configs["image_encoder"]))


def build_keyframes_image(task: Task, init_from: nn.Module | None) -> nn.Module:
    """D: the keyframe decoder with every temporal part off, for image pre-training."""
    return SpaceTimeUnet(dataclasses.replace(task.configs["keyframes"], temporal=False, fps_cond=False,
                                             frame_pos_cond=False))


def build_keyframes(task: Task, init_from: nn.Module | None) -> nn.Module:
    c = task.configs["keyframes"]
    if init_from is not None:  # the paper's recipe: image model first, then add time
        return inflate_unet(init_from, fps_cond=c.fps_cond, frame_pos_cond=c.frame_pos_cond)
    return SpaceTimeUnet(c)


def build_unet(task: Task, init_from: nn.Module | None) -> nn.Module:
    return SpaceTimeUnet(task.configs[task.stage])


# --- losses -----------------------------------------------------------------------------------

def loss_clip(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    size = task.configs["image_encoder"].image_size
    images, captions, facts = task.image_batch(indices, size)
    ids, mask, _ = task.tokenizer.batch(captions)
    _, text_emb = model.text_encoder(ids.to(device), mask.to(device))
    image_emb = model.image_encoder(images.to(device))
    # items that share their facts are all positives for each other
    same = torch.tensor([[a == b for b in facts] for a in facts], device=device)
    return clip_loss(text_emb, image_emb, model.logit_scale, same)


def loss_prior(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    images, captions, _ = task.image_batch(indices, task.configs["image_encoder"].image_size)
    tokens, mask, pooled = task.text(captions, device)
    x0 = task.image_emb(images.to(device)) * EMBED_SCALE
    t, noise, drop = task.draws(indices, x0.shape[1:], device)
    return diffusion_loss(model, x0, CosineSchedule(), t=t, noise=noise, drop=drop,
                          text_emb=pooled, context=tokens, context_mask=mask)


def loss_keyframes_image(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    images, captions, _ = task.image_batch(indices, task.settings.keyframe_size)
    images = images.to(device)
    t, noise, drop = task.draws(indices, images.shape[1:], device, power=task.image_time_power)
    cond = task.decoder_cond(model, images, captions, indices, device, t)
    return diffusion_loss(model, images, task.schedule_for(task.settings.keyframe_size), t=t, noise=noise, drop=drop, **cond)


def loss_keyframes(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    s = task.settings
    if task.image_step(step):
        # as many images as the clips have frames, so an image step costs about a clip step;
        # 4-D input: D^t runs as the image decoder, every temporal layer skipped
        k = s.keyframes
        return loss_keyframes_image(task, model, [i * k + j for i in indices for j in range(k)], step, device)
    video, captions, fps = task.video_batch(indices, s.keyframe_size, s.keyframes, (1, 2, 3, 4), s.fps)
    video = video.to(device)
    # the image embedding of one frame of the clip (which one varies with the sample)
    pick = per_sample(lambda g: torch.randint(video.shape[2], (), generator=g), task.seed, indices, 500)
    frame = video[torch.arange(len(indices)), :, pick.to(device)]
    t, noise, drop = task.draws(indices, video.shape[1:], device)
    cond = task.decoder_cond(model, frame, captions, indices, device, t)
    return diffusion_loss(model, video, task.schedule_for(task.settings.keyframe_size), t=t, noise=noise, drop=drop, fps=fps.to(device), **cond)


# weight of the matcher's steady-size term against its caption term (0.5 kept shape accuracy
# better than 1 on validation prompts: docs/evaluation.md, "Toward v9")
STEADY_SIZE_WEIGHT = 0.5


def loss_matcher(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    if task.videos is not None or task.images is not None:
        raise UserInputError(f"stage {task.stage} learns from captioned video, which only the shapes world provides "
                             "here (a --videos folder has no captions); train it without --videos / --images")
    from mavcli.data.shapes import ShapesVideoDataset, contrast_captions, render, size_drift, undersize

    s = task.settings
    ds = ShapesVideoDataset(2**62, frames=s.keyframes, size=s.keyframe_size, seed=task.seed, base_fps=s.fps,
                            rate_factors=MATCHER_RATE_FACTORS)
    windows = [ds.window(i) for i in indices]  # (spec, caption, times, fps): what ds[i] renders
    specs = [w[0] for w in windows]

    def clips(scales_of) -> torch.Tensor:
        out = [render(spec, None, s.keyframe_size, times=times, scales=scales_of(i, spec, times))
               for i, (spec, _, times, _) in zip(indices, windows)]
        return torch.from_numpy(rearrange(ShapesVideoDataset._to_unit(np.stack(out)), "b f h w c -> b c f h w")).to(device)

    video = clips(lambda i, spec, times: None)
    # each clip's twin whose object changes size (the domain's sizes never do): the keyframe
    # decoder's commonest fault, which captions cannot contrast
    twin = clips(lambda i, spec, times: size_drift(len(times), np.random.default_rng([task.seed, i, 1300])))
    if task.small_twin_weight > 0:
        # and its twin whose object is steady but smaller than the domain draws any: the size
        # at which the decoder draws some held-out pairs' objects
        small = clips(lambda i, spec, times: undersize(spec.size, len(times), np.random.default_rng([task.seed, i, 1700])))
    negatives = [contrast_captions(sp, np.random.default_rng([task.seed, i, 1100])) for sp, i in zip(specs, indices)]
    k = len(negatives[0])
    captions = [w[1] for w in windows] + [c for neg in negatives for c in neg]
    tokens, mask = task.decoder_text(captions, device)
    # the matcher sees keyframes at every noise level the sampler passes through (for
    # guidance), weighted towards the clean end (t = u^2: a third below 0.1), where it ranks
    # the finished candidates
    t, noise, _ = task.draws(indices, video.shape[1:], device)
    t = t ** 2
    alpha, sigma = task.schedule_for(task.settings.keyframe_size).alpha_sigma(t.cpu())
    alpha, sigma = alpha.view(-1, 1, 1, 1, 1).to(device), sigma.view(-1, 1, 1, 1, 1).to(device)
    # the twin gets the same noise at the same time: the size is all that tells them apart
    twins = [twin] + ([small] if task.small_twin_weight > 0 else [])
    x_t = torch.cat([alpha * x + sigma * noise for x in [video, *twins]])
    video_emb, text_emb, scale = model(x_t, t.repeat(1 + len(twins)), tokens, mask)
    b = len(indices)
    video_emb, twin_embs = video_emb[:b], video_emb[b:].split(b)
    facts = [tuple(sp.facts().values()) for sp in specs]
    same = torch.tensor([[a == c for c in facts] for a in facts], device=device)
    loss = matcher_loss(video_emb, text_emb[:b], rearrange(text_emb[b:], "(b k) e -> b k e", k=k), scale, same)
    loss = loss + STEADY_SIZE_WEIGHT * steady_size_loss(video_emb, twin_embs[0], text_emb[:b], scale)
    if task.small_twin_weight > 0:
        loss = loss + task.small_twin_weight * steady_size_loss(video_emb, twin_embs[1], text_emb[:b], scale)
    return loss


def loss_interpolation(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    s = task.settings
    # windows of settings.interp_window keyframes, as the pipeline samples them; one frame
    # skip per step (a batch shares a length)
    skips = INTERP_SKIPS
    skip = skips[int(np.random.default_rng([task.seed, step, 7]).integers(len(skips)))]
    keys = s.interp_window
    n = (keys - 1) * skip + 1
    video, _, _ = task.video_batch(indices, s.keyframe_size, n, INTERP_RATE_FACTORS, s.fps * skip)
    video = video.to(device)
    b = video.shape[0]
    known = torch.zeros(b, n, dtype=torch.bool)
    known[:, ::skip] = True
    # a third of the windows practise extrapolation: the last or the first keyframe is missing
    mode = per_sample(lambda g: torch.randint(6, (), generator=g), task.seed, indices, 600)
    known[mode == 0, n - 1] = False
    known[mode == 1, 0] = False
    extra = interp_conditioning(video, known, s.interp_prefill)
    mask = extra[:, -1:]
    t, noise, _ = task.draws(indices, video.shape[1:], device)
    return diffusion_loss(model, video, task.schedule_for(task.settings.keyframe_size), t=t, noise=noise, loss_mask=1 - mask,
                          extra=extra, frame_skip=torch.full((b,), float(skip), device=device),
                          fps=torch.full((b,), s.fps * skip, device=device))


def loss_flow_interpolation(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    data = task.motion_data()
    items = [data.sample(torch.Generator().manual_seed(sample_seed(task.seed, i, 1000))) for i in indices]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    # random flips and time reversal, per sample: the task is symmetric under all three
    flips = per_sample(lambda g: torch.rand(3, generator=g) < 0.5, task.seed, indices, 1001).to(device)
    flows = ("f01", "f10", "f0p", "f12")
    for k in ("i0", "i1", "it", *flows):
        x = batch[k]
        x = torch.where(flips[:, 0, None, None, None], x.flip(-1), x)
        batch[k] = torch.where(flips[:, 1, None, None, None], x.flip(-2), x)
    for k in flows:  # a mirrored image mirrors its flow's component too
        f = batch[k]
        f = torch.where(flips[:, 0, None, None, None], f * torch.tensor([-1.0, 1.0], device=device)[:, None, None], f)
        batch[k] = torch.where(flips[:, 1, None, None, None], f * torch.tensor([1.0, -1.0], device=device)[:, None, None], f)
    rev = flips[:, 2, None, None, None]
    i0, i1 = torch.where(rev, batch["i1"], batch["i0"]), torch.where(rev, batch["i0"], batch["i1"])
    f01, f10 = torch.where(rev, batch["f10"], batch["f01"]), torch.where(rev, batch["f01"], batch["f10"])
    # reversed, the frame before 0 is the one after 1: F_0->-1 and F_1->2 trade places
    f0p, f12 = torch.where(rev, batch["f12"], batch["f0p"]), torch.where(rev, batch["f0p"], batch["f12"])
    t = torch.where(flips[:, 2], 1 - batch["t"], batch["t"])
    # the motion mav interpolate uses: constant acceleration fitted to the neighbours' flows
    out = model(i0, i1, f01, f10, t, f0p, f12)
    return torch.sqrt((out - batch["it"]) ** 2 + 1e-6).mean()  # Charbonnier (a smooth L1)


def loss_sr_video(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    s = task.settings
    video, _, _ = task.video_batch(indices, s.sr_video_size, s.keyframes, (s.frame_skip,), s.fps * s.frame_skip)
    video = video.to(device)
    low = task.low_res(video, s.keyframe_size, indices)
    video, low = task.crop([video, low], indices, s.sr_tile or video.shape[-1])  # the pipeline runs tiles of this size
    t, noise, _ = task.draws(indices, video.shape[1:], device)
    t, source = task.sr_start(t, low, video, indices)
    return diffusion_loss(model, video, task.schedule_for(task.settings.sr_video_size), t=t, noise=noise, extra=low,
                          noised_from=source)


def loss_sr_image(task: Task, model: nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
    s = task.settings
    images, _, _ = task.image_batch(indices, s.sr_image_size)
    images = images.to(device)
    low = task.low_res(images, s.sr_video_size, indices)
    images, low = task.crop([images, low], indices, s.sr_tile or images.shape[-1])
    t, noise, _ = task.draws(indices, images.shape[1:], device)
    t, source = task.sr_start(t, low, images, indices)
    return diffusion_loss(model, images, task.schedule_for(task.settings.sr_image_size), t=t, noise=noise, extra=low,
                          noised_from=source)


TRAIN_STAGES: dict[str, TrainStage] = {
    "clip": TrainStage(build_clip, loss_clip),
    "prior": TrainStage(lambda task, _: Prior(task.configs["prior"]), loss_prior, needs_encoders=True),
    "keyframes_image": TrainStage(build_keyframes_image, loss_keyframes_image, needs_encoders=True),
    "keyframes": TrainStage(build_keyframes, loss_keyframes, needs_encoders=True),
    "interpolation": TrainStage(build_unet, loss_interpolation),
    "sr_video": TrainStage(build_unet, loss_sr_video),
    "sr_image": TrainStage(build_unet, loss_sr_image),
    "matcher": TrainStage(lambda task, _: VideoTextMatcher(task.configs["matcher"]), loss_matcher, needs_encoders=True),
    "flow_interpolation": TrainStage(lambda task, _: FlowInterpNet(FLOW_INTERP_CONFIGS[task.preset]),
                                     loss_flow_interpolation),
}
# the matcher's network and objective, a pack stage of its own: it ranks D^t's candidates while
# the matcher steers them (PackSettings.keyframe_select_times)
TRAIN_STAGES["ranker"] = TRAIN_STAGES["matcher"]
