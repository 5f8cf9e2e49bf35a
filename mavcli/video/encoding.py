"""How a video is encoded: codec, quality, pixel format and colour tags, checked against the
container before any frame is written.

Defaults favour quality that survives measurement: H.264 at CRF 12 in mp4/mov/mkv (at CRF 18,
the previous default, a 176x144 clip lost 1.4 dB PSNR to compression, more than an
interpolator's lead over optical flow; docs/evaluation.md has the table), VP9 at CRF 20 in
webm. ``lossless`` stores RGB exactly (the frames read back equal the frames written).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass, field

from mavcli.errors import UserInputError
from mavcli.video.common import _ffmpeg_exe, stream_rotation, video_stream

#: the codecs each container may hold (ffmpeg encoder names), the first one its default
CONTAINER_CODECS: dict[str, tuple[str, ...]] = {
    "mp4": ("libx264", "libx265", "libvpx-vp9"),
    "mov": ("libx264", "libx265", "prores_ks"),
    "mkv": ("libx264", "libx265", "libvpx-vp9", "ffv1", "prores_ks"),
    "webm": ("libvpx-vp9",),
    "gif": ("gif",),
}
_DEFAULT_CRF = {"libx264": 12, "libx265": 16, "libvpx-vp9": 20}
_CRF_RANGE = {"libx264": 51, "libx265": 51, "libvpx-vp9": 63}
_DEFAULT_PIX = {"libx264": "yuv420p", "libx265": "yuv420p", "libvpx-vp9": "yuv420p",
                "ffv1": "bgr0", "prores_ks": "yuv422p10le", "gif": None}
#: swscale's name for each colour matrix ffmpeg reports, so the RGB -> YUV conversion matches the tag
_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt2020nc": "bt2020", "smpte240m": "smpte240m"}


@dataclass(frozen=True)
class Colour:
    """Colour tags of a video stream as ffmpeg names them (None: untagged)."""

    range: str | None = None  # tv | pc
    space: str | None = None  # bt709, smpte170m, bt470bg, bt2020nc, ...
    primaries: str | None = None
    transfer: str | None = None


@dataclass(frozen=True)
class Encoding:
    """What the user asks for; None fields take the container's defaults (see `encoder_args`).

    `codec`: an ffmpeg encoder name from `CONTAINER_CODECS`. `crf`: constant-quality level
    (lower is better; libx264/libx265 0-51, libvpx-vp9 0-63). `lossless`: exact RGB.
    `pix_fmt`: the stored pixel format (e.g. yuv444p). `colour`: tags to carry from the input.
    `sar`: the sample aspect ratio (width, height of one pixel) to carry from an anamorphic
    input (DVD and DV footage stores 16:9 or 4:3 pictures in 720x480 or 720x576 pixels);
    None: square pixels."""

    codec: str | None = None
    crf: int | None = None
    lossless: bool = False
    pix_fmt: str | None = None
    colour: Colour = field(default_factory=Colour)
    sar: tuple[int, int] | None = None


@functools.lru_cache(maxsize=None)
def encoder_pixel_formats(codec: str) -> frozenset[str]:
    """The pixel formats ffmpeg's encoder `codec` accepts (from `ffmpeg -h encoder=...`)."""
    proc = subprocess.run([_ffmpeg_exe(), "-hide_banner", "-h", f"encoder={codec}"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    text = proc.stdout.decode("utf-8", errors="replace")
    m = re.search(r"Supported pixel formats:([^\n]*)", text)
    return frozenset(m.group(1).split()) if m else frozenset()


def subsampled(pix_fmt: str | None) -> tuple[bool, bool]:
    """Whether a pixel format halves the chroma width / height (so it needs even sizes)."""
    if pix_fmt is None:
        return False, False
    if pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "p010")):
        return True, True
    if pix_fmt.startswith(("yuv422", "yuvj422")):
        return True, False
    return False, False


@dataclass(frozen=True)
class EncoderChoice:
    """The resolved encoding: ffmpeg output arguments and the pixel format stored."""

    codec: str
    args: tuple[str, ...]
    pix_fmt: str | None
    lossless: bool
    #: whether width / height must be padded to even (H.264, H.265, ProRes at 4:2:0 or 4:2:2;
    #: VP9 stores odd sizes as they are)
    pad: tuple[bool, bool] = (False, False)


