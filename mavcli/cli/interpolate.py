"""`mav interpolate INPUT`: more frames between a real video's frames, at any target rate, for
one video or a folder of them. Default method `flow`: DIS optical flow refined by the realinterp
pack's network (deterministic, one evaluation per new frame); `rife`: the published RIFE v4.13
network (weights.toml's rife pack), likewise at any rate; `diffusion`: the cascade pack's
masked-frame diffusion network F_i (Make-A-Video 3.3), for 2, 4 or 8 times the frames."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from mavcli.cli import console
from mavcli.cli.loading import check_precision, flow_device, open_pipeline, set_threads
from mavcli.errors import MavError, UserInputError

if TYPE_CHECKING:  # the video layer loads on demand: `mav --help` stays fast
    from mavcli.video.encoding import Encoding, SourceStream

DIFFUSION_FACTORS = (2, 4, 8)
METHODS = ("flow", "rife", "diffusion")
AUDIO_MODES = ("auto", "copy", "drop", "stretch")
_WRITABLE_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")


@dataclass(frozen=True)
class Request:
    """One run's settings, checked once for every file of a batch."""

    factor: int | None
    fps: float | None
    slowmo: int | None
    method: str
    audio: str
    encoding: object  # mavcli.video.Encoding
    steps: int | None
    seed: int
    chunk: int
    overwrite: bool
    precision: str = "auto"  # what the networks compute in (mav generate's --precision)
    input_fps: float | None = None  # the rate of a folder of frames


def _videos_in(folder: Path) -> list[Path]:
    from mavcli.video import VIDEO_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith("."))


def _label(req: Request) -> str:
    if req.slowmo is not None:
        return f"slowmo{req.slowmo}"
    if req.fps is not None:
        return f"{round(req.fps, 3):g}fps"
    return f"x{req.factor or 2}"


def _default_out(input: Path, req: Request) -> Path:
    suffix = input.suffix.lower() if input.suffix.lower() in _WRITABLE_SUFFIXES else ".mp4"
    name = input.stem if input.is_file() else input.name
    return input.with_name(f"{name}-{_label(req)}{suffix}")


def _check_request(req: Request, out_format: str) -> None:
    """What can be refused before any video is opened."""
    from mavcli.video.encoding import choose_encoder

    if req.method not in METHODS:
        raise UserInputError(f"--method must be one of {', '.join(METHODS)}; got {req.method!r}")
    if req.method != "diffusion" and req.steps is not None:
        raise UserInputError(f"--steps applies to --method diffusion only (the {req.method} method samples nothing)")
    given = [n for n, v in (("--factor", req.factor), ("--fps", req.fps), ("--slowmo", req.slowmo)) if v is not None]
    if len(given) > 1:
        raise UserInputError(f"give one of --factor, --fps or --slowmo, not {' and '.join(given)}")
    if req.factor is not None and req.factor < 2:
        raise UserInputError(f"--factor must be a whole number >= 2; got {req.factor}")
    if req.slowmo is not None and req.slowmo < 2:
        raise UserInputError(f"--slowmo must be a whole number >= 2; got {req.slowmo}")
    if req.fps is not None and not req.fps > 0:
        raise UserInputError(f"--fps must be a positive number of frames per second; got {req.fps:g}")
    if req.method == "diffusion" and (req.fps is not None or req.slowmo is not None or (req.factor or 2) not in DIFFUSION_FACTORS):
        raise UserInputError("--method diffusion makes 2, 4 or 8 times the frames (--factor 2|4|8); "
                             "use --method flow or rife for --fps, --slowmo or other factors")
    if req.audio not in AUDIO_MODES:
        raise UserInputError(f"--audio must be one of {', '.join(AUDIO_MODES)}; got {req.audio!r}")
    if req.audio == "stretch" and req.slowmo is None:
        raise UserInputError("--audio stretch applies to --slowmo (the other modes keep the duration, so the audio is copied)")
    if req.audio == "copy" and req.slowmo is not None:
        raise UserInputError(f"--slowmo {req.slowmo} makes the video {req.slowmo} times as long, so copied audio "
                             f"would run out of sync; use --audio stretch (slowed, pitch kept) or --audio drop")
    if req.chunk < 3:
        raise UserInputError("--chunk must be >= 3")
    if out_format != "png":
        choose_encoder(out_format, req.encoding)  # codec / container / quality mismatches, up front
    elif req.encoding != type(req.encoding)() and not getattr(req.encoding, "lossless", False):
        raise UserInputError("a folder of PNG frames is lossless; it takes no --codec, --crf or --pix-fmt")


