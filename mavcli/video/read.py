"""Reading: video files through ffmpeg, folders of frames, probing without decoding."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mavcli.errors import UserInputError
from mavcli.video.common import (
    DEFAULT_FPS,
    IMAGE_SUFFIXES,
    _FOLDER_INFO,
    _READABLE,
    _ffmpeg_exe,
    _SIZE_KEY,
    _ffmpeg_header,
    _header_reason,
    _header_metadata,
    exact_rate,
    video_stream,
)



@dataclass
class VideoClip:
    """A decoded video.

    Attributes:
        frames: uint8 (f, h, w, 3) RGB.
        fps: frames per second.
        has_audio: whether the source has an audio stream (not decoded; see ``audio_from``).
        path: where it was read from.
        metadata: the JSON metadata mavcli embedded when it wrote the file ({} otherwise).
    """

    frames: np.ndarray
    fps: float
    has_audio: bool
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Seconds the clip lasts: frames / fps."""
        return self.num_frames / self.fps


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns without decoding every frame.

    ``num_frames`` is ``round(duration * fps)`` unless ``exact`` (then every frame was
    counted); for a folder of frames it is the number of image files.
    """

    path: Path
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float
    has_audio: bool
    codec: str | None = None
    audio_codec: str | None = None
    exact: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: int | None = None  # the video stream's index in the file (None: a folder of frames)


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _frame_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )


def _check_input(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"{p} does not exist; check the path ({_READABLE})")
    if p.is_dir() and not _frame_files(p):
        raise UserInputError(
            f"{p} is a folder with no PNG/JPEG frames in it; pass a video file or a folder of "
            f"frames ({_READABLE})"
        )
    return p


class _RotationSizeNote(logging.Filter):
    """imageio-ffmpeg warns that a rotated video's frames differ in size from its stream (e.g.
    480x720 for 720x480 turned 90 degrees). That is ffmpeg's autorotation, which this module
    expects and sizes by, so the warning is left out; imageio-ffmpeg's other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_RotationSizeNote())


class _FileSource:
    """An opened video file: header facts, then a frame generator (internal)."""

    def __init__(self, path: Path, max_frames: int | None = None) -> None:
        import imageio_ffmpeg

        text = _ffmpeg_header(path)
        if "Input #0" not in text:
            raise UserInputError(
                f"{path} is not a video that can be read ({_header_reason(text)}); {_READABLE}"
            )
        stream = video_stream(text)
        if stream is None:
            raise UserInputError(f"{path} has no video stream (audio only, or only a cover picture?); {_READABLE}")
        self.stream, line = stream
        meta_json = _header_metadata(text, path)
        # that stream, not ffmpeg's own pick; one output frame per decoded frame
        output_params = ["-map", f"0:{self.stream}", "-fps_mode", "passthrough"]
        if max_frames is not None:
            output_params += ["-frames:v", str(int(max_frames))]
        self._gen = imageio_ffmpeg.read_frames(str(path), output_params=output_params)
        try:
            meta = next(self._gen)
        except (OSError, RuntimeError, StopIteration) as e:
            self.close()
            reason = (str(e).strip().splitlines() or ["ffmpeg could not decode it"])[-1]
            raise UserInputError(
                f"{path} is not a video that can be read ({reason}); {_READABLE}"
            ) from e
        self.path = path
        self.meta = meta
        self.metadata = {k: v for k, v in meta_json.items() if k != _SIZE_KEY}
        self.src_w, self.src_h = (int(v) for v in meta["size"])
        self.w, self.h = self.src_w, self.src_h
        size = meta_json.get(_SIZE_KEY)
        if (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) for v in size)
            and 0 < size[0] <= self.src_w
            and 0 < size[1] <= self.src_h
        ):
            self.w, self.h = size  # crop the padding mavcli added for yuv420p
        # imageio reads the rate and codec off the first video stream's line: take this stream's
        rate = re.search(r", (\d+(?:\.\d+)?) fps", line) or re.search(r", (\d+(?:\.\d+)?) tbr", line)
        fps = float(rate.group(1)) if rate else float(meta.get("fps") or 0.0)
        self.fps = exact_rate(fps) if fps > 0 and math.isfinite(fps) else 0.0
        self.duration = float(meta.get("duration") or 0.0)
        codec = re.search(r"Video: ([A-Za-z0-9_]+)", line)
        self.codec = codec.group(1) if codec else None
        self.audio_codec = str(meta["audio_codec"]).strip(" ,") if meta.get("audio_codec") else None
        self.has_audio = self.audio_codec is not None
        self.exact_count: int | None = None
        if self.codec == "gif":
            # ffmpeg states the rate of the shortest delay; GIF delays are whole centiseconds
            # and alternate (8 fps = 13, 12, 13... cs), so use the mean over all frames
            timing = _gif_timing(path)
            if timing is not None:
                self.exact_count, seconds = timing
                self.duration = seconds
                self.fps = self.exact_count / seconds

    def frames(self) -> Iterator[np.ndarray]:
        frame_bytes = self.src_w * self.src_h * 3
        try:
            while True:
                try:
                    raw = next(self._gen)
                except StopIteration:
                    return
                except RuntimeError:  # a truncated file ends mid-frame: keep what was decoded
                    return
                if len(raw) != frame_bytes:
                    return
                frame = np.frombuffer(raw, dtype=np.uint8).reshape(self.src_h, self.src_w, 3)
                yield np.array(frame[: self.h, : self.w])  # a writable copy
        finally:
            self.close()

    def close(self) -> None:
        self._gen.close()  # stops ffmpeg


