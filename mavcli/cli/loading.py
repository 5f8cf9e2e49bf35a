"""Open a pack for a command: a folder, a bundled pack, or one fetched from the Hub on first
use (with download progress), then the pipeline on the chosen device."""

from __future__ import annotations

from pathlib import Path


def check_matcher_options(candidates: int | None, matcher_guidance: float | None,
                          select_at: list[float] | None = None) -> tuple[float, ...] | None:
    """Clear errors for --candidates / --matcher-guidance / --select-at before any pack is
    loaded; returns the selection times --select-at asks for (None: the pack's; `--select-at 0`:
    none, rank the finished clips)."""
    from mavcli.errors import UserInputError

    if candidates is not None and candidates < 1:
        raise UserInputError("--candidates must be >= 1 (1: no ranking)")
    if matcher_guidance is not None and matcher_guidance < 0:
        raise UserInputError("--matcher-guidance must be >= 0 (0: off)")
    if not select_at:
        return None
    if list(select_at) == [0.0]:
        return ()
    from mavcli.weights.pack import select_times_ok

    if not select_times_ok(select_at):
        raise UserInputError(f"--select-at takes decreasing diffusion times in (0, 1), e.g. --select-at 0.85 "
                             f"--select-at 0.5, or 0 alone to rank the finished clips; got {' '.join(map(str, select_at))}")
    return tuple(select_at)


def check_precision(precision: str) -> None:
    """`--precision`, checked before any work (a folder run would otherwise fail per file)."""
    from mavcli.errors import UserInputError
    from mavcli.runtime import PRECISIONS

    if precision not in PRECISIONS:
        raise UserInputError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")


def set_threads(threads: int | None) -> str:
    """Give torch's (and OpenCV's) CPU pools `threads` threads, or as many as this process can
    really use now (mavcli.runtime.choose_threads); returns the choice in words."""
    import cv2
    import torch

    from mavcli.runtime import choose_threads

    choice = choose_threads(threads)
    torch.set_num_threads(choice.threads)
    cv2.setNumThreads(choice.threads)
    return choice.describe()


#: what each kind of manifest pack is for, in the messages that refuse it elsewhere
_KIND_USE = {"rife": "a RIFE frame interpolator: use it with mav interpolate --method rife",
             "diffusers": "an open latent video model: use it with mav generate --pack NAME"}


def check_pack_kind(pack: str | None, kinds: tuple[str, ...], command: str, manifest: Path | None = None) -> None:
    """Refuse (UserInputError), before anything is downloaded, a manifest pack whose kind
    `command` cannot use; a folder or an unknown name is left to the loader."""
    from mavcli.errors import UserInputError
    from mavcli.weights.manifest import load_manifest

    if pack is None or Path(pack).expanduser().is_dir():
        return
    entry = load_manifest(manifest).get(pack)
    if entry is not None and entry.kind not in kinds:
        use = _KIND_USE.get(entry.kind, "a mavcli pack: use it with mav generate or mav interpolate --method flow|diffusion")
        raise UserInputError(f"{command} cannot use pack {pack!r}; it is {use}")


def open_pipeline(pack: str | None, device: str, manifest: Path | None = None, precision: str = "auto"):
    from mavcli.pipeline import MakeAVideoPipeline

    check_pack_kind(pack, ("mavcli",), "the cascade (mav generate, --method diffusion)", manifest)
    return MakeAVideoPipeline.from_pretrained(_pack_path(pack, manifest), device=device, precision=precision)


FLOW_PACK = "realinterp"  # weights.toml name of the real-footage interpolator's pack


def _pack_path(pack: str | None, manifest: Path | None = None) -> Path:
    from mavcli.cli.download import RichDownloadProgress
    from mavcli.weights.manifest import load_manifest
    from mavcli.weights.resolve import resolve_pack

    if pack is not None and Path(pack).is_dir():
        return Path(pack)
    with RichDownloadProgress() as progress:
        return resolve_pack(pack, manifest=load_manifest(manifest), allow_download=True, progress=progress)


def open_flow_interpolator(pack: str | None = None, device: str = "auto", precision: str = "auto",
                          manifest: Path | None = None):
    """The real-footage interpolator (`mav interpolate`'s default method) from `pack` (default:
    the realinterp pack), on `device` (auto: CUDA when there is one; DIS flow always runs on
    the CPU), its network computing in `precision`. Returns a callable (frame0, frame1, times)
    -> frames."""
    from mavcli.interpolator import FlowInterpolator

    check_pack_kind(pack, ("mavcli",), "--method flow", manifest)
    return FlowInterpolator.from_pretrained(_pack_path(pack or FLOW_PACK, manifest), device=flow_device(device),
                                            precision=precision)


RIFE_PACK = "rife"  # weights.toml name of the published RIFE network (mav interpolate --method rife)


def open_rife_interpolator(pack: str | None = None, device: str = "auto", precision: str = "auto",
                          manifest: Path | None = None):
    """`mav interpolate --method rife`: the RIFE network of `pack` (default: the rife pack,
    fetched from the Hub the first time) on `device` (auto: CUDA when there is one)."""
    from mavcli.interpolator import RifeInterpolator

    check_pack_kind(pack, ("rife",), "--method rife", manifest)
    return RifeInterpolator.from_pretrained(_pack_path(pack or RIFE_PACK, manifest), device=flow_device(device),
                                            precision=precision)


def flow_device(device: str = "auto") -> str:
    """Where the flow interpolator's network runs: auto means CUDA when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