def _out_format(out: Path) -> str:
    from mavcli.video.write import _resolve_format

    return _resolve_format(out, None)


def _carried(source: SourceStream, enc: Encoding, fmt: str, size: tuple[int, int]) -> tuple[Encoding, list[str]]:
    """`enc` with what the output keeps of the input's video stream: colour tags and pixel
    aspect ratio; and notes on what it cannot keep."""
    from mavcli.video.encoding import Colour

    notes = []
    if fmt != "png" and enc.colour == Colour():
        enc = replace(enc, colour=source.colour)
    deep = re.search(r"p(9|10|12|14|16)(le|be)?$", source.pix_fmt or "")  # yuv420p10le, not nv12
    if deep and fmt != "png":
        notes.append(f"the input has {deep.group(1)} bits per channel ({source.pix_fmt}): frames pass through "
                     "mavcli at 8, so the output keeps the format but not the extra precision")
    if re.match(r"(yuva|gbrap|rgba|bgra|argb|abgr|ya\d)", source.pix_fmt or ""):
        notes.append(f"the input has an alpha channel ({source.pix_fmt}): frames pass through mavcli as RGB, "
                     "so the output is opaque")
    if source.field_order is not None:  # fields of two times woven into each frame comb where things move
        notes.append(f"the input is interlaced ({source.field_order}): its frames were interpolated as stored; "
                     "where they show combing, deinterlace first (ffmpeg -i in.mp4 -vf bwdif out.mp4)")
    if source.sar is not None:
        if fmt in ("gif", "png"):
            notes.append(f"the input's pixels are not square (SAR {source.sar[0]}:{source.sar[1]}); {fmt} output keeps "
                         f"its {size[0]}x{size[1]} pixels, which show stretched (mp4, mov, mkv and webm keep the SAR)")
        else:
            enc = replace(enc, sar=source.sar)
    return enc, notes


def _check_free(out: Path, overwrite: bool) -> None:
    """Refuse an output, or the metadata sidecar written beside it, that exists already."""
    from mavcli.video import sidecar_path

    for target in (out, sidecar_path(out)):
        if target.exists() and not overwrite:
            raise UserInputError(f"{target} already exists; pass --overwrite to replace it or choose another --out")


#: the least an output can take per frame, as a share of the frame stored as PNG. Measured on
#: x2 outputs of cup and bigbuckbunny: ffv1 0.57, H.264 at CRF 12 0.036-0.048, gif 0.33-0.72;
#: these bounds lie well below, so that only what cannot fit however well it compresses is refused
_LEAST_SHARE = {"png": 1.0, "lossless": 0.3, "gif": 0.05, "lossy": 0.01}


def _check_space(out: Path, fmt: str, enc, frame, frames: int) -> None:
    """Refuse, before any frame is made, an output whose least size (the first frame's PNG size
    times the frames, times `_LEAST_SHARE`) exceeds the free space of its disk."""
    import io

    import imageio.v3 as iio

    from mavcli.runtime import disk_free, size_text

    if frame is None:
        return
    buf = io.BytesIO()
    iio.imwrite(buf, frame, extension=".png")
    kind = fmt if fmt in ("png", "gif") else "lossless" if enc.lossless or enc.codec == "ffv1" else "lossy"
    need = int(len(buf.getvalue()) * frames * _LEAST_SHARE[kind])
    parent = out.parent if str(out.parent) else Path(".")
    free = disk_free(parent)
    if need > free:
        raise UserInputError(
            f"{out.name} needs at least about {size_text(need)} ({frames} frames{' of PNG' if kind == 'png' else ''}"
            f"{', lossless' if kind == 'lossless' else ''}) and the disk holding {parent.resolve()} has "
            f"{size_text(free)} free; free space, choose another --out, or a lossy format (mp4, mkv)")


def _cut_short(input: Path, info, video_end: float) -> str | None:
    """A note when the container says the file lasts well past its last frame and its audio:
    a download cut off, or damaged data that ffmpeg skipped. The output covers what decodes."""
    from mavcli.video.read import packet_times

    if not input.is_file() or info.duration <= 0:
        return None
    end = video_end
    if info.has_audio and info.duration - end > 0.5:
        audio = packet_times(input, "a:0")
        end = max(end, audio[1] if audio else info.duration)
    if info.duration - end <= max(0.5, 0.05 * info.duration):
        return None
    return (f"{input.name} says it lasts {info.duration:.2f}s, but its frames end at {video_end:.2f}s: the file "
            "looks cut short or damaged; the output covers what could be decoded")