def _gif_timing(path: Path) -> tuple[int, float] | None:
    """(number of frames, total seconds) of a GIF from its frame delays, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            total_ms = 0.0
            for i in range(n):
                im.seek(i)
                total_ms += float(im.info.get("duration") or 0.0)
    except Exception:  # Pillow raises many types for a damaged file; ffmpeg's guess stands
        return None
    if n < 1 or total_ms <= 0:
        return None
    return n, total_ms / 1000.0


def _folder_info(folder: Path) -> dict[str, Any]:
    info_path = folder / _FOLDER_INFO
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
    return {}


def folder_fps(folder: Path, info: dict[str, Any] | None = None) -> float | None:
    """The frame rate mavcli recorded in a frames folder's video.json (`info`, when already
    read); None when it states none (frames from elsewhere): readers then take ``DEFAULT_FPS``."""
    fps = (_folder_info(folder) if info is None else info).get("fps")
    return float(fps) if isinstance(fps, (int, float)) and fps > 0 else None


def read_image(p: Path) -> np.ndarray:
    """One still image as uint8 RGB `(h, w, 3)`: gray expanded, alpha dropped, 16-bit scaled;
    UserInputError naming the file when it cannot be read."""
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(p))
    except Exception as e:  # imageio raises many types for a bad image
        # imageio's first line says what failed; the rest suggests plugins to install
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserInputError(f"cannot read the image {p} (not an image, or damaged?): {reason}") from e
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3:
        raise UserInputError(f"{p} is not a single still image (shape {img.shape})")
    if img.shape[2] == 4:
        img = img[..., :3]  # alpha dropped
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img // 257).astype(np.uint8)
        else:
            raise UserInputError(f"{p} has pixels of type {img.dtype}; use 8-bit images")
    return img


def _iter_folder(folder: Path, files: list[Path]) -> Iterator[np.ndarray]:
    first_shape = None
    for p in files:
        img = read_image(p)
        if first_shape is None:
            first_shape = img.shape
        elif img.shape != first_shape:
            raise UserInputError(
                f"the frames in {folder} differ in size: {files[0].name} is "
                f"{first_shape[1]}x{first_shape[0]}, {p.name} is {img.shape[1]}x{img.shape[0]}"
            )
        yield img


def iter_video_frames(
    path: str | os.PathLike[str], max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Stream the frames of a video file or frames folder, one uint8 (h, w, 3) RGB array at a
    time (memory stays bounded whatever the length).

    The path is checked and opened now, so a bad path raises ``UserInputError`` at the call,
    not at the first ``next``. Closing the iterator early stops the decoder.
    """
    p = _check_input(path)
    if max_frames is not None and max_frames < 1:
        raise UserInputError(f"max_frames must be >= 1, got {max_frames}")
    if p.is_dir():
        files = _frame_files(p)
        return _iter_folder(p, files[:max_frames] if max_frames else files)
    return _FileSource(p, max_frames).frames()


