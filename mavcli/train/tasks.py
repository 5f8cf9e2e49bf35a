"""What each stage learns from (Make-A-Video section 3.5): one Task per stage with its
network, its data and its loss. Every random draw is a pure function of (seed, sample index),
so a batch is the same whether one process or N data-parallel processes compute it, and a
resumed run continues exactly where it stopped.

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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from mavcli.diffusion import CosineSchedule, diffusion_loss
from mavcli.errors import UserInputError
from mavcli.models.blocks import interp_conditioning, resize_frames
from mavcli.models.flowinterp import FlowInterpConfig, FlowInterpNet
from mavcli.models.matcher import VideoTextMatcher, matcher_loss
from mavcli.models.presets import preset_configs
from mavcli.models.prior import EMBED_SCALE, Prior
from mavcli.models.text import ImageEncoder, TextEncoder, Tokenizer, clip_loss, with_word_tokens
from mavcli.models.unet import SpaceTimeUnet, inflate_unet

INTERP_SKIPS = (2, 4)  # frame skips F_i trains on (the shapes pack generates with 4)
# F_i's windows are a few keyframes of a longer clip: each window shows 1/k of the clip's travel
# (the shapes pack's 8 keyframes in windows of 3 move about as fast as k = 3.5)
INTERP_RATE_FACTORS = (2, 3, 4)
# the matcher judges keyframes as the pipeline makes them (rate 1), and slower views of the same
# motions so that a short travel still reads as a direction
MATCHER_RATE_FACTORS = (1, 2)

TRAIN_STAGES = ("clip", "prior", "keyframes_image", "keyframes", "interpolation", "sr_video", "sr_image",
                "matcher", "flow_interpolation")

# the real-footage interpolator's sizes per preset (not part of a cascade pack)
# (the gate keeps the residual off still pixels: see models/flowinterp.py)
FLOW_INTERP_CONFIGS = {"tiny": FlowInterpConfig(widths=(8, 8), head_width=4),
                       "shapes": FlowInterpConfig(residual_gate=True)}


def sample_seed(seed: int, index: int, salt: int = 0) -> int:
    """A 63-bit seed for one sample's random draws."""
    return int(np.random.SeedSequence([seed, index, salt]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def per_sample(fn, seed: int, indices: list[int], salt: int) -> torch.Tensor:
    """Stack `fn(generator)` over samples, each with its own generator."""
    return torch.stack([fn(torch.Generator().manual_seed(sample_seed(seed, i, salt))) for i in indices])


class ClipPair(torch.nn.Module):
    """The contrastive pair trained together: text encoder, image encoder, temperature."""

    def __init__(self, text: TextEncoder, image: ImageEncoder) -> None:
        super().__init__()
        self.text_encoder, self.image_encoder = text, image
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))


def shapes_tokenizer() -> Tokenizer:
    """Vocabulary of every wording of every fact of the shapes world."""
    from mavcli.data.shapes import BACKGROUNDS, COLOURS, HELD_OUT, MOTIONS, SHAPES, all_captions, sample_spec

    rng = np.random.default_rng(0)
    texts = []
    for colour in COLOURS:
        for shape in SHAPES:
            if (colour, shape) in HELD_OUT:  # their words all occur in other pairs
                continue
            for motion in MOTIONS:
                for bg in BACKGROUNDS:
                    spec = sample_spec(rng, pairs=[(colour, shape)], motions=[motion], backgrounds=[bg])
                    texts += all_captions(spec)
    return Tokenizer.from_texts(texts)