def interpolate_one(input: Path, out: Path, req: Request, pack: str | None, device: str,
                    progress: Progress, task: TaskID, cache: dict) -> str:
    """Write `out` from `input`; returns the summary line. `cache` keeps the loaded model
    across the files of a batch."""
    from mavcli.interpolator import MIN_SIDE, FlowInterpolator, RifeInterpolator
    from mavcli.pipeline import MakeAVideoPipeline, resolve_device
    from mavcli.retime import plan_pairs, retiming
    from mavcli.video import DEFAULT_FPS, VideoWriter, detect_scene_cuts, frame_times, iter_video_frames, probe_video
    from mavcli.video.read import folder_fps
    from mavcli.video.common import _ffmpeg_header
    from mavcli.video.encoding import SourceStream, parse_stream

    _check_free(out, req.overwrite)  # before the video is decoded for its scene cuts
    info = probe_video(input)  # clear errors for missing / unreadable / non-video input
    if min(info.width, info.height) < MIN_SIDE:
        raise UserInputError(f"{input} is {info.width}x{info.height}; interpolation needs at least "
                             f"{MIN_SIDE}x{MIN_SIDE} pixels (scale it up first, e.g. ffmpeg -vf scale=-2:{MIN_SIDE * 4})")
    if req.method == "flow" and flow_device(device) == "cpu":  # before the video is decoded
        FlowInterpolator.check_memory(info.width, info.height)
    elif req.method == "rife" and flow_device(device) == "cpu":
        RifeInterpolator.check_memory(info.width, info.height)
    elif req.method == "diffusion" and resolve_device(device).type == "cpu":
        MakeAVideoPipeline.check_interpolate_memory(info.width, info.height, info.num_frames, req.factor or 2, req.chunk)
    t0 = time.perf_counter()
    count = 0
    first = None

    def counted():
        nonlocal count, first
        for f in iter_video_frames(input):
            count += 1
            first = f if first is None else first
            yield f

    cuts = detect_scene_cuts(counted())
    if count < 2:
        raise UserInputError(f"{input} has {count} frame; interpolation needs at least 2")
    ft = frame_times(input, count, folder_rate=req.input_fps, info=info)
    fmt = _out_format(out)
    in_fps = ft.fps
    if req.method != "diffusion":
        plain = req.fps is None and req.slowmo is None
        r = retiming(in_fps, ft.duration, factor=(req.factor or 2) if plain else None, fps=req.fps, slowmo=req.slowmo)
        out_fps, n_out = r.fps, len(r.out_times)
    else:
        out_fps, n_out = in_fps * (req.factor or 2), (count - 1) * (req.factor or 2) + 1
    notes = []
    if input.is_dir() and req.input_fps is None and folder_fps(input) is None:
        notes.append(f"the frames in {input.name} state no frame rate: taken as {DEFAULT_FPS:g} fps "
                     "(--input-fps sets it)")
    if cuts:
        notes.append(f"scene cuts at frames {', '.join(map(str, cuts))}: never blended across")
    if ft.variable:
        notes.append(f"variable frame rate ({count} frames over {ft.duration:.2f}s): frames placed by their timestamps")
    short = _cut_short(input, info, ft.duration)
    if short:
        notes.append(short)
    audio_from, tempo = None, None
    if info.has_audio:
        if req.audio == "drop":
            pass
        elif fmt in ("gif", "png"):
            notes.append(f"{fmt} output cannot hold audio: left out")
        elif req.slowmo is not None:
            if req.audio == "stretch":
                audio_from, tempo = input, 1.0 / req.slowmo
            else:
                notes.append(f"audio left out: slow motion makes the video {req.slowmo}x as long "
                             "(--audio stretch slows the audio to match)")
        else:
            audio_from = input
    source = parse_stream(_ffmpeg_header(input)) if input.is_file() else SourceStream()
    enc, carried_notes = _carried(source, req.encoding, fmt, (info.width, info.height))
    notes += carried_notes
    _check_space(out, fmt, enc, first, n_out)

    if req.method != "diffusion":
        if req.method not in cache:
            cache.update(_open_early(req, pack, device, input))
        interp = cache[req.method]
        used, precision = interp.path, interp.precision
        plan = plan_pairs(ft.times, r.out_times, cuts)

        def stream(cb):
            return interp.retime_stream(iter_video_frames(input), plan, in_times=ft.times if ft.variable else None,
                                        cuts=cuts, callback=cb)
    else:
        if "pipe" not in cache:
            cache.update(_open_early(req, pack, device, input))
        pipe = cache["pipe"]
        used, precision = pipe.pack.path, pipe.precision
        opts = {"steps": req.steps} if req.steps else {}

        def stream(cb):
            return pipe.interpolate_stream(iter_video_frames(input), req.factor or 2, fps=in_fps, cuts=cuts,
                                           seed=req.seed, chunk=req.chunk, callback=cb, **opts)

    progress.update(task, total=n_out, completed=0, visible=True)
    written = 0
    meta = {"source": str(input), "mode": _label(req), "fps": out_fps, "scene_cuts": cuts, "method": req.method,
            "pack": str(used), "precision": precision, "variable_frame_rate": ft.variable}
    with VideoWriter(out, out_fps, audio_from=audio_from, audio_tempo=tempo, encoding=None if fmt == "png" else enc,
                     source_pix_fmt=source.pix_fmt, overwrite=req.overwrite, metadata=meta) as writer:
        def sampling(stage: str, done: int, total: int) -> None:  # --method diffusion: F_i's steps per run
            if stage != "frames":
                progress.update(task, speed=f"F_i step {done}/{total}")

        for frame in stream(sampling):
            writer.append(frame[None])
            written += 1
            rate = written / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, completed=written, speed=f"{rate:.1f} frames/s")
    notes += writer.notes
    for n in notes:
        console.info(n)
    audio_note = (" (audio stretched)" if tempo else " (audio copied)") if audio_from is not None else ""
    return (f"{count} -> {written} frames, {round(in_fps, 3):g} -> {round(out_fps, 3):g} fps, {time.perf_counter() - t0:.1f}s" + audio_note)


