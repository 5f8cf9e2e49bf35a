"""Read and write videos (numpy uint8 frames) with imageio-ffmpeg; detect scene cuts.

Reading goes through the ffmpeg binary that imageio-ffmpeg ships, so anything ffmpeg decodes
works (mp4, mov, mkv, webm, avi, gif, ...), plus folders of PNG/JPEG frames. Frames are RGB
uint8 arrays ``(f, h, w, 3)``; ``iter_video_frames`` streams ``(h, w, 3)`` frames so a long
video never has to fit in memory.

Writing is atomic: frames go to a hidden temporary file beside the target
(``.{stem}.partial{suffix}``, or a ``.{name}.partial`` folder for PNG frames) that replaces the
target with ``os.replace`` only once complete; on any exception, KeyboardInterrupt included,
the temporary file is removed. An existing target is only replaced with ``overwrite=True``.

Formats written:

- ``mp4``: H.264 (libx264, CRF 18, yuv420p, +faststart: plays everywhere). yuv420p needs an
  even width and height: an odd-sized frame is padded by repeating its last column / row, and
  the true size is recorded in the file's ``comment`` metadata, so ``read_video`` crops it back
  and returns exactly the size that was written (other players show the extra pixel line).
- ``webm``: VP9 (libvpx-vp9, constant quality CRF 30, yuv420p); odd sizes are native.
- ``gif``: ffmpeg with a palette computed over the whole clip (palettegen/paletteuse). GIF
  stores frame delays in 1/100 s, so an fps whose period is not a whole number of
  centiseconds (8 fps = 12.5 cs) plays at a slightly different rate: 10, 20, 25 and 50 fps are
  exact.
- ``png``: a folder of ``frame_000000.png``... plus ``video.json`` (fps, size, metadata),
  lossless; chosen for a path without a suffix or ``format="png"``.

``metadata`` is written to a sidecar JSON (``sidecar_path``: ``out.mp4`` -> ``out.json``) and,
for mp4 and webm, also embedded as the container's ``comment`` (JSON text). ``audio_from``
copies the audio of another file into mp4 / webm output (stream copy when the container allows
the codec, else AAC for mp4 / Opus for webm).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mavcli.errors import MavError, UserInputError

__all__ = [
    "VideoClip",
    "VideoInfo",
    "VideoWriter",
    "read_video",
    "iter_video_frames",
    "probe_video",
    "write_video",
    "sidecar_path",
    "detect_scene_cuts",
    "WRITE_FORMATS",
    "IMAGE_SUFFIXES",
]

#: formats ``write_video`` produces
WRITE_FORMATS: tuple[str, ...] = ("mp4", "webm", "gif", "png")
_SUFFIX_FORMAT = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".gif": "gif"}
#: image files read as frames of a folder
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)
#: fps assumed for a folder of frames without ``video.json`` and for files that state none
DEFAULT_FPS = 24.0
_FOLDER_INFO = "video.json"
_READABLE = (
    "mavcli reads video files ffmpeg can decode (mp4, mov, mkv, webm, avi, gif, ...) and "
    "folders of PNG/JPEG frames"
)
_SIZE_KEY = "mavcli_frame_size"  # [w, h] in the comment metadata when mp4 frames were padded


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# =============================================================================================
# Reading


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


def _header_reason(text: str) -> str:
    """The most telling line of a failed ffmpeg open, e.g. 'Invalid data found ...'."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if "Error opening input files:" in line:
            return line.split(":", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg could not open it"


def _header_metadata(text: str) -> dict[str, Any]:
    """The JSON of the first ``comment`` tag in ffmpeg's header text ({} if none / not JSON)."""
    m = re.search(r"^\s*comment\s*:\s?(.*)$", text, flags=re.MULTILINE | re.IGNORECASE)
    if not m:
        return {}
    try:
        value = json.loads(m.group(1).strip())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class _FileSource:
    """An opened video file: header facts, then a frame generator (internal)."""

    def __init__(self, path: Path, max_frames: int | None = None) -> None:
        import imageio_ffmpeg

        text = _ffmpeg_header(path)
        if "Input #0" not in text:
            raise UserInputError(
                f"{path} is not a video that can be read ({_header_reason(text)}); {_READABLE}"
            )
        if not re.search(r"Stream #\d+:\d+.*: Video:", text):
            raise UserInputError(f"{path} has no video stream (audio only?); {_READABLE}")
        meta_json = _header_metadata(text)
        output_params = ["-fps_mode", "passthrough"]  # one output frame per decoded frame
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
        fps = float(meta.get("fps") or 0.0)
        self.fps = fps if fps > 0 and math.isfinite(fps) else 0.0
        self.duration = float(meta.get("duration") or 0.0)
        self.codec = str(meta["codec"]).strip(" ,") if meta.get("codec") else None
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


def _read_image(p: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(p))
    except Exception as e:  # imageio raises many types for a bad image
        raise UserInputError(f"cannot read the frame {p}: {e}") from e
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
        img = _read_image(p)
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
        first = _read_image(files[0])
        info = _folder_info(p)
        fps = float(info.get("fps") or DEFAULT_FPS)
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
        fps = float(info.get("fps") or DEFAULT_FPS)
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


# =============================================================================================
# Writing


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the metadata JSON of an output goes: ``out.mp4`` -> ``out.mp4.json`` (so
    ``out.mp4`` and ``out.gif`` never share one), folder ``frames`` -> ``frames.json``."""
    p = Path(path).expanduser()
    return p.with_name(p.name + ".json")


def _resolve_format(path: Path, fmt: str | None) -> str:
    suffix = path.suffix.lower()
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in WRITE_FORMATS:
            raise UserInputError(
                f"unknown video format {fmt!r}; choose one of: {', '.join(WRITE_FORMATS)}"
            )
        implied = _SUFFIX_FORMAT.get(suffix)
        if fmt != "png" and implied is not None and implied != fmt:
            raise UserInputError(f"{path} ends in {suffix} but the format asked is {fmt}")
        return fmt
    if suffix in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[suffix]
    if suffix == "":
        return "png"
    raise UserInputError(
        f"cannot write {suffix} files ({path}); use a name ending in .mp4, .webm or .gif, or "
        f"a folder name without a suffix for PNG frames"
    )


def _is_our_frames_folder(p: Path) -> bool:
    """Whether ``p`` holds only what a PNG-folder write creates (safe to replace)."""
    for q in p.iterdir():
        if q.name == _FOLDER_INFO:
            continue
        if not (q.is_file() and re.fullmatch(r"frame_\d+\.png", q.name)):
            return False
    return True


def _check_output(path: Path, fmt: str, overwrite: bool, sidecar: Path | None) -> None:
    parent = path.parent
    if not parent.exists():
        raise UserInputError(f"the output folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UserInputError(f"{parent} is not a folder, so {path.name} cannot be written in it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"the output folder {parent} is not writable")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UserInputError(f"{path} already exists; pass --overwrite to replace it")
        if fmt == "png":
            if not path.is_dir():
                raise UserInputError(
                    f"{path} exists and is not a folder of frames; remove it first"
                )
            if not _is_our_frames_folder(path):
                raise UserInputError(
                    f"{path} holds files other than frames written by mavcli; not replacing it"
                )
        elif path.is_dir():
            raise UserInputError(f"{path} is a folder; choose a file name for the {fmt} video")
    if sidecar is not None and sidecar.exists() and not overwrite:
        raise UserInputError(f"{sidecar} already exists; pass --overwrite to replace it")


def _as_frames(frames: Any) -> np.ndarray:
    """Validate frames: uint8 (f, h, w, 3), or one (h, w, 3) frame -> (1, h, w, 3)."""
    x = np.asarray(frames)
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (f, h, w, 3) RGB, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 in [0, 255], got {x.dtype}; convert e.g. "
            f"((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)"
        )
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"frames must have a positive size, got {x.shape}")
    return x


def _fps_arg(fps: float) -> str:
    return str(int(fps)) if float(fps).is_integer() else repr(float(fps))


def _stderr_tail(fh: Any, n: int = 2000) -> str:
    try:
        fh.seek(0)
        return fh.read().decode("utf-8", errors="replace")[-n:].strip()
    except (OSError, ValueError):
        return ""


class _FfmpegBackend:
    """Raw RGB frames piped into one ffmpeg process that encodes ``tmp`` (internal)."""

    def __init__(
        self, tmp: Path, fmt: str, width: int, height: int, fps: float, comment: str | None
    ) -> None:
        enc_w, enc_h = width, height
        if fmt == "mp4":  # yuv420p needs even sizes: pad (edge copies) in write()
            enc_w, enc_h = width + width % 2, height + height % 2
        self.width, self.height, self.enc_w, self.enc_h = width, height, enc_w, enc_h
        cmd = [
            _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{enc_w}x{enc_h}",
            "-r", _fps_arg(fps), "-i", "-", "-an",
        ]  # fmt: skip
        if fmt == "mp4":
            cmd += ["-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart"]  # fmt: skip
        elif fmt == "webm":
            cmd += ["-c:v", "libvpx-vp9", "-crf", "30", "-b:v", "0", "-pix_fmt", "yuv420p",
                    "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]  # fmt: skip
        elif fmt == "gif":
            # one palette for the whole clip (no per-frame palette flicker), error diffusion
            palette = (
                "split[a][b];[a]palettegen=stats_mode=full[p];"
                "[b][p]paletteuse=dither=sierra2_4a"
            )
            cmd += ["-filter_complex", palette, "-loop", "0"]
        if comment is not None and fmt in ("mp4", "webm"):
            cmd += ["-metadata", f"comment={comment}"]
        cmd += ["-f", {"mp4": "mp4", "webm": "webm", "gif": "gif"}[fmt], str(tmp)]
        self._err = tempfile.TemporaryFile()
        # own session: Ctrl-C reaches Python (which aborts and kills ffmpeg), not ffmpeg, so
        # ffmpeg never races to finish a half-written file
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
        )

    def write(self, frame: np.ndarray) -> None:
        """frame: uint8 (h, w, 3)."""
        if (self.enc_w, self.enc_h) != (self.width, self.height):
            pad = ((0, self.enc_h - self.height), (0, self.enc_w - self.width), (0, 0))
            frame = np.pad(frame, pad, mode="edge")  # repeat the last row / column
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError) as e:
            self.proc.wait()
            raise MavError(f"ffmpeg stopped while encoding: {_stderr_tail(self._err)}") from e

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rc = self.proc.wait()
        err = _stderr_tail(self._err)
        self._err.close()
        if rc != 0:
            raise MavError(f"ffmpeg failed to encode the video (exit {rc}): {err}")

    def abort(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            self._err.close()
        except OSError:
            pass


class _PngBackend:
    """Frames as ``frame_000000.png``... in the folder ``tmp`` (internal)."""

    def __init__(
        self, tmp: Path, width: int, height: int, fps: float, metadata: dict[str, Any] | None
    ) -> None:
        tmp.mkdir()
        self.tmp, self.width, self.height = tmp, width, height
        self.fps, self.metadata = fps, metadata
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        import imageio.v3 as iio

        iio.imwrite(self.tmp / f"frame_{self.count:06d}.png", frame)
        self.count += 1

    def close(self) -> None:
        info = {
            "fps": self.fps,
            "num_frames": self.count,
            "width": self.width,
            "height": self.height,
            "metadata": self.metadata or {},
        }
        (self.tmp / _FOLDER_INFO).write_text(json.dumps(info, indent=2, default=str))

    def abort(self) -> None:
        pass  # the caller removes the folder


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


class VideoWriter:
    """Append frames to a video, written atomically (see the module docstring).

    Use as a context manager: the file appears at ``path`` only when the block ends without
    an exception; on an exception (KeyboardInterrupt included) nothing is left behind.

        with VideoWriter("out.mp4", fps=24) as w:
            for chunk in chunks:          # uint8 (f, h, w, 3) or (h, w, 3)
                w.append(chunk)

    Memory stays bounded: frames stream into ffmpeg (or PNG files) as they come.

    Args:
        path: target file (.mp4, .webm, .gif) or folder (no suffix, or ``format="png"``).
        fps: frames per second (> 0).
        format: ``"mp4" | "webm" | "gif" | "png"``; default from the suffix.
        metadata: JSON-able dict: sidecar ``sidecar_path(path)`` and, for mp4/webm, the
            container ``comment``.
        audio_from: a file whose audio streams are muxed in (mp4/webm only); a source without
            audio gives a video without audio.
        overwrite: replace an existing target (else ``UserInputError``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        format: str | None = None,
        metadata: dict[str, Any] | None = None,
        audio_from: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.format = _resolve_format(self.path, format)
        try:
            fps = float(fps)
        except (TypeError, ValueError) as e:
            raise UserInputError(f"fps must be a number, got {fps!r}") from e
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise UserInputError(f"fps must be in (0, 1000], got {fps}")
        self.fps = fps
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        self.metadata = metadata
        self.sidecar = sidecar_path(self.path) if metadata is not None else None
        self.audio_from: Path | None = None
        if audio_from is not None:
            if self.format not in ("mp4", "webm"):
                raise UserInputError(
                    f"audio can only be kept in mp4 or webm output, not {self.format}"
                )
            src = Path(audio_from).expanduser()
            if not src.is_file():
                raise UserInputError(f"the audio source {src} does not exist or is not a file")
            self.audio_from = src
        self.overwrite = overwrite
        _check_output(self.path, self.format, overwrite, self.sidecar)

        name = self.path.stem if self.format != "png" else self.path.name
        suffix = self.path.suffix if self.format != "png" else ""
        self._tmp = self.path.with_name(f".{name}.partial{suffix}")
        self._tmp_audio = self.path.with_name(f".{name}.partial-audio{suffix}")
        self._tmp_sidecar = (
            self.sidecar.with_name(f".{self.sidecar.name}.partial") if self.sidecar else None
        )
        self._backend: _FfmpegBackend | _PngBackend | None = None
        self._size: tuple[int, int] | None = None  # (w, h)
        self.frames_written = 0
        self._done = False

    # -- context manager
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _comment(self) -> str | None:
        meta: dict[str, Any] = dict(self.metadata or {})
        assert self._size is not None
        w, h = self._size
        if self.format == "mp4" and (w % 2 or h % 2):
            meta[_SIZE_KEY] = [w, h]
        if not meta:
            return None
        return json.dumps(meta, default=str, separators=(",", ":"), ensure_ascii=True)

    def _start(self, w: int, h: int) -> None:
        self._size = (w, h)
        for stale in (self._tmp, self._tmp_audio):
            _remove(stale)  # left by a killed earlier run of the same output
        try:
            if self.format == "png":
                self._backend = _PngBackend(self._tmp, w, h, self.fps, self.metadata)
            else:
                self._backend = _FfmpegBackend(
                    self._tmp, self.format, w, h, self.fps, self._comment()
                )
        except PermissionError as e:
            raise UserInputError(f"cannot write in {self.path.parent}: {e.strerror}") from e

    def append(self, frames: Any) -> None:
        """Add frames: uint8 (f, h, w, 3) or one (h, w, 3); all of one size."""
        if self._done:
            raise ValueError("this VideoWriter is closed")
        x = _as_frames(frames)
        try:
            if self._backend is None:
                self._start(int(x.shape[2]), int(x.shape[1]))
            if (x.shape[2], x.shape[1]) != self._size:
                raise ValueError(
                    f"frame size {x.shape[2]}x{x.shape[1]} differs from the first frames' "
                    f"{self._size[0]}x{self._size[1]}"  # type: ignore[index]
                )
            for frame in x:
                self._backend.write(frame)  # type: ignore[union-attr]
                self.frames_written += 1
        except BaseException:
            self.abort()
            raise

    def _mux_audio(self) -> None:
        """Copy the audio of ``audio_from`` next to the encoded video (second ffmpeg pass)."""
        assert self.audio_from is not None
        acodec = _audio_codec_of(self.audio_from)
        if acodec is None:
            return  # nothing to keep: the video stays silent
        copyable = {
            "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
            "webm": {"opus", "vorbis"},
        }
        if acodec.lower() in copyable[self.format]:
            codec = "copy"  # the audio stream unchanged
        else:  # the container cannot hold this codec: re-encode
            codec = "aac" if self.format == "mp4" else "libopus"
        cmd = [
            _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-i", str(self._tmp), "-i", str(self.audio_from),
            "-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", "-c:a", codec,
            "-shortest", "-map_metadata", "0",
        ]  # fmt: skip
        if self.format == "mp4":
            cmd += ["-movflags", "+faststart"]
        cmd += ["-f", self.format, str(self._tmp_audio)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", errors="replace")[-2000:].strip()
            raise MavError(f"ffmpeg failed to add the audio of {self.audio_from}: {err}")
        os.replace(self._tmp_audio, self._tmp)

    def close(self) -> Path:
        """Finish the file and move it into place. Returns the final path."""
        if self._done:
            return self.path
        try:
            if self._backend is None or self.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            self._backend.close()
            if self.audio_from is not None:
                self._mux_audio()
            if self._tmp_sidecar is not None:
                self._tmp_sidecar.write_text(json.dumps(self.metadata, indent=2, default=str))
            if self.format == "png" and self.path.exists():
                old = self.path.with_name(f".{self.path.name}.old")
                _remove(old)
                os.replace(self.path, old)
                try:
                    os.replace(self._tmp, self.path)
                except BaseException:
                    os.replace(old, self.path)  # put the previous frames back
                    raise
                _remove(old)
            else:
                os.replace(self._tmp, self.path)
            if self._tmp_sidecar is not None and self.sidecar is not None:
                os.replace(self._tmp_sidecar, self.sidecar)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Stop and remove every temporary file; the target is left as it was."""
        if self._done:
            return
        self._done = True
        if self._backend is not None:
            try:
                self._backend.abort()
            except Exception:
                pass
        for p in (self._tmp, self._tmp_audio, self._tmp_sidecar):
            if p is not None:
                _remove(p)


def _audio_codec_of(path: Path) -> str | None:
    """Codec name of the first audio stream ('aac', 'opus', ...) or None."""
    text = _ffmpeg_header(path)
    if "Input #0" not in text:
        raise UserInputError(f"cannot read audio from {path} ({_header_reason(text)})")
    m = re.search(r"Stream #\d+:\d+.*: Audio: ([A-Za-z0-9_]+)", text)
    return m.group(1) if m else None


def write_video(
    path: str | os.PathLike[str],
    frames: Any,
    fps: float,
    *,
    format: str | None = None,
    metadata: dict[str, Any] | None = None,
    audio_from: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write uint8 frames (f, h, w, 3) to ``path`` atomically; see ``VideoWriter``.

    Returns:
        The written path.
    """
    x = _as_frames(frames)
    with VideoWriter(
        path, fps, format=format, metadata=metadata, audio_from=audio_from, overwrite=overwrite
    ) as w:
        w.append(x)
    return w.path


# =============================================================================================
# Scene cuts


def _cut_features(frame: np.ndarray, side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Small luma image (<= side px on the long side, values in [0, 1]) and a normalised
    8x8x8 RGB histogram (512,) of one uint8 (h, w, 3) frame."""
    h, w = frame.shape[:2]
    step = max(1, min(h, w) // (2 * side))  # cheap stride first for big frames
    x = frame[::step, ::step].astype(np.float32)
    h2, w2 = x.shape[:2]
    k = max(1, math.ceil(max(h2, w2) / side))
    hh, ww = max(k, h2 // k * k), max(k, w2 // k * k)
    if hh > h2 or ww > w2:  # tiny frame: no block averaging
        small = x
    else:
        small = x[:hh, :ww].reshape(hh // k, k, ww // k, k, 3).mean(axis=(1, 3))
    luma = small @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    q = np.clip(small // 32, 0, 7).astype(np.int64)
    idx = (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel()
    hist = np.bincount(idx, minlength=512).astype(np.float32) / idx.size
    return luma, hist


def _cut_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Luma mean absolute difference + histogram total-variation distance, each in [0, 1]."""
    return float(np.abs(a[0] - b[0]).mean() + 0.5 * np.abs(a[1] - b[1]).sum())


def detect_scene_cuts(
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    ratio: float = 3.0,
    min_score: float = 0.15,
    window: int = 4,
    min_scene_len: int = 2,
) -> list[int]:
    """Indices ``i`` where frame ``i`` starts a new shot (the change from ``i-1`` to ``i`` is a
    hard cut).

    Each consecutive pair gets a score: mean absolute difference of downsampled luma plus the
    total-variation distance of 8x8x8 RGB histograms (both in [0, 1]). A pair is a cut when
    its score is at least ``min_score`` and at least ``ratio`` times the median score of the
    ``window`` pairs on each side, so steady fast motion (every pair scores high) is not a
    cut, while a lone spike is. A one-frame flash (frame ``i`` differs from both neighbours,
    which match each other) is not a cut, and cuts closer than ``min_scene_len`` frames keep
    only the first. Gradual transitions (fades, dissolves) are not detected.

    Args:
        frames: uint8 (f, h, w, 3), or any iterable of (h, w, 3) frames (streamed: only small
            per-frame features are kept).

    Returns:
        Sorted frame indices, all >= 1.
    """
    scores: list[float] = []
    skip2: list[float] = []  # score between frames i-2 and i, for the flash test
    prev: tuple[np.ndarray, np.ndarray] | None = None
    prev2: tuple[np.ndarray, np.ndarray] | None = None
    for frame in frames:
        fr = np.asarray(frame)
        if fr.ndim != 3 or fr.shape[-1] != 3:
            raise ValueError(f"each frame must be (h, w, 3), got {fr.shape}")
        feat = _cut_features(fr)
        if prev is not None:
            scores.append(_cut_score(prev, feat))
            skip2.append(_cut_score(prev2, feat) if prev2 is not None else float("nan"))
        prev2, prev = prev, feat
    n = len(scores)  # pair j is frames (j, j + 1)
    if n == 0:
        return []
    s = np.asarray(scores)
    cand: list[int] = []
    for j in range(n):
        neigh = np.concatenate([s[max(0, j - window) : j], s[j + 1 : j + 1 + window]])
        base = float(np.median(neigh)) if neigh.size else 0.0
        if s[j] >= min_score and s[j] >= ratio * base:
            cand.append(j)
    cand_set = set(cand)
    cuts: list[int] = []
    flashes: set[int] = set()
    for j in cand:
        if j in flashes:
            continue
        # flash: pairs j and j+1 both spike, but frames j and j+2 look alike
        if j + 1 in cand_set and j + 1 < len(skip2) and skip2[j + 1] < 0.5 * min(s[j], s[j + 1]):
            flashes.add(j + 1)
            continue
        i = j + 1  # the frame that starts the new shot
        if cuts and i - cuts[-1] < min_scene_len:
            continue
        cuts.append(i)
    return cuts


def stream_segments(
    frames: Iterable[np.ndarray],
    factor: int,
    run: Any,
    *,
    cuts: Iterable[int] = (),
    chunk: int = 9,
    callback: Any = None,
    context: bool = False,
) -> Iterator[np.ndarray]:
    """Frame interpolation of a long video with bounded memory, whatever the interpolator.

    uint8 frames ``(h, w, 3)`` in; ``factor`` times as many out (the last input frame has no
    successor, so f inputs give ``(f-1)*factor+1`` outputs). At most ``chunk`` input frames are
    held at a time and handed to ``run(segment) -> frames``, which maps ``(k, h, w, 3)`` to
    ``((k-1)*factor+1, h, w, 3)`` and keeps the given frames. Scene ``cuts`` (indices of the first
    frame of a new shot) are never blended across: the gap before a cut is filled with copies of
    its two neighbours, half each. ``callback("frames", done, done)`` reports input frames read.

    With ``context``, ``run(segment, before, after)`` also gets the frames just outside the
    segment in the same shot (None at a cut or at an end of the video), so that an interpolator
    can follow motion across segment boundaries; a full segment is then handed over once the
    frame after it has been read (``chunk + 1`` frames held).
    """
    if factor < 1:
        raise UserInputError(f"the interpolation factor must be >= 1, got {factor}")
    if chunk < 2:
        raise UserInputError(f"chunk must be >= 2 frames, got {chunk}")
    cut_set = {int(c) for c in cuts}
    segment: list[np.ndarray] = []
    before: np.ndarray | None = None  # the frame before segment[0] in the same shot
    pending: tuple[list[np.ndarray], np.ndarray | None] | None = None  # a full chunk waiting for its next frame
    index = 0
    emitted_first = False

    def finish(seg: list[np.ndarray], bef: np.ndarray | None, aft: np.ndarray | None) -> np.ndarray:
        if len(seg) == 1:
            return np.stack(seg)
        return run(np.stack(seg), bef, aft) if context else run(np.stack(seg))

    def emit(out: np.ndarray) -> Iterator[np.ndarray]:
        nonlocal emitted_first
        yield from (out[1:] if emitted_first else out)
        emitted_first = True

    for frame in frames:
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise UserInputError(f"frames must be (height, width, 3) RGB; got shape {frame.shape}")
        at_cut = index in cut_set
        if pending is not None:
            yield from emit(finish(*pending, None if at_cut else frame))
            pending = None
        if at_cut and segment:
            yield from emit(finish(segment, before, None))
            last = segment[-1]
            for j in range(factor - 1):  # bridge the cut with copies, never a blend
                yield last if j < (factor - 1) // 2 else frame
            segment, before = [], None
            emitted_first = False  # the new shot's first frame is not shared with the last chunk
        segment.append(frame)
        index += 1
        if len(segment) == chunk:
            if context:
                pending = (segment, before)
            else:
                yield from emit(finish(segment, before, None))
            before = segment[-2]
            segment = [segment[-1]]  # the chunk's last frame starts the next chunk
        if callback is not None:
            callback("frames", index, index)
    if pending is not None:
        yield from emit(finish(*pending, None))
    if segment and (len(segment) > 1 or not emitted_first):
        yield from emit(finish(segment, before, None))