@dataclass
class Task:
    """A stage's network, data and loss; `loss(model, indices, step)` on global sample indices."""

    stage: str
    preset: str
    seed: int
    cond_drop: float
    tokenizer: Tokenizer
    encoders: ClipPair | None = None
    images: str | None = None  # a folder of captioned images instead of the shapes world
    videos: str | None = None  # a folder of uncaptioned videos instead of the shapes world
    image_mix: float = 0.0  # keyframes: the share of steps on images (TrainConfig.image_mix)
    _motion: object = dataclasses.field(default=None, init=False, repr=False)  # flow_interpolation data, built once

    def __post_init__(self) -> None:
        self.configs, self.settings = preset_configs(self.preset, len(self.tokenizer.vocab))
        s = self.settings
        self.schedule = {
            "prior": CosineSchedule(),
            "keyframes_image": CosineSchedule.for_resolution(s.keyframe_size, s.schedule_base),
            "keyframes": CosineSchedule.for_resolution(s.keyframe_size, s.schedule_base),
            "matcher": CosineSchedule.for_resolution(s.keyframe_size, s.schedule_base),
            "interpolation": CosineSchedule.for_resolution(s.keyframe_size, s.schedule_base),
            "sr_video": CosineSchedule.for_resolution(s.sr_video_size, s.schedule_base),
            "sr_image": CosineSchedule.for_resolution(s.sr_image_size, s.schedule_base),
        }.get(self.stage)
        if self.stage in ("prior", "keyframes_image", "keyframes", "matcher") and self.encoders is None:
            raise UserInputError(f"stage {self.stage} needs the trained text/image encoders: pass --encoders runs/clip/last.safetensors")
        if self.encoders is not None:
            self.encoders.eval().requires_grad_(False)

    # --- networks ----------------------------------------------------------------------------
    def build_model(self, init_from: torch.nn.Module | None = None) -> torch.nn.Module:
        c = self.configs
        if self.stage == "clip":
            return ClipPair(TextEncoder(c["text_encoder"]), ImageEncoder(c["image_encoder"]))
        if self.stage == "prior":
            return Prior(c["prior"])
        if self.stage == "keyframes_image":
            return SpaceTimeUnet(dataclasses.replace(c["keyframes"], temporal=False, fps_cond=False, frame_pos_cond=False))
        if self.stage == "matcher":
            return VideoTextMatcher(c["matcher"])
        if self.stage == "flow_interpolation":
            return FlowInterpNet(FLOW_INTERP_CONFIGS[self.preset])
        if self.stage == "keyframes":
            if init_from is not None:  # the paper's recipe: image model first, then add time
                return inflate_unet(init_from, fps_cond=c["keyframes"].fps_cond, frame_pos_cond=c["keyframes"].frame_pos_cond)
            return SpaceTimeUnet(c["keyframes"])
        return SpaceTimeUnet(c[self.stage])

    # --- data --------------------------------------------------------------------------------
    def _images(self, indices, size):
        """images `(b, 3, s, s)`, captions, and the facts that make two items positives for
        the contrastive loss (the shapes facts, or the caption text for real data)."""
        if self.images is not None:
            from mavcli.data.folders import ImageCaptionFolder

            ds = ImageCaptionFolder(self.images, size=size, seed=self.seed)
            items = [ds[i] for i in indices]
            caps = [it["caption"] for it in items]
            return torch.stack([it["image"] for it in items]), caps, caps
        from mavcli.data.shapes import ShapesImageDataset

        ds = ShapesImageDataset(2**62, size=size, seed=self.seed)
        items = [ds[i] for i in indices]
        specs = [ds.spec(i) for i in indices]
        # a single frame shows colour, shape and background, not motion
        facts = [(sp.colour, sp.shape, sp.background) for sp in specs]
        return torch.stack([it["image"] for it in items]), [it["caption"] for it in items], facts

    def _videos(self, indices, size, frames, rate_factors, base_fps):
        """videos `(b, 3, f, s, s)`, captions (None for uncaptioned real video), fps `(b,)`."""
        if self.videos is not None:
            from mavcli.data.folders import VideoFolder

            ds = VideoFolder(self.videos, frames=frames, size=size, seed=self.seed)
            items = [ds[i] for i in indices]
            return (torch.stack([it["video"] for it in items]), None,
                    torch.tensor([it["fps"] for it in items], dtype=torch.float32))
        from mavcli.data.shapes import ShapesVideoDataset

        ds = ShapesVideoDataset(2**62, frames=frames, size=size, seed=self.seed, base_fps=base_fps, rate_factors=rate_factors)
        items = [ds[i] for i in indices]
        return (torch.stack([it["video"] for it in items]), [it["caption"] for it in items],
                torch.tensor([it["fps"] for it in items], dtype=torch.float32))

    def _text(self, captions, device):
        ids, mask, _ = self.tokenizer.batch(captions)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            tokens, pooled = self.encoders.text_encoder(ids, mask)
        return tokens, mask, pooled

    def _decoder_text(self, captions, device):
        """D^t's (and the matcher's) view of captions: the encoder's token states, followed by
        the word embeddings when the pack says so (as MakeAVideoPipeline.decoder_context)."""
        tokens, mask, _ = self._text(captions, device)
        if self.settings.decoder_word_tokens:
            ids, _, _ = self.tokenizer.batch(captions)
            with torch.no_grad():
                tokens, mask = with_word_tokens(self.encoders.text_encoder, ids.to(device), tokens, mask)
        return tokens, mask

    def _image_emb(self, images):
        size = self.configs["image_encoder"].image_size
        with torch.no_grad():
            return self.encoders.image_encoder(resize_frames(images, size))

    def _draws(self, indices, shape, device, salt=0):
        t = per_sample(lambda g: torch.rand((), generator=g), self.seed, indices, 100 + salt)
        noise = per_sample(lambda g: torch.randn(shape, generator=g), self.seed, indices, 200 + salt)
        drop = per_sample(lambda g: torch.rand((), generator=g) < self.cond_drop, self.seed, indices, 300 + salt)
        return t.to(device), noise.to(device), drop.to(device)

    # --- losses ------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, indices: list[int], step: int, device: torch.device) -> torch.Tensor:
        fn = getattr(self, f"_loss_{self.stage}")
        return fn(model, indices, step, device)

    def _loss_clip(self, model, indices, step, device):
        size = self.configs["image_encoder"].image_size
        images, captions, facts = self._images(indices, size)
        ids, mask, _ = self.tokenizer.batch(captions)
        _, text_emb = model.text_encoder(ids.to(device), mask.to(device))
        image_emb = model.image_encoder(images.to(device))
        # items that share their facts are all positives for each other
        same = torch.tensor([[a == b for b in facts] for a in facts], device=device)
        return clip_loss(text_emb, image_emb, model.logit_scale, same)

    def _loss_prior(self, model, indices, step, device):
        images, captions, _ = self._images(indices, self.configs["image_encoder"].image_size)
        tokens, mask, pooled = self._text(captions, device)
        x0 = self._image_emb(images.to(device)) * EMBED_SCALE
        t, noise, drop = self._draws(indices, x0.shape[1:], device)
        return diffusion_loss(model, x0, self.schedule, t=t, noise=noise, drop=drop,
                              text_emb=pooled, context=tokens, context_mask=mask)

    def _decoder_cond(self, model, images_for_emb, captions, indices, device):
        model = getattr(model, "module", model)  # the network itself under DDP, for its null embeddings
        emb = self._image_emb(images_for_emb.to(device))
        if captions is None:  # uncaptioned video: the null text token (as in guidance)
            ctx = model.null_context.detach()
            tokens = ctx.expand(len(indices), 1, ctx.shape[0])
            mask = torch.ones(len(indices), 1, dtype=torch.bool, device=device)
        else:
            tokens, mask = self._decoder_text(captions, device)
        # also drop the image embedding alone now and then, so text tokens can steer by themselves
        only_emb = per_sample(lambda g: torch.rand((), generator=g) < self.cond_drop, self.seed, indices, 400).to(device)
        emb = torch.where(only_emb[:, None], model.null_cond.detach().expand_as(emb), emb)
        return dict(cond=emb, context=tokens, context_mask=mask)

    def _loss_keyframes_image(self, model, indices, step, device):
        images, captions, _ = self._images(indices, self.settings.keyframe_size)
        images = images.to(device)
        cond = self._decoder_cond(model, images, captions, indices, device)
        t, noise, drop = self._draws(indices, images.shape[1:], device)
        return diffusion_loss(model, images, self.schedule, t=t, noise=noise, drop=drop, **cond)

    def image_step(self, step: int) -> bool:
        """Whether `step` of stage keyframes trains on images: a function of (seed, step) only,
        so every data-parallel rank and a resumed run take the same branch."""
        return self.image_mix > 0 and float(np.random.default_rng([self.seed, step, 1200]).random()) < self.image_mix

    def _loss_keyframes(self, model, indices, step, device):
        s = self.settings
        if self.image_step(step):
            # as many images as the clips have frames, so an image step costs about a clip step;
            # 4-D input: D^t runs as the image decoder, every temporal layer skipped
            k = s.keyframes
            return self._loss_keyframes_image(model, [i * k + j for i in indices for j in range(k)], step, device)
        video, captions, fps = self._videos(indices, s.keyframe_size, s.keyframes, (1, 2, 3, 4), s.fps)
        video = video.to(device)
        # the image embedding of one frame of the clip (which one varies with the sample)
        pick = per_sample(lambda g: torch.randint(video.shape[2], (), generator=g), self.seed, indices, 500)
        frame = video[torch.arange(len(indices)), :, pick.to(device)]
        cond = self._decoder_cond(model, frame, captions, indices, device)
        t, noise, drop = self._draws(indices, video.shape[1:], device)
        return diffusion_loss(model, video, self.schedule, t=t, noise=noise, drop=drop, fps=fps.to(device), **cond)

    def _loss_matcher(self, model, indices, step, device):
        if self.videos is not None or self.images is not None:
            raise UserInputError("stage matcher learns from captioned video, which only the shapes world provides "
                                 "here (a --videos folder has no captions); train it without --videos / --images")
        from mavcli.data.shapes import ShapesVideoDataset, contrast_captions

        s = self.settings
        ds = ShapesVideoDataset(2**62, frames=s.keyframes, size=s.keyframe_size, seed=self.seed, base_fps=s.fps,
                                rate_factors=MATCHER_RATE_FACTORS)
        items = [ds[i] for i in indices]
        specs = [ds.spec(i) for i in indices]
        video = torch.stack([it["video"] for it in items]).to(device)
        negatives = [contrast_captions(sp, np.random.default_rng([self.seed, i, 1100])) for sp, i in zip(specs, indices)]
        k = len(negatives[0])
        captions = [it["caption"] for it in items] + [c for neg in negatives for c in neg]
        tokens, mask = self._decoder_text(captions, device)
        # the matcher sees keyframes at every noise level the sampler passes through (for
        # guidance), weighted towards the clean end (t = u^2: a third below 0.1), where it ranks
        # the finished candidates
        t, noise, _ = self._draws(indices, video.shape[1:], device)
        t = t ** 2
        alpha, sigma = self.schedule.alpha_sigma(t.cpu())
        x_t = alpha.view(-1, 1, 1, 1, 1).to(device) * video + sigma.view(-1, 1, 1, 1, 1).to(device) * noise
        video_emb, text_emb, scale = model(x_t, t, tokens, mask)
        b = len(indices)
        facts = [tuple(sp.facts().values()) for sp in specs]
        same = torch.tensor([[a == c for c in facts] for a in facts], device=device)
        return matcher_loss(video_emb, text_emb[:b], rearrange(text_emb[b:], "(b k) e -> b k e", k=k), scale, same)

    def _loss_interpolation(self, model, indices, step, device):
        s = self.settings
        # windows of settings.interp_window keyframes, as the pipeline samples them; one frame
        # skip per step (a batch shares a length)
        skips = INTERP_SKIPS
        skip = skips[int(np.random.default_rng([self.seed, step, 7]).integers(len(skips)))]
        keys = s.interp_window
        n = (keys - 1) * skip + 1
        video, _, _ = self._videos(indices, s.keyframe_size, n, INTERP_RATE_FACTORS, s.fps * skip)
        video = video.to(device)
        b = video.shape[0]
        known = torch.zeros(b, n, dtype=torch.bool)
        known[:, ::skip] = True
        # a third of the windows practise extrapolation: the last or the first keyframe is missing
        mode = per_sample(lambda g: torch.randint(6, (), generator=g), self.seed, indices, 600)
        known[mode == 0, n - 1] = False
        known[mode == 1, 0] = False
        extra = interp_conditioning(video, known, s.interp_prefill)
        mask = extra[:, -1:]
        t, noise, _ = self._draws(indices, video.shape[1:], device)
        return diffusion_loss(model, video, self.schedule, t=t, noise=noise, loss_mask=1 - mask,
                              extra=extra, frame_skip=torch.full((b,), float(skip), device=device),
                              fps=torch.full((b,), s.fps * skip, device=device))

    def _motion_data(self):
        """The interpolator's sample mix, built once (it computes DIS flows of every window)."""
        if self._motion is None:
            from mavcli.data.motion import LayeredMotion, default_motion_data, procedural_photos

            if self.preset == "tiny":  # tests: synthetic motion over procedural textures only
                self._motion = LayeredMotion(procedural_photos(3, 64, self.seed), size=32, max_shift=6.0)
            else:
                self._motion = default_motion_data(videos=self.videos)
        return self._motion

    def _loss_flow_interpolation(self, model, indices, step, device):
        data = self._motion_data()
        items = [data.sample(torch.Generator().manual_seed(sample_seed(self.seed, i, 1000))) for i in indices]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        # random flips and time reversal, per sample: the task is symmetric under all three
        flips = per_sample(lambda g: torch.rand(3, generator=g) < 0.5, self.seed, indices, 1001).to(device)
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

    def _low_res(self, hi: torch.Tensor, low_size: int, indices) -> torch.Tensor:
        """The SR condition of `(b, c, [f,] h, w)`: downsample each frame to the previous
        stage's size, upsample back, and add a little noise (Imagen's conditioning
        augmentation) so the network tolerates the imperfect outputs of the stage before."""
        size = hi.shape[-1]
        frames = hi.reshape(-1, *hi.shape[-3:]) if hi.ndim == 4 else rearrange(hi, "b c f h w -> (b f) c h w")
        low = resize_frames(resize_frames(frames, low_size), size)
        low = low if hi.ndim == 4 else rearrange(low, "(b f) c h w -> b c f h w", b=hi.shape[0])
        level = per_sample(lambda g: torch.rand((), generator=g) * 0.1, self.seed, indices, 700).to(hi.device)
        noise = per_sample(lambda g: torch.randn(hi.shape[1:], generator=g), self.seed, indices, 800).to(hi.device)
        return low + level.view(-1, *[1] * (hi.ndim - 1)) * noise

    def _crop(self, tensors, indices, crop: int):
        """The same random `crop` x `crop` window of every tensor (last two dims) per sample."""
        size = tensors[0].shape[-1]
        if crop >= size:
            return tensors
        corner = per_sample(lambda g: torch.randint(size - crop + 1, (2,), generator=g), self.seed, indices, 900)
        out = []
        for x in tensors:
            out.append(torch.stack([x[i, ..., y:y + crop, z:z + crop] for i, (y, z) in enumerate(corner.tolist())]))
        return out

    def _loss_sr_video(self, model, indices, step, device):
        s = self.settings
        video, _, _ = self._videos(indices, s.sr_video_size, s.keyframes, (s.frame_skip,), s.fps * s.frame_skip)
        video = video.to(device)
        low = self._low_res(video, s.keyframe_size, indices)
        video, low = self._crop([video, low], indices, s.sr_tile or video.shape[-1])  # the pipeline runs tiles of this size
        t, noise, _ = self._draws(indices, video.shape[1:], device)
        return diffusion_loss(model, video, self.schedule, t=t, noise=noise, extra=low)

    def _loss_sr_image(self, model, indices, step, device):
        s = self.settings
        images, _, _ = self._images(indices, s.sr_image_size)
        images = images.to(device)
        low = self._low_res(images, s.sr_video_size, indices)
        images, low = self._crop([images, low], indices, s.sr_tile or images.shape[-1])
        t, noise, _ = self._draws(indices, images.shape[1:], device)
        return diffusion_loss(model, images, self.schedule, t=t, noise=noise, extra=low)


def load_encoders(path: str | Path, preset: str, tokenizer: Tokenizer) -> ClipPair:
    """The text / image encoders: the EMA weights of a `clip` training checkpoint, or the
    networks of a pack folder (whose vocabulary must be the task's)."""
    from mavcli.weights.safetensors_io import load_state_strict

    configs, _ = preset_configs(preset, len(tokenizer.vocab))
    pair = ClipPair(TextEncoder(configs["text_encoder"]), ImageEncoder(configs["image_encoder"]))
    if Path(path).is_dir():
        from mavcli.weights.pack import load_pack

        pack = load_pack(path, stages=("text_encoder", "image_encoder"))
        if pack.tokenizer.vocab != tokenizer.vocab:
            raise UserInputError(f"the pack at {path} has another vocabulary than this training data")
        pair.text_encoder.load_state_dict(pack["text_encoder"].float().state_dict())
        pair.image_encoder.load_state_dict(pack["image_encoder"].float().state_dict())
        return pair
    from mavcli.train.checkpoint import read_checkpoint

    _, _, tensors, _ = read_checkpoint(path)
    load_state_strict(pair, {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}, str(path))
    return pair