def probe_video(path: str | os.PathLike[str], exact: bool = False) -> VideoInfo:
    """fps, frame count, size, duration and audio of a video without decoding it all.

    Args:
        path: a video file or a folder of frames.
        exact: count the frames by decoding the whole file (slow for long videos) instead of
            estimating ``round(duration * fps)``.
    """
    p = _check_input(path)
    if p.is_dir():
        files = _frame_files(p)
        first = read_image(files[0])
        info = _folder_info(p)
        fps = folder_fps(p, info) or DEFAULT_FPS
        meta = info.get("metadata")
        return VideoInfo(
            path=p,
            fps=fps,
            num_frames=len(files),
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            duration=len(files) / fps,
            has_audio=False,
            codec="png" if files[0].suffix.lower() == ".png" else files[0].suffix.lower()[1:],
            exact=True,
            metadata=meta if isinstance(meta, dict) else {},
        )
    src = _FileSource(p, max_frames=1)
    src.close()
    fps = src.fps or DEFAULT_FPS
    if src.exact_count is not None:
        n, exact = src.exact_count, True
    elif exact:
        n = sum(1 for _ in _FileSource(p).frames())
    else:
        n = max(1, int(round(src.duration * fps))) if src.duration > 0 else 0
    return VideoInfo(
        path=p,
        fps=fps,
        num_frames=n,
        width=src.w,
        height=src.h,
        duration=src.duration if src.duration > 0 else (n / fps),
        has_audio=src.has_audio,
        codec=src.codec,
        audio_codec=src.audio_codec,
        exact=exact,
        metadata=src.metadata,
        stream=src.stream,
    )


def read_video(
    path: str | os.PathLike[str],
    max_frames: int | None = None,
    *,
    min_frames: int = 1,
    max_bytes: int | None = 4 * 2**30,
) -> VideoClip:
    """Decode a whole video (file or folder of frames) into memory.

    Args:
        path: video file (anything ffmpeg decodes) or a folder of PNG/JPEG frames (read in
            natural order; fps from the folder's ``video.json`` when mavcli wrote it, else
            ``DEFAULT_FPS``).
        max_frames: read at most this many frames from the start.
        min_frames: raise ``UserInputError`` when the video has fewer frames (e.g. 2 for
            interpolation, which needs at least two frames).
        max_bytes: refuse (``UserInputError``) a video whose decoded frames would need more
            memory than this; use ``iter_video_frames`` or ``max_frames`` instead. None: no limit.

    Returns:
        VideoClip with frames uint8 (f, h, w, 3).
    """
    p = _check_input(path)
    if max_frames is not None and max_frames < 1:
        raise UserInputError(f"max_frames must be >= 1, got {max_frames}")
    if p.is_dir():
        files = _frame_files(p)
        if max_frames:
            files = files[:max_frames]
        info = _folder_info(p)
        fps = folder_fps(p, info) or DEFAULT_FPS
        meta = info.get("metadata")
        frames_list = list(_iter_folder(p, files))
        clip = VideoClip(
            np.stack(frames_list),
            fps,
            False,
            p,
            meta if isinstance(meta, dict) else {},
        )
    else:
        src = _FileSource(p, max_frames)
        fps = src.fps or DEFAULT_FPS
        if max_bytes is not None and src.duration > 0:
            est = round(src.duration * fps)
            if max_frames:
                est = min(est, max_frames)
            need = est * src.w * src.h * 3
            if need > max_bytes:
                src.close()
                raise UserInputError(
                    f"{p} is about {est} frames of {src.w}x{src.h} ({need / 2**30:.1f} GiB "
                    f"decoded), more than the {max_bytes / 2**30:.1f} GiB allowed; read fewer "
                    f"frames (max_frames) or stream them (iter_video_frames)"
                )
        frames_list = list(src.frames())
        if not frames_list:
            raise UserInputError(f"{p} contains no video frames; {_READABLE}")
        clip = VideoClip(np.stack(frames_list), fps, src.has_audio, p, src.metadata)
    if clip.num_frames < min_frames:
        raise UserInputError(
            f"{p} has {clip.num_frames} frame{'s' if clip.num_frames != 1 else ''}; at least "
            f"{min_frames} are needed"
        )
    return clip




