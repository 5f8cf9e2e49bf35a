"""What reading and writing share: the formats, the ffmpeg binary and how to read its messages."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from mavcli.errors import UserInputError


#: formats ``write_video`` produces
WRITE_FORMATS: tuple[str, ...] = ("mp4", "mov", "mkv", "webm", "gif", "png")
_SUFFIX_FORMAT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "mkv", ".webm": "webm", ".gif": "gif"}
#: ffmpeg muxer of each format
MUXER = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "gif": "gif"}
#: image files read as frames of a folder
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)
#: video files read as videos (a folder of them is a batch for mav interpolate, or training data)
VIDEO_SUFFIXES: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".webm", ".gif", ".mov", ".mkv", ".avi"}
)
#: fps assumed for a folder of frames without ``video.json`` and for files that state none
DEFAULT_FPS = 24.0
_FOLDER_INFO = "video.json"
_READABLE = (
    "mavcli reads video files ffmpeg can decode (mp4, mov, mkv, webm, avi, gif, ...) and "
    "folders of PNG/JPEG frames"
)
_SIZE_KEY = "mavcli_frame_size"  # [w, h] in the comment metadata when frames were padded for 4:2:0


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_header(path: Path) -> str:
    """ffmpeg's description of an input file (its stderr for ``ffmpeg -i path``)."""
    try:
        proc = subprocess.run(
            [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    except subprocess.TimeoutExpired as e:
        raise UserInputError(f"ffmpeg took too long to open {path}; is it a video file?") from e
    return proc.stderr.decode("utf-8", errors="replace")


def video_stream(header: str) -> tuple[int, str] | None:
    """The video stream mavcli reads, from ffmpeg's header text: (its index in the file, its
    header line). The largest picture that is not a cover (an "attached pic"), the first of
    equals; None when there is none. Reading, timestamps and the carried pixel format and
    colour tags all take this one stream, so a cover picture stored first changes none of them."""
    best: tuple[int, int, str] | None = None
    for m in re.finditer(r"^\s*Stream #0:(\d+)\S*: Video: .*$", header, flags=re.MULTILINE):
        line = m.group(0).strip()
        if "(attached pic)" in line:
            continue
        size = re.search(r", (\d+)x(\d+)", line)
        area = int(size.group(1)) * int(size.group(2)) if size else 0
        if best is None or area > best[0]:
            best = (area, int(m.group(1)), line)
    return None if best is None else (best[1], best[2])


def stream_rotation(header: str, index: int) -> int:
    """Degrees (0, 90, 180 or 270) that stream `index`'s display matrix turns the picture by,
    from the "Side data" under its line in ffmpeg's header text. ffmpeg applies it when
    decoding, so frames arrive turned, and a 90 or 270 turn swaps the pixel aspect ratio."""
    lines = header.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*Stream #0:{index}\b", line):
            indent = len(line) - len(line.lstrip())
            for below in lines[i + 1:]:
                if len(below) - len(below.lstrip()) <= indent:
                    break  # the next stream, or the end of this input's description
                m = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", below)
                if m:
                    return round(float(m.group(1)) / 90) % 4 * 90
    return 0


def _header_reason(text: str) -> str:
    """The most telling line of a failed ffmpeg open, e.g. 'Invalid data found ...'."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if "Error opening input files:" in line:
            return line.split(":", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg could not open it"


def _header_metadata(text: str, path: Path | None = None) -> dict[str, Any]:
    """The JSON of the first ``comment`` tag in ffmpeg's header text ({} if none / not JSON).
    The header cuts a tag's value at 255 characters, so a longer comment (a long source path is
    enough) is read whole from ``path`` instead (``_full_comment``)."""
    m = re.search(r"^\s*comment\s*:\s?(.*)$", text, flags=re.MULTILINE | re.IGNORECASE)
    if not m:
        return {}
    raw = m.group(1).strip()
    if len(raw) >= 255 and path is not None:
        raw = _full_comment(path) or raw
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _full_comment(path: Path) -> str | None:
    """The ``comment`` tag of a file, whole: ffmpeg's ffmetadata output, where ``=``, ``;``,
    ``#``, ``\\`` and newlines in a value are escaped by a backslash."""
    try:
        proc = subprocess.run([_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-f", "ffmetadata", "-"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    text = proc.stdout.decode("utf-8", errors="replace")
    m = re.search(r"^comment=((?:[^\\\n]|\\.)*)", text, flags=re.MULTILINE | re.IGNORECASE | re.DOTALL)
    return None if m is None else re.sub(r"\\(.)", r"\1", m.group(1), flags=re.DOTALL)



#: the rates of NTSC-derived video, N * 1000/1001, which ffmpeg's header and people round
NTSC_BASES = (24, 30, 48, 60, 120, 240)


def exact_rate(fps: float) -> float:
    """`fps`, or N * 1000/1001 where `fps` is that rate rounded: ffmpeg's header states 24000/1001
    as "23.98 fps", and 1/23.98 s per frame drifts 0.6 s from the real clock over an hour."""
    for n in NTSC_BASES:
        if abs(fps - n * 1000 / 1001) < 0.005:
            return n * 1000 / 1001
    return fps


def _fps_arg(fps: float) -> str:
    return str(int(fps)) if float(fps).is_integer() else repr(float(fps))


def _stderr_tail(fh: Any, n: int = 2000) -> str:
    try:
        fh.seek(0)
        return fh.read().decode("utf-8", errors="replace")[-n:].strip()
    except (OSError, ValueError):
        return ""