def register(app: typer.Typer) -> None:
    @app.command()
    def interpolate(
        input: Path = typer.Argument(..., help="A video file (mp4, mov, mkv, webm, gif, ...), a folder of frames, or a folder of videos (each one interpolated)."),
        factor: Optional[int] = typer.Option(None, "--factor", "-x", help="N times the frames at N times the fps (any whole N >= 2; default 2)."),
        target_fps: Optional[str] = typer.Option(None, "--fps", help="Exactly this frame rate (e.g. 60 from 23.976 or 25; 59.94 means 60000/1001); input frames kept at their times."),
        slowmo: Optional[int] = typer.Option(None, "--slowmo", help="N times the frames at the input's fps: N times slower."),
        input_fps: Optional[str] = typer.Option(None, "--input-fps", help="The frame rate of a folder of frames (default: the rate mavcli recorded with them, else 24)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file, or folder for a folder of videos (default: beside the input, named -x2, -60fps, -slowmo4)."),
        codec: Optional[str] = typer.Option(None, "--codec", help="libx264 (default), libx265, libvpx-vp9, ffv1 (mkv), prores_ks (mov, mkv)."),
        crf: Optional[int] = typer.Option(None, "--crf", help="Constant quality: lower is better (default 12 for libx264, 16 libx265, 20 libvpx-vp9)."),
        lossless: bool = typer.Option(False, "--lossless", help="Store the frames exactly (RGB; large files)."),
        pix_fmt: Optional[str] = typer.Option(None, "--pix-fmt", help="Stored pixel format (default: the input's where the codec can hold it, else yuv420p)."),
        audio: str = typer.Option("auto", "--audio", help="auto (copy; dropped for --slowmo), copy, drop, or stretch (--slowmo: slowed to match, pitch kept)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (a folder run otherwise skips finished files)."),
        method: str = typer.Option("flow", help="flow (DIS flow + mavcli's network; fast, deterministic), rife (RIFE v4.13, fetched once: 21 MB) or diffusion (F_i, sampled)."),
        pack: Optional[str] = typer.Option(None, help="Pack to use (default: realinterp for flow, rife for rife, the default pack for diffusion)."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", dir_okay=False, help="Read this weights.toml instead of mavcli's own (for --pack names)."),
        steps: Optional[int] = typer.Option(None, help="diffusion: sampler steps of F_i (default: the pack's)."),
        seed: int = typer.Option(0, help="diffusion: random seed of the sampler."),
        chunk: int = typer.Option(9, help="diffusion: input frames held in memory at a time."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        precision: str = typer.Option("auto", "--precision", help="auto, float32 or bfloat16: what the network computes in (auto: bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32)."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: the cores this process may use, less those other processes keep busy)."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Write a video with more frames: any target fps, audio kept in sync.

        Same size, scene cuts never blended across; a folder of videos is processed file by file."""
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.video import Encoding, IMAGE_SUFFIXES

            if codec is not None and lossless and codec not in ("libx264", "libx265", "libvpx-vp9", "ffv1"):
                raise UserInputError(f"--codec {codec} cannot be lossless; use ffv1 (mkv) or libx264")
            from mavcli.retime import parse_rate

            req = Request(factor, None if target_fps is None else parse_rate(target_fps), slowmo, method, audio,
                          Encoding(codec=codec, crf=crf, lossless=lossless, pix_fmt=pix_fmt),
                          steps, seed, chunk, overwrite, precision,
                          None if input_fps is None else parse_rate(input_fps, "--input-fps"))
            input = input.expanduser()
            batch = input.is_dir() and bool(_videos_in(input))
            if req.input_fps is not None and (batch or not input.is_dir()):
                raise UserInputError("--input-fps sets the rate of a folder of frames; a video file's frame times "
                                     "come from its container (to change them: ffmpeg -itsscale or -r before -i)")
            if input.is_dir() and not batch and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in input.iterdir()):
                raise UserInputError(f"{input} holds no videos and no frames; pass a video file, a folder of "
                                     f"videos, or a folder of PNG/JPEG frames")
            check_precision(precision)
            set_threads(threads)
            if batch:
                code = _run_batch(input, out, req, pack, device, quiet, manifest)
                raise typer.Exit(code)
            out = out.expanduser() if out is not None else _default_out(input, req)
            _check_request(req, _out_format(out))
            parent = out.parent if str(out.parent) else Path(".")
            if not parent.is_dir():
                raise UserInputError(f"the output folder {parent} does not exist; create it or choose another --out")
            cache = _open_early(req, pack, device, input, manifest)
            progress = _progress(quiet)
            with progress:
                task = progress.add_task("interpolate", total=None, name="interpolate", speed="", visible=False)
                summary = interpolate_one(input, out, req, pack, device, progress, task, cache)
            console.info(summary)
            console.result(str(out))


def _open_early(req: Request, pack: str | None, device: str, input: Path, manifest: Path | None = None) -> dict:
    """The run's interpolator, opened before its progress bars start: `rife` may first download
    its pack (once the input is known to be readable), with a progress display of its own."""
    from mavcli.cli.loading import open_flow_interpolator, open_rife_interpolator
    from mavcli.video import probe_video

    if req.method == "rife" and not input.is_dir():
        probe_video(input)  # a clear error for a missing or unreadable file before its pack downloads
    if req.method == "diffusion":
        return {"pipe": open_pipeline(pack, device, manifest, precision=req.precision)}
    opener = open_flow_interpolator if req.method == "flow" else open_rife_interpolator
    return {req.method: opener(pack, device, req.precision, manifest)}


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                    TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=console.err, disable=quiet)


def _run_batch(folder: Path, out: Path | None, req: Request, pack: str | None, device: str, quiet: bool,
               manifest: Path | None = None) -> int:
    """Every video in `folder` into the folder `out`: a failed file is reported and the rest go
    on (exit 1 at the end), a finished output is skipped (so a stopped batch resumes)."""
    videos = _videos_in(folder)
    out = (out.expanduser() if out is not None else folder.with_name(f"{folder.name}-{_label(req)}"))
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; for a folder of videos, --out names a folder")
    if out.resolve() == folder.resolve():
        raise UserInputError("--out must be another folder than the input's (the outputs would be read as inputs)")
    targets = []
    for v in videos:
        target = out / (v.stem + (v.suffix.lower() if v.suffix.lower() in _WRITABLE_SUFFIXES else ".mp4"))
        targets.append((v, target))
        _check_request(req, _out_format(target))
    out.mkdir(parents=True, exist_ok=True)
    failed, skipped, done = [], [], []
    cache = _open_early(req, pack, device, folder, manifest)
    progress = _progress(quiet)
    with progress:
        overall = progress.add_task("files", total=len(targets), name="all files", speed="")
        task = progress.add_task("file", total=None, name="", speed="", visible=False)
        for v, target in targets:
            progress.update(task, name=v.name)
            if target.exists() and not req.overwrite:
                skipped.append(v.name)
            else:
                try:
                    summary = interpolate_one(v, target, req, pack, device, progress, task, cache)
                    done.append(v.name)
                    console.info(f"{v.name}: {summary}")
                    console.result(str(target))
                except MavError as e:  # one broken file does not stop the batch
                    failed.append(v.name)
                    console.error(f"{v.name}: {e}")
            progress.advance(overall)
    if skipped:
        console.info(f"skipped {len(skipped)} already finished: {', '.join(skipped)} (--overwrite redoes them)")
    console.info(f"{len(done)} written, {len(skipped)} skipped, {len(failed)} failed, into {out}")
    if failed:
        console.error(f"failed: {', '.join(failed)}")
        return 1
    return 0
