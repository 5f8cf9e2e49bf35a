"""MakeAVideoPipeline: the inference cascade of Make-A-Video (section 3, eq. 2),

    video = SR_h( SR_l^t( F_i( D^t( P(x_e, C_x(x)), fps ) ) ) )

Each stage is a method that can also be called on its own (`interpolate`, `upsample`, ...).
Seeds: every stage draws its noise from its own generator derived from the seed, so changing
one stage's steps never changes another stage's noise; the same seed on the same device gives
bit-identical frames. Progress goes to a `callback(stage, step, total)`; nothing is printed.

Tensor layout inside: videos `(b, c, f, h, w)` in [-1, 1]; frames outside: numpy uint8
`(f, h, w, 3)`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from mavcli.diffusion import SPACING, CosineSchedule, guided, sample
from mavcli.errors import PackError, UserInputError
from mavcli.models import SAMPLED_STAGES, STOP_AFTER_STAGES
from mavcli.models.blocks import blend_known_frames, interp_conditioning, resize_frames
from mavcli.models.text import states_only, with_word_tokens
from mavcli.models.tiling import tiled
from mavcli.segments import stream_segments
from mavcli.weights.pack import Pack, load_pack, select_times_ok

ProgressCallback = Callable[[str, int, int], None]
STAGE_SEED_OFFSET = {name: i + 1 for i, name in enumerate(SAMPLED_STAGES)}


@dataclass
class VideoOutput:
    frames: np.ndarray  # uint8 (f, h, w, 3)
    fps: float
    seed: int | None = None
    prompt: str | None = None
    unknown_words: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class MemoryLimitError(UserInputError):
    """A request that would not fit in memory; `most_keyframes` is the largest that would."""

    def __init__(self, message: str, *, most_keyframes: int, frame_skip: int) -> None:
        super().__init__(message)
        self.most_keyframes, self.frame_skip = most_keyframes, frame_skip


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserInputError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """What the networks compute in: 'auto' is bfloat16 on CUDA and on CPUs that multiply
    bfloat16 in hardware (AVX512-BF16, AMX), float32 elsewhere (on other CPUs bfloat16 is
    emulated and slower, and MPS keeps float32)."""
    from mavcli.runtime import PRECISIONS, cpu_has_native_bf16

    if precision not in PRECISIONS:
        raise UserInputError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float32" or device.type == "mps":
        return torch.float32
    if precision == "bfloat16" or device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 `(f, h, w, 3)` -> float `(1, 3, f, h, w)` in [-1, 1]."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserInputError(f"frames must be a uint8 array (frames, height, width, 3); got {getattr(frames, 'shape', type(frames))}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return rearrange(x, "f h w c -> 1 c f h w").float() / 127.5 - 1.0


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float `(1, 3, f, h, w)` in [-1, 1] -> uint8 `(f, h, w, 3)`."""
    x = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(x, "c f h w -> f h w c").cpu().numpy()


