"""The data every training stage draws on (Make-A-Video section 3.5): `Task` holds a stage's
preset, tokenizer, frozen encoders and data sources, and hands out batches, text encodings
and noise draws; the stages' networks and losses are in mavcli/train/stages.py. Every random
draw is a pure function of (seed, sample index), so a batch is the same whether one process or
N data-parallel processes compute it, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from mavcli.data.faults import round_corners
from mavcli.diffusion import CosineSchedule
from mavcli.errors import UserInputError
from mavcli.models.blocks import resize_frames
from mavcli.models.flowinterp import FlowInterpConfig
from mavcli.models.presets import preset_configs
from mavcli.models.text import ImageEncoder, TextEncoder, Tokenizer, states_only, with_word_tokens

INTERP_SKIPS = (2, 4)  # frame skips F_i trains on (the shapes pack generates with 4)
# F_i's windows are a few keyframes of a longer clip: each window shows 1/k of the clip's travel
# (the shapes pack's 8 keyframes in windows of 3 move about as fast as k = 3.5)
INTERP_RATE_FACTORS = (2, 3, 4)
# the matcher judges keyframes as the pipeline makes them (rate 1), and slower views of the same
# motions so that a short travel still reads as a direction
MATCHER_RATE_FACTORS = (1, 2)


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


# the most rounding --sr-round-mix gives, as a Gaussian's sigma in keyframe pixels: it takes a
# square of the shapes world to a fill ratio of about 0.91 at the end of the cascade (the
# keyframe decoder's roundest held-out squares, docs/evaluation.md) and a triangle to about 0.79
SR_ROUND_SIGMA = 2.0


@dataclass
class Task:
    """A stage's data: batches, text encodings and noise draws on global sample indices."""

    stage: str
    preset: str
    seed: int
    cond_drop: float
    tokenizer: Tokenizer
    encoders: ClipPair | None = None
    images: str | None = None  # a folder of captioned images instead of the shapes world
    videos: str | None = None  # a folder of uncaptioned videos instead of the shapes world
    image_mix: float = 0.0  # keyframes: the share of steps on images (TrainConfig.image_mix)
    time_power: float = 1.0  # training times u ** time_power (TrainConfig.time_power)
    image_time_power: float | None = None  # keyframes' image steps (TrainConfig.image_time_power)
    word_drop: float = 0.0  # keyframes (TrainConfig.word_drop)
    word_drop_until: float = 1.0  # keyframes (TrainConfig.word_drop_until)
    small_twin_weight: float = 0.0  # matcher, ranker (TrainConfig.small_twin_weight)
    sr_start_mix: float = 0.0  # sr stages (TrainConfig.sr_start_mix)
    sr_round_mix: float = 0.0  # sr stages (TrainConfig.sr_round_mix)
    sr_size_mix: float = 0.0  # sr_video (TrainConfig.sr_size_mix)
    sr_start_time: float | None = None  # sr stages: the start sampling uses (None: the preset's)
    _motion: object = dataclasses.field(default=None, init=False, repr=False)  # flow_interpolation data, built once
    # folders of real data, built once per (kind, size, frames): a video folder probes every file
    _folders: dict = dataclasses.field(default_factory=dict, init=False, repr=False)
    #: hears what the user should know about the data (e.g. a video left out); set by `train`
    on_message: Callable[[str], None] | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.configs, self.settings = preset_configs(self.preset, len(self.tokenizer.vocab))
        if self.encoders is not None:
            self.encoders.eval().requires_grad_(False)

    def schedule_for(self, size: int) -> CosineSchedule:
        """The noise schedule of a stage that works at `size` pixels (shifted with resolution)."""
        return CosineSchedule.for_resolution(size, self.settings.schedule_base)

    def _folder(self, key: tuple, build: Callable[[], object]):
        """The dataset of a folder of real data, built on first use; the videos it leaves out
        are told to `on_message` once."""
        if key not in self._folders:
            ds = self._folders[key] = build()
            for _, why in getattr(ds, "skipped", []):
                if self.on_message is not None:
                    self.on_message(f"left out of training: {why}")
        return self._folders[key]

    def image_batch(self, indices, size):
        """images `(b, 3, s, s)`, captions, and the facts that make two items positives for
        the contrastive loss (the shapes facts, or the caption text for real data)."""
        if self.images is not None:
            from mavcli.data.folders import ImageCaptionFolder

            ds = self._folder(("images", size), lambda: ImageCaptionFolder(self.images, size=size, seed=self.seed))
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

    def video_batch(self, indices, size, frames, rate_factors, base_fps):
        """videos `(b, 3, f, s, s)`, captions (None for uncaptioned real video), fps `(b,)`."""
        if self.videos is not None:
            from mavcli.data.folders import VideoFolder

            ds = self._folder(("videos", size, frames),
                              lambda: VideoFolder(self.videos, frames=frames, size=size, seed=self.seed))
            items = [ds[i] for i in indices]
            return (torch.stack([it["video"] for it in items]), None,
                    torch.tensor([it["fps"] for it in items], dtype=torch.float32))
        from mavcli.data.shapes import ShapesVideoDataset

        ds = ShapesVideoDataset(2**62, frames=frames, size=size, seed=self.seed, base_fps=base_fps, rate_factors=rate_factors)
        items = [ds[i] for i in indices]
        return (torch.stack([it["video"] for it in items]), [it["caption"] for it in items],
                torch.tensor([it["fps"] for it in items], dtype=torch.float32))

    def text(self, captions, device):
        ids, mask, _ = self.tokenizer.batch(captions)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            tokens, pooled = self.encoders.text_encoder(ids, mask)
        return tokens, mask, pooled

    def decoder_text(self, captions, device):
        """D^t's (and the matcher's) view of captions: the encoder's token states, followed by
        the word embeddings when the pack says so (as MakeAVideoPipeline.decoder_context)."""
        tokens, mask, _ = self.text(captions, device)
        if self.settings.decoder_word_tokens:
            ids, _, _ = self.tokenizer.batch(captions)
            with torch.no_grad():
                tokens, mask = with_word_tokens(self.encoders.text_encoder, ids.to(device), tokens, mask)
        return tokens, mask

    def image_emb(self, images):
        size = self.configs["image_encoder"].image_size
        with torch.no_grad():
            return self.encoders.image_encoder(resize_frames(images, size))

    def draws(self, indices, shape, device, salt=0, power=None):
        """times `(b,)` (u ** power, default the task's time power), noise `(b, *shape)` and
        conditioning drops `(b,)`, each a function of (seed, index, salt)."""
        power = self.time_power if power is None else power
        t = per_sample(lambda g: torch.rand((), generator=g), self.seed, indices, 100 + salt) ** power
        noise = per_sample(lambda g: torch.randn(shape, generator=g), self.seed, indices, 200 + salt)
        drop = per_sample(lambda g: torch.rand((), generator=g) < self.cond_drop, self.seed, indices, 300 + salt)
        return t.to(device), noise.to(device), drop.to(device)

    def decoder_cond(self, model, images_for_emb, captions, indices, device, t=None):
        """D^t's conditioning of a batch: the image embedding, the text context and its mask;
        with `word_drop`, samples whose time `t` `(b,)` is at most `word_drop_until` lose the
        word-embedding half of their context now and then."""
        model = getattr(model, "module", model)  # the network itself under DDP, for its null embeddings
        emb = self.image_emb(images_for_emb.to(device))
        if captions is None:  # uncaptioned video: the null text token (as in guidance)
            ctx = model.null_context.detach()
            tokens = ctx.expand(len(indices), 1, ctx.shape[0])
            mask = torch.ones(len(indices), 1, dtype=torch.bool, device=device)
        else:
            tokens, mask = self.decoder_text(captions, device)
            if self.word_drop > 0:
                if not self.settings.decoder_word_tokens:
                    raise UserInputError("--word-drop masks the word embeddings in D^t's context, and this "
                                         "preset's decoder does not read them (decoder_word_tokens is off)")
                pick = per_sample(lambda g: torch.rand((), generator=g) < self.word_drop, self.seed, indices, 1600)
                pick = pick.to(device) & (t <= self.word_drop_until)
                mask = torch.where(pick[:, None], states_only(mask), mask)
        # also drop the image embedding alone now and then, so text tokens can steer by themselves
        only_emb = per_sample(lambda g: torch.rand((), generator=g) < self.cond_drop, self.seed, indices, 400).to(device)
        emb = torch.where(only_emb[:, None], model.null_cond.detach().expand_as(emb), emb)
        return dict(cond=emb, context=tokens, context_mask=mask)

    def image_step(self, step: int) -> bool:
        """Whether `step` of stage keyframes trains on images: a function of (seed, step) only,
        so every data-parallel rank and a resumed run take the same branch."""
        return self.image_mix > 0 and float(np.random.default_rng([self.seed, step, 1200]).random()) < self.image_mix

    def motion_data(self):
        """The interpolator's sample mix, built once (it computes DIS flows of every window)."""
        if self._motion is None:
            from mavcli.data.motion import LayeredMotion, default_motion_data, procedural_photos

            if self.preset == "tiny":  # tests: synthetic motion over procedural textures only
                self._motion = LayeredMotion(procedural_photos(3, 64, self.seed), size=32, max_shift=6.0)
            else:
                self._motion = default_motion_data(videos=self.videos, on_skip=self.on_message)
        return self._motion

    def low_res(self, hi: torch.Tensor, low_size: int, indices) -> torch.Tensor:
        """The SR condition of `(b, c, [f,] h, w)`: downsample each frame to the previous
        stage's size, upsample back, and add a little noise (Imagen's conditioning
        augmentation) so the network tolerates the imperfect outputs of the stage before; with
        `sr_round_mix` a share of the samples have their corners rounded first, and with
        `sr_size_mix` a share of the clips have their object's size change over the frames
        (`round_corners`), the decoder's faults, which the SR stage learns to undo."""
        size = hi.shape[-1]
        frames = hi.reshape(-1, *hi.shape[-3:]) if hi.ndim == 4 else rearrange(hi, "b c f h w -> (b f) c h w")
        sigma = sizes = None
        if self.sr_round_mix > 0:
            # one rounding per sample, shared by its frames, drawn in keyframe pixels (the size
            # at which the decoder rounds) and scaled to this stage's
            pick = per_sample(lambda g: torch.rand((), generator=g) < self.sr_round_mix, self.seed, indices, 1200)
            amount = per_sample(lambda g: torch.rand((), generator=g), self.seed, indices, 1300)
            sigma = torch.where(pick, amount * SR_ROUND_SIGMA * size / self.settings.keyframe_size, 0.0)
            sigma = sigma.repeat_interleave(frames.shape[0] // hi.shape[0]).tolist()
        if self.sr_size_mix > 0 and hi.ndim == 5:
            # sizes that change over the clip as the matcher's twins do (size_drift), scaled
            # down at random so mild changes are seen as well as clear ones
            from mavcli.data.shapes import size_drift

            f = hi.shape[2]
            pick = per_sample(lambda g: torch.rand((), generator=g) < self.sr_size_mix, self.seed, indices, 1400)
            sizes = []
            for i, p in zip(indices, pick.tolist()):
                rng = np.random.default_rng([self.seed, i, 1500])
                sizes += (1 + rng.random() * (size_drift(f, rng) - 1)).tolist() if p else [1.0] * f
        if sigma is not None or sizes is not None:
            frames = round_corners(frames, sigma or [0.0] * frames.shape[0], sizes)
        low = resize_frames(resize_frames(frames, low_size), size, self.settings.sr_upsample)
        low = low if hi.ndim == 4 else rearrange(low, "(b f) c h w -> b c f h w", b=hi.shape[0])
        level = per_sample(lambda g: torch.rand((), generator=g) * 0.1, self.seed, indices, 700).to(hi.device)
        noise = per_sample(lambda g: torch.randn(hi.shape[1:], generator=g), self.seed, indices, 800).to(hi.device)
        return low + level.view(-1, *[1] * (hi.ndim - 1)) * noise

    def sr_start(self, t: torch.Tensor, low: torch.Tensor, hi: torch.Tensor, indices):
        """-> (times `(b,)`, `noised_from` for diffusion_loss): a share `sr_start_mix` of the
        samples noise their enlarged input `low` (not the render `hi`) at times in
        [start / 2, start], as sampling from the stage's start does (`sr_start_time`, else the
        preset's); None when no sample does."""
        start = self.sr_start_time
        if start is None:
            start = getattr(self.settings, f"{self.stage}_start")
        if self.sr_start_mix <= 0 or start >= 1.0:
            return t, None
        pick = per_sample(lambda g: torch.rand((), generator=g) < self.sr_start_mix, self.seed, indices, 1000).to(t.device)
        at = per_sample(lambda g: torch.rand((), generator=g), self.seed, indices, 1100).to(t.device)
        t = torch.where(pick, start * (0.5 + 0.5 * at), t)
        return t, torch.where(pick.view(-1, *[1] * (hi.ndim - 1)), low, hi)

    def crop(self, tensors, indices, crop: int):
        """The same random `crop` x `crop` window of every tensor (last two dims) per sample."""
        size = tensors[0].shape[-1]
        if crop >= size:
            return tensors
        corner = per_sample(lambda g: torch.randint(size - crop + 1, (2,), generator=g), self.seed, indices, 900)
        out = []
        for x in tensors:
            out.append(torch.stack([x[i, ..., y:y + crop, z:z + crop] for i, (y, z) in enumerate(corner.tolist())]))
        return out

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
