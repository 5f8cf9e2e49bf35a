"""`mav generate` with an open latent video pack (ModelScope text-to-video, Zeroscope): the
latent cascade of `mavcli.latent_pipeline`, with the same progress, output and reproducibility
as the shapes cascade."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mavcli.cli import console
from mavcli.cli.progress import CascadeProgress
from mavcli.errors import PackError, UserInputError

if TYPE_CHECKING:
    from mavcli.weights.manifest import Manifest, PackEntry

LATENT_STEP_STAGES = ("keyframes", "upscale")


@dataclass
class LatentRequest:
    jobs: list[tuple[str, int]]
    paths: list[Path]
    fmt: str
    overwrite: bool
    negative_prompt: str
    frames: int | None
    height: int | None
    width: int | None
    steps: dict[str, int]
    guidance: dict[str, float]
    interp_factor: int
    upscale: str | None
    upscale_size: tuple[int, int] | None
    upscale_strength: float | None
    device: str
    quiet: bool
    verbose: bool
    precision: str = "auto"
    sampler: str | None = None  # D^t's: ddim (default) or dpmpp


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'576x320' (width x height) -> (height, width)."""
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        size = None
    if not sep or size is None or min(size) < 1:
        raise UserInputError(f"--upscale-size takes WIDTHxHEIGHT, e.g. 576x320; got {text!r}")
    return size


def _placement(device: str, precision: str):
    """(device, dtype) a latent pack runs in: auto precision is the pack's own choice (float16 on
    GPUs without bfloat16 too)."""
    from mavcli.latent_pipeline import compute_dtype
    from mavcli.pipeline import resolve_device, resolve_precision

    dev = resolve_device(device)
    return dev, compute_dtype(dev) if precision == "auto" else resolve_precision(precision, dev)


def check_latent_memory(folder: Path, req: LatentRequest, up_folder: Path | None, available: int | None = None) -> bool:
    """Before any network is loaded: whether a CPU generation fits in the memory left with the
    two guidance branches as one batch (True), or only one after the other (False), counting
    both packs' networks (the upscaler is loaded beside the first) and the larger of their U-Net
    steps' activations. Refuses (UserInputError) a request that fits neither way."""
    from mavcli.latent_pipeline import PROCESS_BYTES, LatentVideoPipeline as P
    from mavcli.runtime import available_memory

    dev, dtype = _placement(req.device, req.precision)
    available = available_memory() if available is None else available
    if dev.type != "cpu" or available is None:
        return True
    s = P.folder_settings(folder)
    jobs = [(folder, req.frames or s.frames, req.height or s.height, req.width or s.width)]
    what = f"{jobs[0][1]} frames of {jobs[0][3]}x{jobs[0][2]}"
    if up_folder is not None:
        u = P.folder_settings(up_folder)
        uh, uw = req.upscale_size or (u.height, u.width)
        jobs.append((up_folder, (jobs[0][1] - 1) * req.interp_factor + 1, uh, uw))
        what += f", upscaled as {jobs[1][1]} frames of {uw}x{uh}"

    weights = sum(P.weights_memory(f, dtype) for f, *_ in jobs)  # every network stays loaded

    def need(batch: bool) -> int:  # one U-Net step running at a time
        return PROCESS_BYTES + weights + max(P.step_memory(f, frames=n, height=h, width=w, dtype=dtype,
                                                           guidance_batch=batch) for f, n, h, w in jobs)

    if need(True) <= available:
        return True
    if need(False) <= available:
        return False
    raise UserInputError(
        f"{what} in {str(dtype).removeprefix('torch.')} need about {need(False) / 2**30:.1f} GiB of memory and "
        f"{available / 2**30:.1f} GiB is available; ask for fewer --frames or a smaller --height/--width"
        f"{' or --upscale-size' if up_folder is not None else ''}, or free memory")


def open_latent(folder: Path, device: str, precision: str = "auto"):
    import torch

    from mavcli.latent_pipeline import LatentVideoPipeline

    dev, dtype = _placement(device, precision)
    pipe = LatentVideoPipeline.from_folder(folder, device=dev, dtype=dtype)
    if pipe.dtype != torch.float32:
        console.info(f"computing in {str(pipe.dtype).removeprefix('torch.')} on {dev}")
    return pipe


@dataclass
class LatentPack:
    """A latent pack named on the command line: its folder once it is on disk, or (`folder` None)
    the weights.toml entry still to be downloaded."""

    name: str
    folder: Path | None
    entry: PackEntry | None = None
    manifest: Manifest | None = None


def find_latent_pack(pack: str | None, manifest: Path | None = None) -> LatentPack | None:
    """The latent (diffusers-layout) pack `pack` names, found without downloading anything; None
    for a mavcli pack."""
    from mavcli.weights import diffusers_layout as layout
    from mavcli.weights.manifest import load_manifest
    from mavcli.weights.resolve import resolve_pack

    if pack is not None and Path(pack).expanduser().is_dir():
        folder = Path(pack).expanduser()
        return LatentPack(pack, folder) if layout.is_diffusers_folder(folder) else None
    man = load_manifest(manifest)
    entry = man.get(pack) if pack else None
    if entry is None or entry.kind != "diffusers":
        return None
    try:
        folder = resolve_pack(pack, manifest=man, allow_download=False)
    except PackError:  # not downloaded, or a cached file failed its check
        folder = None
    return LatentPack(pack, folder, entry, man)


