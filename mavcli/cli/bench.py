"""`mav bench layers`: time mavcli's pseudo-3D layers against make-a-video-pytorch 0.4.0;
`mav bench cascade`: seconds per stage of one generation; `mav bench interpolate`: ms per new
frame of the real-footage interpolator beside DIS flow.

The table goes to stdout; progress and notes to stderr. The numbers are medians of interleaved
rounds in one process, so a slow spell on a shared machine hits both sides alike.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from mavcli.cli import console
from mavcli.errors import UserInputError

bench_app = typer.Typer(
    help="Time mavcli's layers on this machine.",
    no_args_is_help=True,
)


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


def _parse_shape(text: str) -> tuple[int, int, int, int, int]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise UserInputError(f"--shape takes five positive integers B,C,F,H,W (a video); got {text!r}")
    return shape  # type: ignore[return-value]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@bench_app.command("layers")
def layers(
    device: Annotated[Device, typer.Option("--device", help="Where to run.")] = Device.cpu,
    dtype: Annotated[
        Optional[DType],
        typer.Option("--dtype", help="Precision (default: float32 on cpu, bfloat16 autocast on cuda)."),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing rounds per row.")] = 15,
    shape: Annotated[
        str, typer.Option("--shape", help="Video B,C,F,H,W (the seed README's by default).", metavar="B,C,F,H,W")
    ] = "1,256,8,16,16",
    threads: Annotated[
        Optional[int],
        typer.Option("--threads", min=1, help="CPU threads for torch (default: torch's own choice)."),
    ] = None,
) -> None:
    """Time Pseudo3DConv and SpatioTemporalAttention against make-a-video-pytorch 0.4.0:
    forward (inference mode) and forward+backward, median ms, speed-up, GFLOP/s."""
    import torch

    from mavcli.bench.layers import ANCHOR_INSTALL, run_layer_bench
    from mavcli.bench.timing import torch_build

    with console.user_errors():
        size = _parse_shape(shape)
        if device is Device.cuda and not torch.cuda.is_available():
            raise UserInputError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
        if dtype is None:
            dtype = DType.bfloat16 if device is Device.cuda else DType.float32
        torch_dtype = getattr(torch, dtype.value)
        dim_head = min(64, size[1])
        if threads is not None:
            torch.set_num_threads(threads)
        with console.err.status("timing...", spinner="dots") as status:
            result = run_layer_bench(
                shape=size, dim_head=dim_head, heads=8, device=device.value, dtype=torch_dtype, rounds=rounds,
                progress=lambda what: status.update(f"timing {what}"),
        )
        if result.anchor_error is not None:
            console.warn(
                f"the anchor, make-a-video-pytorch, is not installed ({result.anchor_error}); "
                f"only mavcli's times are shown. Install it with: {ANCHOR_INSTALL}"
            )

        threads = f", {result.threads} threads" if device is Device.cpu else ""
        table = Table(
            title=f"layers at {tuple(size)} on {device.value}{threads}, {dtype.value}, "
            f"median of {rounds} interleaved rounds",
            title_justify="left",
            caption="speed-up = anchor ms / mavcli ms; matmuls alone = only the block's matrix products, back to "
            "back with torch's GEMMs at the block's shapes (attention_matmuls): the block's floor on this machine",
            caption_justify="left",
            box=box.SIMPLE_HEAD,  # fits 80 columns (a pipe) without truncating names
            pad_edge=False,
        )
        table.add_column("layer", no_wrap=True)
        table.add_column("mode", no_wrap=True)
        table.add_column("mavcli\nms", justify="right", min_width=7)
        table.add_column("anchor\nms", justify="right", min_width=7)
        table.add_column("speed-up", justify="right", min_width=8)
        table.add_column("mavcli\nGFLOP/s", justify="right", min_width=7)
        table.add_column("matmuls\nalone ms", justify="right", min_width=8)
        for row in result.rows:
            table.add_row(
                row.layer,
                row.mode,
                _ms(row.mavcli_ms),
                _ms(row.anchor_ms),
                "n/a" if row.speedup is None else f"{row.speedup:.2f}x",
                f"{row.gflops:.0f}",
                "" if row.matmul_ms is None else _ms(row.matmul_ms),
            )
        console.out.print(table)
        console.result(
            f"matmul rate: {result.matmul_gflops:.0f} GFLOP/s (1024x1024 @ 1024x1024, {dtype.value}). "
            "GFLOP/s counts each layer's nominal FLOPs (direct convolution, attention as matmuls)."
        )
        if result.anchor_error is not None:
            console.result(f"anchor not installed: {ANCHOR_INSTALL}")
        console.result(torch_build())


@bench_app.command("cascade")
def cascade(
    pack: Optional[str] = typer.Option(None, help="Pack to time (default: the bundled pack)."),
    prompt: str = typer.Option("a red circle moving left on a black background", help="The prompt to generate."),
    device: str = typer.Option("cpu", help="cpu, cuda or mps."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps for every stage (default: the pack's)."),
    repeats: int = typer.Option(1, help="Runs after the warm-up; the fastest is reported."),
    precision: str = typer.Option("auto", help="auto, float32 or bfloat16 (as for mav generate)."),
) -> None:
    """Seconds per stage and peak memory of one generation (issue 4)."""
    from rich.table import Table

    with console.user_errors():
        from mavcli.bench.cascade import run_cascade_bench
        from mavcli.bench.timing import torch_build
        from mavcli.weights.resolve import resolve_pack

        path = pack if pack and Path(pack).is_dir() else str(resolve_pack(pack))
        r = run_cascade_bench(path, prompt=prompt, device=device, steps=steps, repeats=max(1, repeats),
                              precision=precision)
        table = Table(title=f"mav bench cascade: {r.frames} frames {r.size[1]}x{r.size[0]} on {r.device}, {r.precision}")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for stage, sec in r.stages.items():
            table.add_row(stage, f"{sec:.2f}")
        table.add_row("total (in process)", f"{r.total_s:.2f}")
        table.add_row("pack load", f"{r.load_s:.2f}")
        if r.peak_mib is not None:
            table.add_row("peak memory (MiB)", f"{r.peak_mib:.0f}")
            table.add_row("memory before the run (MiB)", f"{r.baseline_mib:.0f}")
        console.out.print(table)
        console.result(torch_build())


@bench_app.command("latent")
def latent(
    pack: str = typer.Option("modelscope", help="Which published configuration: modelscope, zeroscope or zeroscope-xl."),
    frames: int = typer.Option(16, min=1, help="Frames of the video."),
    height: int = typer.Option(256, min=64, help="Height in pixels (a multiple of 64)."),
    width: int = typer.Option(256, min=64, help="Width in pixels (a multiple of 64)."),
    steps: int = typer.Option(50, min=1, help="Sampler steps of the video the estimate is for."),
    rounds: int = typer.Option(1, min=1, help="Timed U-Net steps (the median is reported)."),
    dtype: DType = typer.Option(DType.float32, help="Precision of weights and compute."),
) -> None:
    """Seconds per guided U-Net step of a full-size open latent video model (its published
    config, random weights) and the expected time of a default video on this machine."""
    import torch

    with console.user_errors():
        from mavcli.bench.latent import run_latent_bench
        from mavcli.bench.timing import torch_build

        if height % 64 or width % 64:
            raise UserInputError("--height and --width must be multiples of 64 (VAE x8, U-Net x8)")
        try:
            r = run_latent_bench(pack, frames=frames, height=height, width=width, steps=steps, rounds=rounds,
                                 dtype=getattr(torch, dtype.value))
        except FileNotFoundError as err:
            raise UserInputError(str(err)) from None
        table = Table(title=f"mav bench latent: {pack}, {r.params / 1e9:.2f} B U-Net parameters, "
                            f"{frames} frames {width}x{height}, {r.dtype}", box=box.SIMPLE)
        table.add_column("what")
        table.add_column("seconds", justify="right")
        table.add_row("one guided U-Net step (batch 2)", f"{r.step_s:.2f}")
        table.add_row("peak memory after it (GiB, not seconds)", f"{r.peak_gib:.1f}")
        if r.decode_s is not None:
            table.add_row("VAE decode, one frame", f"{r.decode_s:.2f}")
        table.add_row(f"expected: {steps} steps + {frames} decodes", f"{r.expected_s:.0f}")
        console.out.print(table)
        console.result(torch_build())


def register(app: typer.Typer) -> None:
    """Add `mav bench ...` to the app."""
    app.add_typer(bench_app, name="bench")


@bench_app.command("interpolate")
def interpolate(
    pack: Annotated[Optional[str], typer.Option("--pack", help="Pack of the flow interpolator (default: realinterp).")] = None,
    size: Annotated[str, typer.Option("--size", help="Frame size WxH.", metavar="WxH")] = "455x256",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing rounds.")] = 10,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch and OpenCV (default: their own choice).")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto, float32 or bfloat16 (as for mav interpolate).")] = "auto",
    file_rounds: Annotated[int, typer.Option("--file-rounds", min=0, help="Rounds of the file-to-file timing beside ffmpeg's minterpolate (0: skip it).")] = 3,
    rife: Annotated[Optional[str], typer.Option("--rife", help="Also time --method rife file to file, with this pack or folder (e.g. rife).")] = None,
) -> None:
    """Milliseconds per new frame of `mav interpolate`'s flow method at x2 and x4, beside DIS
    warp + blend timed alongside, with the time split into flow and network; then file to file,
    as users run it, beside ffmpeg's minterpolate."""
    import torch

    from mavcli.bench.interp import run_interp_bench
    from mavcli.cli.loading import open_flow_interpolator

    with console.user_errors():
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise UserInputError(f"--size takes WIDTHxHEIGHT, e.g. 455x256; got {size!r}") from None
        if min(width, height) < 16:
            raise UserInputError(f"--size {size}: frames must be at least 16x16")
        if threads:
            import cv2

            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        interp = open_flow_interpolator(pack, "cpu", precision)
        rife_interp = None
        if rife is not None:
            from mavcli.cli.loading import open_rife_interpolator

            rife_interp = open_rife_interpolator(rife, "cpu", precision)
        console.info(f"timing at {width}x{height}, {rounds} interleaved rounds, {torch.get_num_threads()} torch threads, "
                     f"network in {interp.precision}")
        rows = run_interp_bench(interp, width=width, height=height, rounds=rounds)
        table = Table(title=f"mav bench interpolate: ms per new frame at {width}x{height} (CPU)", box=box.SIMPLE)
        for col in ("factor", "mavcli", "DIS + blend", "mavcli / DIS", "2 DIS flows", "network"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(f"x{r.factor}", f"{r.mavcli_ms:.1f}", f"{r.dis_ms:.1f}", f"{r.ratio:.2f}x",
                          f"{r.flow_ms:.1f}", f"{r.network_ms:.1f}")
        console.out.print(table)
        if file_rounds:
            console.info(f"file to file: {FILE_FRAMES} frames, {file_rounds} interleaved rounds")
            table = Table(title=f"file to file, H.264 in and out (mav interpolate's default CRF 12): ms per new frame "
                                f"at {width}x{height}", box=box.SIMPLE)
            for col in ("factor", "mav interpolate", "ffmpeg minterpolate", "mavcli / minterpolate",
                        *(("--method rife", "rife / flow") if rife_interp else ())):
                table.add_column(col, justify="right")
            for factor, ours, theirs, by_rife in file_to_file(interp, width, height, file_rounds, precision, rife_interp):
                table.add_row(f"x{factor}", f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}x",
                              *((f"{by_rife:.1f}", f"{by_rife / ours:.2f}x") if rife_interp else ()))
            console.out.print(table)