@dataclass(frozen=True)
class FrameTimes:
    """When each frame of a video is shown: ``times[i]`` seconds after the first frame,
    ``duration`` the time the last frame ends. ``variable``: the timestamps depart from an
    even grid at the nominal ``fps`` by more than a quarter of a frame (variable frame rate);
    otherwise ``times`` is exactly ``i / fps``."""

    times: list[float]
    duration: float
    fps: float
    variable: bool


def packet_times(path: Path, stream: str = "v:0") -> tuple[list[float], float] | None:
    """Presentation times (sorted, from the first) of one stream's packets (``stream``: ffmpeg's
    stream specifier, e.g. ``v:0``, ``a:0`` or an index) and the end of the last one, read by ffmpeg
    without decoding (``-c copy -f framemd5``); None if unknown."""
    try:
        proc = subprocess.run(
            [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
             "-map", f"0:{stream}", "-c", "copy", "-f", "framemd5", "-"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    text = proc.stdout.decode("utf-8", errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)", text, flags=re.MULTILINE)
    if proc.returncode != 0 or base is None:
        return None
    tb = int(base.group(1)) / int(base.group(2))
    packets = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4 or not cols[2].lstrip("-").isdigit():
            return None  # a packet without a timestamp: fall back to the nominal rate
        packets.append((int(cols[2]), int(cols[3]) if cols[3].isdigit() else 0))
    if not packets:
        return None
    packets.sort()
    first = packets[0][0]
    times = [(p - first) * tb for p, _ in packets]
    end = times[-1] + (packets[-1][1] * tb or (times[-1] - times[-2] if len(times) > 1 else 0.0))
    return times, end


def frame_times(path: str | os.PathLike[str], count: int | None = None, folder_rate: float | None = None,
                info: VideoInfo | None = None) -> FrameTimes:
    """The time of every frame of a video file or frames folder (see ``FrameTimes``).

    ``count``: the number of frames the decoder gives (when already known); the timestamps are
    used only when they describe that many frames, else the nominal rate stands.
    ``folder_rate``: the rate of a frames folder, in place of its video.json's or ``DEFAULT_FPS``.
    ``info``: the video's ``probe_video``, when the caller has it already."""
    info = probe_video(path) if info is None else info
    fps = folder_rate if folder_rate is not None and info.path.is_dir() else info.fps
    n = count if count is not None else info.num_frames
    even = [i / fps for i in range(n)]
    if info.path.is_dir() or n < 2:
        return FrameTimes(even, n / fps, fps, False)
    got = packet_times(info.path, "v:0" if info.stream is None else str(info.stream))
    if got is None or len(got[0]) != n:
        return FrameTimes(even, n / fps, fps, False)
    times, end = got
    if max(abs(a - b) for a, b in zip(times, even)) <= 0.25 / fps:
        return FrameTimes(even, n / fps, fps, False)
    if any(b <= a for a, b in zip(times, times[1:])):
        return FrameTimes(even, n / fps, fps, False)  # duplicate timestamps: trust the rate
    return FrameTimes(times, end, n / end if end > 0 else fps, True)