def fetch_latent_packs(packs: list[LatentPack], req: LatentRequest, *, download: bool) -> bool:
    """Bring the packs still missing to disk and check memory (`check_latent_memory`, whose
    answer this returns) before their weights are downloaded: a pack is fetched only with
    --download or after the user agrees; the optional libraries are checked first, then each
    pack's configs (a few MB) are fetched, which is all the memory check reads."""
    from dataclasses import replace

    from mavcli.cli.download import RichDownloadProgress, announce_pack
    from mavcli.weights import diffusers_layout as layout
    from mavcli.weights.hub import download_pack
    from mavcli.weights.resolve import resolve_pack

    pending = [p for p in packs if p.folder is None]
    for p in pending:
        assert p.entry is not None and p.manifest is not None
        if not download:
            size = f"{p.entry.total_size / 1e9:.1f} GB" if p.entry.size_known else "several GB"
            question = (f"pack {p.name!r} ({p.entry.repo}, {size}, licence {p.entry.licence or 'see its model card'}) "
                        "is not downloaded yet. Download it now?")
            if not sys.stdin.isatty() or not _confirm(question):
                raise PackError(f"pack {p.name!r} is not downloaded. Fetch it with: {p.manifest.fetch_command(p.name)} "
                                "(or pass --download to mav generate)")
    for module in ("diffusers", "transformers"):
        layout.require_extra(module)
    for p in pending:
        announce_pack(p.name, p.entry)
        configs = replace(p.entry, files=tuple(f for f in p.entry.files if not f.path.endswith(".safetensors")))
        with RichDownloadProgress() as progress:
            p.folder = download_pack(configs, progress=progress, fetch_command=p.manifest.fetch_command(p.name))
    batch = check_latent_memory(packs[0].folder, req, packs[1].folder if len(packs) > 1 else None)
    for p in pending:
        with RichDownloadProgress() as progress:
            p.folder = resolve_pack(p.name, manifest=p.manifest, allow_download=True, progress=progress)
    return batch


def _confirm(question: str) -> bool:
    import typer

    return typer.confirm(question, default=False, err=True)


def run_latent(pack: LatentPack, req: LatentRequest, t_start: float, *, download: bool = False,
               manifest: Path | None = None) -> None:
    from mavcli.cli.loading import open_flow_interpolator
    from mavcli.video import write_video

    t0 = time.perf_counter()
    packs = [pack]
    if req.upscale is not None:
        up = find_latent_pack(req.upscale, manifest)
        if up is None:
            raise UserInputError(f"--upscale {req.upscale}: not a latent video pack (a diffusers-layout folder or "
                                 "a weights.toml pack of kind diffusers, e.g. zeroscope-xl)")
        packs.append(up)
    batch = fetch_latent_packs(packs, req, download=download)
    folder = pack.folder
    pipe = open_latent(folder, req.device, req.precision)
    upscaler = None if len(packs) == 1 else open_latent(packs[1].folder, req.device, req.precision)
    if not batch:
        console.info("memory is short: the guided and unguided U-Net passes run one after the other "
                     "(half the activations, about 7% slower)")
        for p in (pipe, upscaler):
            if p is not None:
                p.settings.guidance_batch = False
    interp = open_flow_interpolator(None, req.device) if req.interp_factor > 1 else None
    load_s = time.perf_counter() - t0
    for i, ((text, seed), path) in enumerate(zip(req.jobs, req.paths)):
        label = f"[{i + 1}/{len(req.jobs)}] " if len(req.jobs) > 1 else ""
        with CascadeProgress(label, disable=req.quiet) as progress:
            video = pipe(text, negative_prompt=req.negative_prompt, seed=seed, frames=req.frames, height=req.height,
                         width=req.width, steps=req.steps.get("keyframes"), guidance=req.guidance.get("keyframes"),
                         sampler=req.sampler,
                         interpolator=interp, factor=req.interp_factor, upscaler=upscaler,
                         upscale_size=req.upscale_size, upscale_steps=req.steps.get("upscale"),
                         upscale_strength=req.upscale_strength, callback=progress.callback)
        meta = {"prompt": text, "negative_prompt": req.negative_prompt, "seed": seed, "pack": str(folder),
                "upscale_pack": req.upscale, "fps": video.fps, "frames": int(video.frames.shape[0]),
                "size": list(video.frames.shape[1:3]), "steps": req.steps or pipe.settings.steps,
                "guidance": req.guidance or pipe.settings.guidance, "sampler": req.sampler or pipe.settings.sampler,
                "interp_factor": req.interp_factor, "device": str(pipe.device), "dtype": str(pipe.dtype),
                "timings_s": {k: round(v, 3) for k, v in video.timings.items()}}
        written = write_video(path, video.frames, video.fps, format=req.fmt, metadata=meta, overwrite=req.overwrite)
        if req.verbose:
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in video.timings.items())
            f, h, w = video.frames.shape[:3]
            console.err.print(f"load {load_s:.2f}s, {parts}; {f} frames {w}x{h} at {video.fps:g} fps")
        console.result(str(written))
    if req.verbose:
        console.err.print(f"total {time.perf_counter() - t_start:.2f}s in this command")