class MakeAVideoPipeline:
    """Text to video with a mavcli pack. See `from_pretrained` and `__call__`."""

    def __init__(self, pack: Pack, device: str | torch.device = "cpu", *, precision: str = "auto") -> None:
        self.pack = pack
        self.device = resolve_device(device)
        self.compute_dtype = resolve_precision(precision, self.device)
        for net in pack.networks.values():
            net.to(self.device).eval().requires_grad_(False)
        self.settings = pack.settings
        te = pack.networks.get("text_encoder")
        if te is not None and te.config.vocab_size != len(pack.tokenizer.vocab):
            raise PackError(f"tokenizer has {len(pack.tokenizer.vocab)} words but the text encoder expects {te.config.vocab_size}")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, allow_download: bool = False,
                        precision: str = "auto") -> MakeAVideoPipeline:
        """A pack by local folder, by name in weights.toml (bundled or in the HF cache), or by
        Hub repo id (`allow_download=True` fetches it). `dtype` casts the networks; `precision`
        is what they compute in (see `resolve_precision`)."""
        path = Path(name_or_path) if name_or_path is not None else None
        if path is None or not path.is_dir():
            from mavcli.weights.resolve import resolve_pack

            path = resolve_pack(None if name_or_path is None else str(name_or_path), allow_download=allow_download)
        dev = resolve_device(device)
        return cls(load_pack(path, device=dev, dtype=dtype), dev, precision=precision)

    @property
    def precision(self) -> str:
        """The name of what the networks compute in: 'float32' or 'bfloat16'."""
        return str(self.compute_dtype).removeprefix("torch.")

    # ---------------------------------------------------------------------------------------
    def _autocast(self):
        """The networks' matrix products and convolutions in bfloat16 where `compute_dtype` says
        so; the samplers' state stays float32 either way."""
        if self.compute_dtype == torch.bfloat16 and self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _generator(self, seed: int, stage: str) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(seed * 1000 + STAGE_SEED_OFFSET[stage])

    def _noise(self, shape, gen: torch.Generator) -> torch.Tensor:
        # drawn on the CPU so a seed means the same noise on every device
        return torch.randn(shape, generator=gen).to(self.device)

    def _option(self, table: dict | float | int | None, stage: str, kind: str):
        if isinstance(table, dict):
            value = table.get(stage)
        else:
            value = table
        if value is None:
            value = getattr(self.settings, kind)[stage]
        return value

    def stage_sampler(self, sampler: dict | str | None, stage: str) -> str:
        """The sampler of `stage`: the caller's (one name, or a dict per stage), else the pack's
        `stage_samplers[stage]`, else the pack's `sampler`."""
        value = sampler.get(stage) if isinstance(sampler, dict) else sampler
        return value or self.settings.stage_samplers.get(stage) or self.settings.sampler

    def _sr_runner(self, net):
        """The SR network as trained: on overlapping tiles when the pack says so."""
        s = self.settings
        return tiled(net, s.sr_tile, s.sr_tile_overlap) if s.sr_tile else net

    def _schedule(self, size: int) -> CosineSchedule:
        return CosineSchedule.for_resolution(size, self.settings.schedule_base)

    # --- stages --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[str]]]:
        """C_x: prompts -> tokens `(b, L, d)`, mask `(b, L)`, pooled `(b, e)`, unknown words."""
        ids, mask, unknown = self.pack.tokenizer.batch(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens, pooled = self.pack["text_encoder"](ids, mask)
        return tokens, mask, pooled, unknown

    def decoder_context(self, prompts: list[str], tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D^t's context: the encoder's token states `(b, L, d)` of `prompts`, followed by their
        word embeddings when the pack says so -> `(b, L or 2L, d)` and its mask."""
        if not self.settings.decoder_word_tokens:
            return tokens, mask
        ids, _, _ = self.pack.tokenizer.batch(prompts)
        return with_word_tokens(self.pack["text_encoder"], ids.to(self.device), tokens, mask)

    def decoder_mask(self, prompts: list[str], mask: torch.Tensor) -> torch.Tensor | None:
        """D^t's own mask `(b, 2L)` of the `decoder_context` of `prompts` when the pack names
        `decoder_words`: the word-embedding half keeps only those words; None otherwise (D^t
        reads what the matcher reads)."""
        words = self.settings.decoder_words
        if not (words and self.settings.decoder_word_tokens):
            return None
        ids, _, _ = self.pack.tokenizer.batch(prompts)
        vocab = self.pack.tokenizer.vocab
        missing = [w for w in words if w not in vocab]
        if missing:
            raise PackError(f"the pack's decoder_words name {missing}, which its tokenizer does not know: "
                            "remove them from pack.json's settings")
        keep = torch.tensor([vocab.index(w) for w in words], dtype=ids.dtype)
        out = mask.clone()
        half = mask.shape[1] // 2
        out[:, half:] &= torch.isin(ids, keep).to(mask.device)
        return out

    @torch.no_grad()
    def prior(self, tokens, mask, pooled, *, seed: int, steps=None, guidance=None, sampler=None,
              callback: ProgressCallback | None = None) -> torch.Tensor:
        """P: text -> image embedding `(b, e)` (unit length, as the image encoder makes)."""
        net = self.pack["prior"]
        steps, guidance = self._option(steps, "prior", "steps"), self._option(guidance, "prior", "guidance")
        gen = self._generator(seed, "prior")
        x = self._noise((pooled.shape[0], net.config.embed_dim), gen)
        model = guided(net, guidance, text_emb=pooled, context=tokens, context_mask=mask)
        with self._autocast():
            emb = sample(model, x, steps, schedule=CosineSchedule(), sampler=self.stage_sampler(sampler, "prior"),
                         generator=gen, callback=_stage_cb(callback, "prior"), clip=False)
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def keyframes(self, image_emb, tokens, mask, *, seed: int, num_frames=None, fps=None, steps=None,
                  guidance=None, sampler=None, candidates: int | None = None, matcher_guidance: float | None = None,
                  select_times: Sequence[float] | None = None, callback: ProgressCallback | None = None,
                  decoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """D^t: image embedding `(b, e)` (+ D^t's text context `(b, m, d)` and its mask, fps) ->
        keyframes `(b, 3, k, s, s)`. `decoder_mask` `(b, m)` (`decoder_mask()`): D^t's own
        mask of the context, where it reads fewer words than the matcher (default: `mask`).

        With the pack's matcher (models/matcher.py): `candidates` > 1 samples that many clips
        per prompt in one batch and keeps the one the matcher scores highest against the
        prompt (candidate 0 is the clip `candidates=1` makes); `matcher_guidance` > 0 also
        steers every step along the gradient of the matcher's score (classifier guidance).
        A pack with a ranker (a second matcher, trained to also prefer steady sizes) ranks by
        the ranker instead, while the matcher steers.
        `select_times` (decreasing diffusion times) ranks the candidates earlier, on the noisy
        clips (the matcher is trained on noised clips): at each time the worse half of each
        prompt's candidates stops, at the last one all but the best (successive halving). A
        kept clip is the one the full run would have made of it, at a fraction of the cost;
        empty: rank the finished clips. Defaults: the pack's `keyframe_candidates`,
        `matcher_guidance` and `keyframe_select_times`."""
        net = self.pack["keyframes"]
        k = num_frames or self.settings.keyframes
        size = self.settings.keyframe_size
        fps = fps or self.settings.fps
        steps, guidance = self._option(steps, "keyframes", "steps"), self._option(guidance, "keyframes", "guidance")
        n = self.settings.keyframe_candidates if candidates is None else int(candidates)
        g_match = self.settings.matcher_guidance if matcher_guidance is None else float(matcher_guidance)
        times = self.settings.keyframe_select_times if select_times is None else tuple(float(t) for t in select_times)
        if n < 1:
            raise UserInputError(f"candidates must be >= 1, got {n}")
        if g_match < 0:
            raise UserInputError(f"matcher guidance must be >= 0, got {g_match}")
        check_select_times(times)
        matcher = None
        if n > 1 or g_match > 0:
            if "matcher" not in self.pack.networks:
                raise PackError("this pack has no matcher network to rank or steer keyframe samples; "
                                "use candidates 1 and matcher guidance 0 (--candidates 1)")
            matcher = self.pack["matcher"]
        ranker = self.pack["ranker"] if n > 1 and "ranker" in self.pack.networks else matcher
        b = image_emb.shape[0]
        gen = self._generator(seed, "keyframes")
        # candidate-major, so candidate 0 draws the noise a single sample would
        x = self._noise((n * b, 3, k, size, size), gen)
        dmask = (mask if decoder_mask is None else decoder_mask).repeat(n, 1)
        tokens, mask = tokens.repeat(n, 1, 1), mask.repeat(n, 1)  # (n b, m, d): each candidate's prompt
        cond = {"cond": image_emb.repeat(n, 1)}
        if net.config.context_dim:
            cond.update(context=tokens, context_mask=dmask)
        if net.config.fps_cond:
            cond["fps"] = torch.full((x.shape[0],), float(fps), device=self.device)
        schedule = self._schedule(size)
        name = self.stage_sampler(sampler, "keyframes")
        ts = schedule.timesteps(steps, SPACING.get(name, "time")).tolist()
        # the step at which each ranking happens: the first of the run's times at or below it
        cuts = sorted({sum(t > when + 1e-6 for t in ts) for when in times} - {0, steps}) if n > 1 else []
        report = _stage_cb(callback, "keyframes")

        words_until = self.settings.decoder_words_until if self.settings.decoder_word_tokens else 0.0

        def run(x, rows, start: int, end: int):
            """Sample the batch rows `rows` (of the candidate-major batch) from step start to end."""
            rows_cond = {key: v[rows] for key, v in cond.items()}
            model = guided(net, guidance, **rows_cond)
            if words_until > 0 and "context_mask" in cond:
                states = guided(net, guidance, **{**rows_cond, "context_mask": states_only(rows_cond["context_mask"])})
                model = _words_until(model, states, words_until)
            if g_match > 0:
                model = _matcher_steered(model, matcher, g_match, schedule, tokens[rows], mask[rows])
            extra = {"t_start": ts[start], "t_end": ts[end]}
            if name == "ddpm" and len(rows) < n * b:
                # the fresh noise of the full batch, so a kept clip meets the noise it would have met
                extra["noise_fn"] = lambda like: torch.randn((n * b, *like.shape[1:]), generator=gen)[rows.cpu()].to(like)
            cb = None if report is None else (lambda i, _total: report(start + i, steps))
            return sample(model, x, end - start, schedule=schedule, sampler=name, generator=gen, callback=cb, **extra)

        rows = torch.arange(n * b, device=self.device)  # (m b): the m candidates of each prompt still sampled
        done = 0
        with self._autocast():
            for i, cut in enumerate(cuts):
                x = run(x, rows, done, cut)
                keep = 1 if i == len(cuts) - 1 else (len(rows) // b + 1) // 2
                x, rows = _best_rows(ranker, x, rows, b, keep, ts[cut], tokens, mask)
                done = cut
            video = run(x, rows, done, steps).float()
        if len(rows) > b:
            video, rows = _best_rows(ranker, video, rows, b, 1, 0.0, tokens, mask)
        return video

    @torch.no_grad()
    def fill_frames(self, video: torch.Tensor, known: torch.Tensor, *, frame_skip: float, fps: float, seed: int,
                    steps=None, guidance=None, sampler=None, callback: ProgressCallback | None = None,
                    cond: dict | None = None) -> torch.Tensor:
        """F_i, masked frame interpolation and extrapolation (section 3.3).

        video `(b, 3, n, h, w)` in [-1, 1] (values at unknown frames are ignored), known `(n,)`
        bool. Returns `(b, 3, n, h, w)` whose known frames are exactly the input's.
        """
        net = self.pack["interpolation"]
        steps, guidance = self._option(steps, "interpolation", "steps"), self._option(guidance, "interpolation", "guidance")
        b, h = video.shape[0], video.shape[3]
        extra = interp_conditioning(video, known.to(self.device), self.settings.interp_prefill)
        mask = extra[:, -1:]
        kwargs = dict(cond or {})
        kwargs["extra"] = extra
        if net.config.skip_cond:
            kwargs["frame_skip"] = torch.full((b,), float(frame_skip), device=self.device)
        if net.config.fps_cond:
            kwargs["fps"] = torch.full((b,), float(fps), device=self.device)
        if not cond and (net.config.cond_dim or net.config.context_dim):
            # no text or image embedding (real footage): the network's null conditioning
            kwargs.update(_null_inputs(net, b, self.device))
            guidance = 1.0  # nothing to guide towards
        gen = self._generator(seed, "interpolation")
        x = self._noise(video.shape, gen)
        schedule = self._schedule(h)
        t0 = float(self.settings.interp_start)  # < 1: start from the known frames' linear blend
        x, extra_opts = _sdedit_start(schedule, t0, blend_known_frames(video, known) if t0 < 1.0 else None, x)
        model = guided(net, guidance, **kwargs)
        with self._autocast():
            out = sample(model, x, steps, schedule=schedule, sampler=self.stage_sampler(sampler, "interpolation"),
                         generator=gen, callback=_stage_cb(callback, "interpolation"), **extra_opts).float()
        return torch.where(mask.bool().expand_as(out), video, out)

    @torch.no_grad()
    def interpolate_video(self, keyframes: torch.Tensor, *, frame_skip: int, fps: float, seed: int,
                          callback: ProgressCallback | None = None, cond: dict | None = None, **opts) -> torch.Tensor:
        """`(b, 3, k, h, w)` -> `(b, 3, (k-1)*frame_skip+1, h, w)`; keyframes kept exactly.

        F_i runs on windows of `settings.interp_window` keyframes (the length it was trained
        on) that share their end keyframes, so the windows agree where they meet; windows of
        one length run as one batch.
        """
        if frame_skip < 1:
            raise UserInputError(f"frame skip must be >= 1, got {frame_skip}")
        b, c, k, h, w = keyframes.shape
        if frame_skip == 1 or k < 2:
            return keyframes
        n = (k - 1) * frame_skip + 1
        out = torch.zeros(b, c, n, h, w, device=self.device, dtype=keyframes.dtype)
        out[:, :, ::frame_skip] = keyframes
        span = max(1, self.settings.interp_window - 1)  # keyframe intervals per window
        starts = list(range(0, k - 1, span))
        groups: dict[int, list[int]] = {}
        for j in starts:
            groups.setdefault(min(span, k - 1 - j), []).append(j)
        for g, (intervals, js) in enumerate(sorted(groups.items(), reverse=True)):
            m = intervals * frame_skip + 1
            known = torch.zeros(m, dtype=torch.bool)
            known[::frame_skip] = True
            batch = torch.cat([out[:, :, j * frame_skip: j * frame_skip + m] for j in js])  # (len(js) b, c, m, h, w)
            window_cond = None
            if cond:
                window_cond = {key: torch.cat([v] * len(js)) for key, v in cond.items()}
            cb = None
            if callback is not None:  # one progress run over all groups of windows
                cb = lambda stage, i, tot, g=g: callback(stage, g * tot + i, len(groups) * tot)  # noqa: E731
            filled = self.fill_frames(batch, known, frame_skip=frame_skip, fps=fps * frame_skip, seed=seed + intervals,
                                      callback=cb, cond=window_cond, **opts)
            for i, j in enumerate(js):
                out[:, :, j * frame_skip: j * frame_skip + m] = filled[i * b:(i + 1) * b]
        return out

    @torch.no_grad()
    def super_resolve_video(self, video: torch.Tensor, *, seed: int, steps=None, guidance=None, sampler=None,
                            callback: ProgressCallback | None = None) -> torch.Tensor:
        """SR_l^t: `(b, 3, n, h, w)` -> `(b, 3, n, S, S)`, all frames of a chunk together. From
        pure noise, or (pack setting `sr_video_start` < 1) from the upsampled input (`sr_upsample`)
        noised to that time, which keeps the input's geometry (SDEdit)."""
        net = self.pack["sr_video"]
        size = self.settings.sr_video_size
        steps = self._option(steps, "sr_video", "steps")
        guidance = self._option(guidance, "sr_video", "guidance")
        gen = self._generator(seed, "sr_video")
        b, c, n, h, w = video.shape
        low = rearrange(resize_frames(rearrange(video, "b c f h w -> (b f) c h w"), size, self.settings.sr_upsample),
                        "(b f) c h w -> b c f h w", b=b)
        noise = self._noise((b, c, n, size, size), gen)
        chunks = _chunks(n, self.settings.chunk_frames)
        schedule = self._schedule(size)
        x, start = _sdedit_start(schedule, self.settings.sr_video_start, low, noise)
        out = []
        runner = self._sr_runner(net)
        for i, (a, z) in enumerate(chunks):
            model = guided(runner, guidance, extra=low[:, :, a:z])
            cb = _chunk_cb(callback, "sr_video", i, len(chunks), steps)
            with self._autocast():
                out.append(sample(model, x[:, :, a:z], steps, schedule=schedule,
                                  sampler=self.stage_sampler(sampler, "sr_video"), generator=gen, callback=cb,
                                  **start).float())
        return torch.cat(out, dim=2)

    @torch.no_grad()
    def super_resolve_frames(self, video: torch.Tensor, *, seed: int, steps=None, guidance=None, sampler=None,
                             callback: ProgressCallback | None = None) -> torch.Tensor:
        """SR_h: `(b, 3, n, h, w)` -> `(b, 3, n, S, S)` frame by frame (spatial only), with the
        SAME initial noise for every frame to limit flicker (section 3.4); `sr_image_start` < 1
        starts from the upsampled frames noised to that time, as in `super_resolve_video`."""
        net = self.pack["sr_image"]
        size = self.settings.sr_image_size
        steps = self._option(steps, "sr_image", "steps")
        guidance = self._option(guidance, "sr_image", "guidance")
        sampler = self.stage_sampler(sampler, "sr_image")
        gen = self._generator(seed, "sr_image")
        b, c, n, h, w = video.shape
        frames = rearrange(video, "b c f h w -> (b f) c h w")
        low = resize_frames(frames, size, self.settings.sr_upsample)
        shared = self._noise((1, c, size, size), gen)  # one noise image for all frames
        step_noise = None
        if sampler == "ddpm":  # ancestral noise is shared across frames too
            step_noise = {"noise_fn": lambda like: self._noise((1, *like.shape[1:]), gen).expand_as(like)}
        chunks = _chunks(frames.shape[0], self.settings.chunk_frames)
        schedule = self._schedule(size)
        x, start = _sdedit_start(schedule, self.settings.sr_image_start, low, shared.expand_as(low))
        out = []
        runner = self._sr_runner(net)
        for i, (a, z) in enumerate(chunks):
            model = guided(runner, guidance, extra=low[a:z])
            cb = _chunk_cb(callback, "sr_image", i, len(chunks), steps)
            with self._autocast():
                out.append(sample(model, x[a:z], steps, schedule=schedule, sampler=sampler, generator=gen,
                                  callback=cb, **start, **(step_noise or {})).float())
        return rearrange(torch.cat(out), "(b f) c h w -> b c f h w", b=b)

    # --- public entry points ------------------------------------------------------------------
    def interpolate(self, frames: np.ndarray, factor: int = 4, *, fps: float = 24.0, seed: int = 0,
                    callback: ProgressCallback | None = None, **opts) -> VideoOutput:
        """More frames between real frames: uint8 `(f, h, w, 3)` -> `((f-1)*factor+1, h, w, 3)`
        at `fps * factor`, with F_i's null (unconditional) text and image embedding."""
        if frames.shape[0] < 2:
            raise UserInputError("interpolation needs at least 2 frames")
        video = frames_to_tensor(frames, self.device)
        m = self.pack["interpolation"].config.size_multiple
        h, w = video.shape[-2:]
        if h % m or w % m:
            raise UserInputError(f"frame size {w}x{h} must be a multiple of {m} for this pack's interpolation network")
        out = self.interpolate_video(video, frame_skip=factor, fps=fps, seed=seed, callback=callback, **opts)
        return VideoOutput(tensor_to_frames(out), fps * factor, seed)

    def interpolate_stream(self, frames: Iterable[np.ndarray], factor: int, *, fps: float, cuts: Iterable[int] = (),
                           seed: int = 0, chunk: int = 9, callback: ProgressCallback | None = None,
                           **opts) -> Iterator[np.ndarray]:
        """Stream version of `interpolate` for long real videos: uint8 frames `(h, w, 3)` in,
        `factor` times as many out (the last input frame has no successor, so f inputs give
        (f-1)*factor+1 outputs), with bounded memory: `chunk` input frames are held at a time.

        Frames are reflect-padded to the size the network needs and cropped back. Scene
        `cuts` (indices of the first frame of a new shot) are never blended across: the gap
        before a cut is filled with copies of its two neighbours, half each.
        `callback(stage, done, total)` reports input frames consumed as stage "frames", and the
        sampler's steps on the run of frames in hand as F_i's own stage, so a slow first run
        shows progress before its first frame comes out.
        """
        m = self.pack["interpolation"].config.size_multiple
        calls = 0

        def run(seg: np.ndarray) -> np.ndarray:
            """Interpolate one run of frames of one shot: (k, h, w, 3) -> ((k-1)*factor+1, ...)."""
            nonlocal calls
            h, w = seg.shape[1:3]
            ph, pw = (-h) % m, (-w) % m
            if ph or pw:
                seg = np.pad(seg, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
            video = frames_to_tensor(seg, self.device)
            out = self.interpolate_video(video, frame_skip=factor, fps=fps, seed=seed + calls, callback=callback, **opts)
            calls += 1
            return tensor_to_frames(out)[:, :h, :w]

        yield from stream_segments(frames, factor, run, cuts=cuts, chunk=chunk, callback=callback)

    def upsample(self, frames: np.ndarray, *, seed: int = 0, callback: ProgressCallback | None = None) -> VideoOutput:
        """SR_l^t then SR_h on uint8 frames `(f, h, w, 3)`."""
        video = frames_to_tensor(frames, self.device)
        video = self.super_resolve_video(video, seed=seed, callback=callback)
        video = self.super_resolve_frames(video, seed=seed, callback=callback)
        return VideoOutput(tensor_to_frames(video), 0.0, seed)

    # Peak memory of a generation, fitted to `mav generate`'s peak RSS with the shapes pack
    # (29, 113 and 449 frames; 1 and 4 candidates): each output frame costs about 8 float32
    # copies of itself (the video at every resolution, the uint8 result, SR chunks in flight),
    # each keyframe of each candidate about 80 float32 copies of a keyframe (D^t's activations
    # over the whole clip, kept for the matcher's gradient); the networks and torch ~0.4 GB.
    _BYTES_PER_OUTPUT_FRAME = 8 * 4
    _BYTES_PER_KEYFRAME = 80 * 4
    _BYTES_FIXED = 400 * 2**20

    def estimate_memory(self, num_keyframes: int, frame_skip: int | None = None, candidates: int | None = None) -> int:
        """Bytes a generation of `num_keyframes` keyframes will need at its peak (see above)."""
        s = self.settings
        skip = frame_skip or s.frame_skip
        n = s.keyframe_candidates if candidates is None else candidates
        out_frames = (num_keyframes - 1) * skip + 1
        per_frame = 3 * s.sr_image_size**2 * self._BYTES_PER_OUTPUT_FRAME
        per_key = 3 * s.keyframe_size**2 * self._BYTES_PER_KEYFRAME
        return self._BYTES_FIXED + out_frames * per_frame + n * num_keyframes * per_key

    # `mav interpolate --method diffusion` on real footage: peak RSS grew 7.8-9.1 KB per pixel
    # for 6 input frames (11 frames in flight) at 320x180, 455x256 and 640x360 with the shapes
    # pack (docs/evaluation.md), about 850 bytes per pixel of each frame in flight (10% above),
    # over the 0.55 GiB such a process holds for a 64x48 clip
    _BYTES_PER_INTERP_PIXEL = 930
    _BYTES_INTERP_FIXED = 600 * 2**20

    @classmethod
    def check_interpolate_memory(cls, width: int, height: int, frames: int, factor: int, chunk: int,
                                 available: int | None = None) -> None:
        """Refuse (UserInputError) F_i on real frames of `width` x `height` whose chunks of
        `chunk` input frames (`frames` in all) would not fit in the memory left on the CPU,
        naming the largest chunk that would."""
        from mavcli.runtime import available_memory

        available = available_memory() if available is None else available
        held = min(chunk, max(frames, 2))
        per_input = factor * width * height * cls._BYTES_PER_INTERP_PIXEL  # each input frame brings `factor` frames
        need = cls._BYTES_INTERP_FIXED + ((held - 1) * factor + 1) * width * height * cls._BYTES_PER_INTERP_PIXEL
        if available is None or need <= available:
            return
        most = int((available - cls._BYTES_INTERP_FIXED - width * height * cls._BYTES_PER_INTERP_PIXEL) // per_input) + 1
        hint = (f"--chunk {most} fits" if most >= 3 else "even --chunk 3 does not fit; scale the video down first "
                "(ffmpeg -vf scale=-2:256), or use the default --method flow")
        raise UserInputError(f"F_i on {width}x{height} frames, {held} input frames at a time, needs about "
                             f"{need / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB is available; {hint}")

    def check_memory(self, num_keyframes: int, frame_skip: int | None = None, candidates: int | None = None,
                     available: int | None = None) -> None:
        """Refuse (UserInputError) a request that would not fit in the memory this process has
        left (`available`, default: what mavcli.runtime.available_memory reads), naming the
        most keyframes that would fit."""
        from mavcli.runtime import available_memory

        if self.device.type != "cpu":
            return  # GPU memory is the device's; torch reports an out-of-memory error there
        available = available_memory() if available is None else available
        need = self.estimate_memory(num_keyframes, frame_skip, candidates)
        if available is None or need <= available:
            return
        skip = frame_skip or self.settings.frame_skip
        # the estimate is linear in the keyframes: estimate(k) = estimate(1) + (k - 1) * slope
        one = self.estimate_memory(1, frame_skip, candidates)
        slope = self.estimate_memory(2, frame_skip, candidates) - one
        most = max(1, 1 + (available - one) // slope)
        raise MemoryLimitError(
            f"{num_keyframes} keyframes ({(num_keyframes - 1) * skip + 1} frames) need about {need / 2**30:.1f} GiB "
            f"of memory and {available / 2**30:.1f} GiB is available; the most that fits now is {most} keyframes "
            f"({(most - 1) * skip + 1} frames)", most_keyframes=most, frame_skip=skip)

    def __call__(self, prompt: str, *, seed: int | None = None, num_keyframes: int | None = None,
                 fps: float | None = None, frame_skip: int | None = None, steps: dict | int | None = None,
                 guidance: dict | float | None = None, sampler: dict | str | None = None,
                 callback: ProgressCallback | None = None, stop_after: str | None = None,
                 candidates: int | None = None, matcher_guidance: float | None = None,
                 select_times: Sequence[float] | None = None) -> VideoOutput:
        """Prompt -> video through every stage. `steps` / `guidance` / `sampler`: one value for
        every stage or a dict per stage (prior, keyframes, interpolation, sr_video, sr_image).
        `stop_after` ends the cascade early at a stage (keyframes, interpolation, sr_video).
        `candidates` / `matcher_guidance` / `select_times`: see `keyframes` (default: the pack's)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserInputError("the prompt is empty; describe the video, e.g. 'a red circle moving left on a black background'")
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else int(seed)
        s = self.settings
        k = num_keyframes or s.keyframes
        skip = frame_skip or s.frame_skip
        fps = float(fps or s.fps)
        if k < 1:
            raise UserInputError(f"the number of keyframes must be >= 1, got {k}")
        if stop_after is not None and stop_after not in STOP_AFTER_STAGES:
            raise UserInputError(f"stop_after={stop_after!r}: choose one of {', '.join(STOP_AFTER_STAGES)}")
        runs = SAMPLED_STAGES[: SAMPLED_STAGES.index(stop_after) + 1] if stop_after else SAMPLED_STAGES
        self.check_memory(k, skip, candidates)
        timings: dict[str, float] = {}

        def timed(name, fn, *a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - t0
            return out

        opts = dict(steps=steps, guidance=guidance, sampler=sampler, callback=callback)
        tokens, mask, pooled, unknown = timed("text_encoder", self.encode_prompt, [prompt])
        emb = timed("prior", self.prior, tokens, mask, pooled, seed=seed, **opts)
        dec_tokens, dec_mask = self.decoder_context([prompt], tokens, mask)
        video = timed("keyframes", self.keyframes, emb, dec_tokens, dec_mask, seed=seed, num_frames=k, fps=fps,
                      candidates=candidates, matcher_guidance=matcher_guidance, select_times=select_times,
                      decoder_mask=self.decoder_mask([prompt], dec_mask), **opts)
        out_fps = fps
        if "interpolation" in runs:
            fi = self.pack["interpolation"]
            cond = {}
            if fi.config.cond_dim:
                cond["cond"] = emb
            if fi.config.context_dim:
                cond.update(context=tokens, context_mask=mask)
            video = timed("interpolation", self.interpolate_video, video, frame_skip=skip, fps=fps, seed=seed,
                          cond=cond or None, **opts)
            out_fps = fps * skip
        if "sr_video" in runs:
            video = timed("sr_video", self.super_resolve_video, video, seed=seed, **opts)
        if "sr_image" in runs:
            video = timed("sr_image", self.super_resolve_frames, video, seed=seed, **opts)
        return VideoOutput(tensor_to_frames(video), out_fps, seed, prompt, unknown[0], timings)


def check_select_times(times: Sequence[float]) -> None:
    """`select_times` / `keyframe_select_times`: decreasing diffusion times in (0, 1)."""
    if not select_times_ok(times):
        raise UserInputError(f"selection times must be decreasing diffusion times in (0, 1), got {list(times)}")


def _best_rows(matcher, x: torch.Tensor, rows: torch.Tensor, b: int, keep: int, t: float, context, context_mask):
    """Successive halving's ranking: x `(m b, ...)` holds m candidates of each of b prompts
    (candidate-major; `rows` their places in the full batch); keep each prompt's `keep` best by
    the matcher's score at time t, still candidate-major. -> (x, rows) of `keep * b` clips."""
    m = len(rows) // b
    score = matcher.score(x.float(), torch.full((m * b,), t, device=x.device), context[rows], context_mask[rows])
    best = rearrange(score.float(), "(m b) -> b m", m=m).topk(keep, dim=1).indices.sort(dim=1).values
    picked = rearrange(best * b + torch.arange(b, device=x.device)[:, None], "b keep -> (keep b)")
    return x[picked], rows[picked]


def _words_until(with_words, states_only, t_until: float):
    """`PackSettings.decoder_words_until`: the word embeddings carry the motion word, which the
    layout decides at high noise; at low noise, where the shape's details form, they also pull
    objects of some held-out colour-shape pairs small and round, so D^t reads the states alone."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return states_only(x, t) if float(t.max()) <= t_until + 1e-6 else with_words(x, t)

    return fn


def _matcher_steered(model, matcher, scale: float, schedule: CosineSchedule, context, context_mask):
    """Classifier guidance (Dhariwal & Nichol 2021) by the matcher's score s(x_t, t, text):
    v' = v - scale * sigma_t * grad_x s, i.e. the clean estimate moves by scale * sigma_t^2 *
    grad_x s, a step that vanishes as the noise does."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model(x, t)
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            score = matcher.score(xg, t, context, context_mask).sum()
            (grad,) = torch.autograd.grad(score, xg)
        _, sigma = schedule.alpha_sigma(t.cpu())
        return v - scale * sigma.to(x.device).view(-1, 1, 1, 1, 1).to(v.dtype) * grad.to(v.dtype)

    return fn


def _null_inputs(net, b: int, device) -> dict:
    """Placeholder cond/context for a network run with every item's conditioning dropped."""
    c = net.config
    kw = {"drop_cond": torch.ones(b, dtype=torch.bool, device=device)}
    if c.cond_dim:
        kw["cond"] = torch.zeros(b, c.cond_dim, device=device)
    if c.context_dim:
        kw["context"] = torch.zeros(b, 1, c.context_dim, device=device)
        kw["context_mask"] = torch.ones(b, 1, dtype=torch.bool, device=device)
    return kw


def _sdedit_start(schedule, t0: float, guess: torch.Tensor | None, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """A stage's first sample and sampler options: pure `noise` when `t0` is 1, else `guess`
    (a first estimate of the output, same shape as `noise`) noised to time `t0` (SDEdit, Meng
    et al. 2022), from where the sampler refines it."""
    if t0 >= 1.0:
        return noise, {}
    alpha, sigma = (v.item() for v in schedule.alpha_sigma(torch.tensor([float(t0)])))
    return alpha * guess + sigma * noise, {"t_start": float(t0)}


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _stage_cb(callback: ProgressCallback | None, stage: str):
    if callback is None:
        return None
    return lambda step, total: callback(stage, step, total)


def _chunk_cb(callback: ProgressCallback | None, stage: str, index: int, count: int, steps: int):
    """Report chunked sampling as one run of count * steps steps."""
    if callback is None:
        return None
    return lambda step, total: callback(stage, index * steps + step, count * steps)