def choose_encoder(fmt: str, enc: Encoding, source_pix_fmt: str | None = None) -> EncoderChoice:
    """Check `enc` against the container `fmt` and turn it into ffmpeg arguments.

    `source_pix_fmt`: the input's pixel format, carried when the encoder can store it and the
    user asked for none (8-bit frames pass through mavcli, so a 10-bit source is stored in the
    10-bit format but carries 8 bits of detail)."""
    allowed = CONTAINER_CODECS.get(fmt)
    if allowed is None:
        raise UserInputError(f"{fmt} output takes no codec options")
    codec = enc.codec or ("ffv1" if enc.lossless and fmt == "mkv" else allowed[0])
    if codec not in allowed:
        hint = ", ".join(f for f, c in CONTAINER_CODECS.items() if codec in c)
        raise UserInputError(
            f"a .{fmt} file cannot hold --codec {codec}; .{fmt} takes {', '.join(allowed)}"
            + (f" ({codec} goes in {hint})" if hint else ""))
    if enc.crf is not None:
        if codec not in _CRF_RANGE:
            raise UserInputError(f"--crf applies to {', '.join(_CRF_RANGE)}, not {codec}")
        if not 0 <= enc.crf <= _CRF_RANGE[codec]:
            raise UserInputError(f"--crf for {codec} must be in 0..{_CRF_RANGE[codec]}; got {enc.crf}")
        if enc.lossless:
            raise UserInputError("give --crf or --lossless, not both")
    lossless = enc.lossless or codec == "ffv1"
    if codec == "gif":
        if enc.lossless or enc.pix_fmt:
            raise UserInputError("gif output has a 256-colour palette: it cannot be lossless or take --pix-fmt")
        return EncoderChoice(codec, (), None, False)
    if enc.lossless and codec == "prores_ks":
        raise UserInputError("ProRes is not lossless; use --codec ffv1 (mkv) or libx264 (mp4, mov, mkv)")
    if lossless:  # RGB stored exactly
        if enc.pix_fmt is not None:
            raise UserInputError("--lossless stores RGB; it takes no --pix-fmt")
        args = {
            "libx264": ("-c:v", "libx264rgb", "-qp", "0", "-preset", "medium", "-pix_fmt", "rgb24"),
            "libx265": ("-c:v", "libx265", "-x265-params", "lossless=1:log-level=error", "-pix_fmt", "gbrp"),
            "libvpx-vp9": ("-c:v", "libvpx-vp9", "-lossless", "1", "-pix_fmt", "gbrp", "-row-mt", "1"),
            "ffv1": ("-c:v", "ffv1", "-level", "3", "-pix_fmt", "bgr0"),
        }[codec]
        filters = _sar_filter(enc.sar)
        return EncoderChoice(codec, args + (("-vf", ",".join(filters)) if filters else ()),
                             "gbrp" if codec == "libvpx-vp9" else args[-1], True)
    pix = enc.pix_fmt
    supported = encoder_pixel_formats(codec)
    if pix is not None and supported and pix not in supported:
        raise UserInputError(f"{codec} cannot store --pix-fmt {pix}; it takes {', '.join(sorted(supported))}")
    if pix is None:
        pix = _DEFAULT_PIX[codec]
        if source_pix_fmt and source_pix_fmt != pix and source_pix_fmt in supported:
            pix = source_pix_fmt  # keep the input's chroma resolution and bit depth
    crf = enc.crf if enc.crf is not None else _DEFAULT_CRF.get(codec)
    if codec == "libx264":
        args = ["-c:v", "libx264", "-preset", "medium", "-crf", str(crf)]
    elif codec == "libx265":
        args = ["-c:v", "libx265", "-preset", "medium", "-crf", str(crf), "-x265-params", "log-level=error"]
        if fmt in ("mp4", "mov"):
            args += ["-tag:v", "hvc1"]  # what Apple players look for
    elif codec == "libvpx-vp9":
        args = ["-c:v", "libvpx-vp9", "-crf", str(crf), "-b:v", "0", "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]
    else:  # prores_ks
        args = ["-c:v", "prores_ks", "-profile:v", "3"]
    args += ["-pix_fmt", pix]
    c = enc.colour
    matrix = _MATRIX.get(c.space or "")
    filters = _sar_filter(enc.sar)
    if matrix is not None:  # convert with the matrix the tag names, so players decode what was meant
        filters.insert(0, f"scale=out_color_matrix={matrix}:out_range={'full' if c.range == 'pc' else 'limited'}")
        args += ["-colorspace", str(c.space)]
    # primaries and transfer are tagged on the frames themselves: the -color_primaries and
    # -color_trc output options of the ffmpeg imageio-ffmpeg ships (9.0) never reach the stream
    params = [f"{k}={v}" for k, v in (("color_primaries", c.primaries), ("color_trc", c.transfer)) if v]
    if params:
        filters.append("setparams=" + ":".join(params))
    if filters:
        args += ["-vf", ",".join(filters)]
    if c.range:
        args += ["-color_range", c.range]
    return EncoderChoice(codec, tuple(args), pix, False, subsampled(pix) if codec != "libvpx-vp9" else (False, False))


def _sar_filter(sar: tuple[int, int] | None) -> list[str]:
    """The filter that stores a sample aspect ratio other than square pixels."""
    if sar is None or sar[0] == sar[1]:
        return []
    return [f"setsar={sar[0]}/{sar[1]}"]


@dataclass(frozen=True)
class SourceStream:
    """What `mav interpolate` carries from its input's video stream: the pixel format,
    the colour tags and the sample aspect ratio (None: not stated, or square pixels); and the
    field order of interlaced video ('top first', 'bottom first', ...; None: progressive or
    not stated)."""

    pix_fmt: str | None = None
    colour: Colour = field(default_factory=Colour)
    sar: tuple[int, int] | None = None
    field_order: str | None = None


def parse_stream(header: str) -> SourceStream:
    """The pixel format, colour tags, sample aspect ratio and field order of the video stream
    mavcli reads (`video_stream`) in ffmpeg's header text, e.g. 'Video: h264 (High), yuv420p(tv,
    bt709, progressive), 720x480 [SAR 32:27 DAR 16:9]' -> SourceStream('yuv420p', Colour('tv',
    'bt709', 'bt709', 'bt709'), (32, 27), None). The SAR is that of the frames as decoded: for a
    stream turned by 90 or 270 degrees, swapped."""
    stream = video_stream(header)
    m = None if stream is None else re.search(r": Video: [^,]+(?:\([^)]*\))*[^,]*, ([a-z0-9_]+)(\(([^)]*)\))?", stream[1])
    if not m:
        return SourceStream()
    line = stream[1]
    a = re.search(r"\bSAR (\d+):(\d+) DAR", line)  # "[SAR 32:27 DAR 16:9]", or unbracketed (mkv)
    sar = (int(a.group(1)), int(a.group(2))) if a and int(a.group(1)) > 0 and int(a.group(2)) > 0 else None
    if sar is not None and sar[0] == sar[1]:
        sar = None
    if sar is not None and stream_rotation(header, stream[0]) in (90, 270):
        sar = (sar[1], sar[0])  # the frames arrive turned upright (ffmpeg's autorotation)
    pix = m.group(1)
    parts = [p.strip() for p in (m.group(3) or "").split(",")]
    rng = next((p for p in parts if p in ("tv", "pc")), None)
    space = primaries = transfer = None
    for p in parts:
        if p in ("tv", "pc", "progressive", "top first", "bottom first", "top coded first (swapped)") or "/" not in p and p.startswith(("left", "center", "top")):
            continue
        if "/" in p:  # space/primaries/transfer
            bits = p.split("/")
            if len(bits) == 3:
                space, primaries, transfer = (b if b not in ("unknown", "reserved") else None for b in bits)
        elif p not in ("unknown",) and re.fullmatch(r"[a-z0-9\-]+", p) and space is None:
            space = primaries = transfer = p  # all three the same
    order = next((p for p in parts if p.startswith(("top ", "bottom "))), None)
    return SourceStream(pix, Colour(rng, space, primaries, transfer), sar, order)