#: input frames of the file-to-file timing (41: 40 pairs)
FILE_FRAMES = 41


def file_to_file(interp, width: int, height: int, rounds: int, precision: str = "auto",
                 rife=None) -> list[tuple[int, float, float, float | None]]:
    """(factor, mav interpolate ms, ffmpeg minterpolate ms, --method rife ms or None) per new
    frame at x2 and x4, from an
    H.264 file of `FILE_FRAMES` frames to an H.264 file with the same encoder settings: what a user
    waits for, decoding, the scene-cut pass, flows, network and encoding included (the network
    already loaded), against ffmpeg's own motion interpolation, interleaved round by round."""
    import subprocess
    import tempfile
    from dataclasses import replace
    from fractions import Fraction

    from rich.progress import Progress

    from mavcli.bench.interp import bench_clip
    from mavcli.bench.timing import interleaved_medians
    from mavcli.cli.interpolate import Request, interpolate_one
    from mavcli.eval.interp_eval import minterpolate_filter
    from mavcli.video import Encoding, write_video
    from mavcli.video.common import _ffmpeg_exe
    from mavcli.video.encoding import choose_encoder

    fps = 24
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_video(Path(tmp) / "in.mp4", bench_clip(width, height, FILE_FRAMES), fps, format="mp4")
        progress = Progress(disable=True)
        task = progress.add_task("", total=None, name="", speed="")
        for factor in (2, 4):
            req = Request(factor, None, None, "flow", "auto", Encoding(), None, 0, 9, True, precision)
            ffmpeg = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
                      "-vf", minterpolate_filter(Fraction(fps * factor)), *choose_encoder("mp4", Encoding()).args,
                      str(Path(tmp) / "minterpolate.mp4")]
            runs = {
                "mavcli": lambda: interpolate_one(src, Path(tmp) / "mavcli.mp4", req, None, "cpu", progress, task,
                                                  {"flow": interp}),
                "ffmpeg": lambda: subprocess.run(ffmpeg, check=True, capture_output=True),
            }
            if rife is not None:
                rreq = replace(req, method="rife")
                runs["rife"] = lambda: interpolate_one(src, Path(tmp) / "rife.mp4", rreq, None, "cpu", progress, task,
                                                       {"rife": rife})
            med = interleaved_medians(runs, rounds=rounds, warmup=1)
            new = (FILE_FRAMES - 1) * (factor - 1)
            rows.append((factor, 1000 * med["mavcli"] / new, 1000 * med["ffmpeg"] / new,
                         1000 * med["rife"] / new if rife is not None else None))
    return rows
