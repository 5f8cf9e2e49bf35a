"""Writing, atomically: ffmpeg encoders (mp4, webm, gif), PNG frame folders, sidecar metadata, audio copy."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mavcli.errors import MavError, UserInputError
from mavcli.video.encoding import Encoding, EncoderChoice, choose_encoder
from mavcli.video.common import (
    MUXER,
    WRITE_FORMATS,
    _SUFFIX_FORMAT,
    _FOLDER_INFO,
    _SIZE_KEY,
    _ffmpeg_exe,
    _ffmpeg_header,
    _header_reason,
    _fps_arg,
    _stderr_tail,
)

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
        f"cannot write {suffix} files ({path}); use a name ending in .mp4, .mov, .mkv, .webm or .gif, or "
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




class _FfmpegBackend:
    """Raw RGB frames piped into one ffmpeg process that encodes ``tmp`` (internal)."""

    def __init__(
        self, tmp: Path, fmt: str, width: int, height: int, fps: float, comment: str | None,
        choice: EncoderChoice,
    ) -> None:
        half_w, half_h = choice.pad  # 4:2:0 / 4:2:2 H.264 needs even sizes: pad in write()
        enc_w, enc_h = width + (width % 2 if half_w else 0), height + (height % 2 if half_h else 0)
        self.width, self.height, self.enc_w, self.enc_h = width, height, enc_w, enc_h
        cmd = [
            _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{enc_w}x{enc_h}",
            "-r", _fps_arg(fps), "-i", "-", "-an",
        ]  # fmt: skip
        cmd += list(choice.args)
        if fmt in ("mp4", "mov"):
            cmd += ["-movflags", "+faststart"]
        elif fmt == "gif":
            # one palette for the whole clip (no per-frame palette flicker), error diffusion
            palette = (
                "split[a][b];[a]palettegen=stats_mode=full[p];"
                "[b][p]paletteuse=dither=sierra2_4a"
            )
            cmd += ["-filter_complex", palette, "-loop", "0"]
        if comment is not None and fmt != "gif":
            cmd += ["-metadata", f"comment={comment}"]
        cmd += ["-f", MUXER[fmt], str(tmp)]
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


def _disk_full(error: BaseException, path: Path) -> MavError | None:
    """What to report when `error` means the disk holding `path` filled up (ENOSPC or a quota
    from Python, or ffmpeg saying so); None for any other error. Called once the partial output
    is removed, so the free space it names is what the user has to work with."""
    from mavcli.runtime import disk_free, is_disk_full, size_text

    if not is_disk_full(error):
        return None
    try:
        free = size_text(disk_free(path.parent))
    except OSError:
        free = "too little"
    return MavError(f"the disk holding {path.parent} filled up while {path.name} was written; nothing was kept, "
                    f"and {free} is free there. Free some space or write it to another disk")


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
        path: target file (.mp4, .mov, .mkv, .webm, .gif) or folder (no suffix, or ``format="png"``).
        fps: frames per second (> 0).
        format: one of ``WRITE_FORMATS``; default from the suffix.
        metadata: JSON-able dict: sidecar ``sidecar_path(path)`` and, except for gif, the
            container ``comment``.
        audio_from: a file whose audio streams (all of them) and subtitle streams are muxed in
            (not for gif or png); a source without audio gives a video without audio. Subtitles
            the container cannot hold are left out, with a line in ``notes``.
        audio_tempo: play the audio this much faster (0.5 for a 2x slow motion: ffmpeg's
            atempo, pitch kept), re-encoding it.
        encoding: codec, quality, pixel format, colour tags (``Encoding``; default: the
            container's defaults). ``source_pix_fmt``: the input's pixel format, kept when the
            codec can store it.
        overwrite: replace an existing target (else ``UserInputError``).

    ``notes``: what was changed or left out on the way (for the caller to show).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        format: str | None = None,
        metadata: dict[str, Any] | None = None,
        audio_from: str | os.PathLike[str] | None = None,
        audio_tempo: float | None = None,
        encoding: Encoding | None = None,
        source_pix_fmt: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.format = _resolve_format(self.path, format)
        self.notes: list[str] = []
        if self.format == "png":
            if encoding is not None and encoding != Encoding() and encoding != Encoding(lossless=True):
                raise UserInputError("a folder of PNG frames is lossless; it takes no --codec, --crf or --pix-fmt")
            self.choice = None
        else:
            self.choice = choose_encoder(self.format, encoding or Encoding(), source_pix_fmt)
        if audio_tempo is not None and not (0.01 <= audio_tempo <= 100):
            raise UserInputError(f"audio tempo must be in [0.01, 100]; got {audio_tempo}")
        self.audio_tempo = audio_tempo
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
            if self.format in ("gif", "png"):
                raise UserInputError(f"{self.format} output cannot hold audio; choose mp4, mov, mkv or webm")
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
        assert self.choice is not None
        half_w, half_h = self.choice.pad
        if (half_w and w % 2) or (half_h and h % 2):
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
                assert self.choice is not None
                self._backend = _FfmpegBackend(
                    self._tmp, self.format, w, h, self.fps, self._comment(), self.choice
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
        except BaseException as e:
            self.abort()
            full = _disk_full(e, self.path)
            if full is not None:
                raise full from e
            raise

    def _mux_audio(self) -> None:
        """Add the audio (every stream) and subtitles of ``audio_from`` to the encoded video
        (second ffmpeg pass: the video stream is copied)."""
        assert self.audio_from is not None
        header = _ffmpeg_header(self.audio_from)
        if "Input #0" not in header:
            raise UserInputError(f"cannot read audio from {self.audio_from} ({_header_reason(header)})")
        acodecs = re.findall(r"Stream #\d+:\d+.*: Audio: ([A-Za-z0-9_]+)", header)
        has_subs = re.search(r"Stream #\d+:\d+.*: Subtitle: ", header) is not None
        if not acodecs and not has_subs:
            return  # nothing to keep: the video stays silent
        copyable = {
            "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
            "mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"},
            "webm": {"opus", "vorbis"},
        }
        reencode = {"mp4": "aac", "mov": "aac", "webm": "libopus", "mkv": "flac"}[self.format]
        audio_args: list[str] = []
        if acodecs:
            audio_args = ["-map", "1:a"]
            if self.audio_tempo is not None:
                audio_args += ["-c:a", reencode, "-filter:a", _atempo(self.audio_tempo)]
            elif self.format == "mkv" or all(c.lower() in copyable[self.format] for c in acodecs):
                audio_args += ["-c:a", "copy"]  # the audio streams unchanged
            else:  # the container cannot hold this codec: re-encode
                audio_args += ["-c:a", reencode]
        sub_codec = {"mkv": "copy", "mp4": "mov_text", "mov": "mov_text", "webm": "webvtt"}[self.format]
        attempts = [["-map", "1:s", "-c:s", sub_codec]] if has_subs else []
        attempts.append([])
        for i, subs in enumerate(attempts):
            cmd = [
                _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-i", str(self._tmp), "-i", str(self.audio_from),
                "-map", "0:v:0", "-c:v", "copy", *audio_args, *subs,
                # cut the audio at the video's end (never the video at the audio's)
                "-t", f"{self.frames_written / self.fps:.6f}", "-map_metadata", "0",
            ]  # fmt: skip
            if self.format in ("mp4", "mov"):
                cmd += ["-movflags", "+faststart"]
            cmd += ["-f", MUXER[self.format], str(self._tmp_audio)]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
            if proc.returncode == 0:
                if has_subs and not subs:
                    self.notes.append(f"the subtitles of {self.audio_from.name} cannot go into {self.format}; left out")
                break
            err = proc.stderr.decode("utf-8", errors="replace")[-2000:].strip()
            if i == len(attempts) - 1:
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
        except BaseException as e:
            self.abort()
            full = _disk_full(e, self.path)
            if full is not None:
                raise full from e
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


def _atempo(tempo: float) -> str:
    """An ffmpeg audio filter that plays `tempo` times as fast, as a chain of atempo steps
    inside the 0.5..2 range every ffmpeg build accepts."""
    steps = []
    while tempo < 0.5:
        steps.append(0.5)
        tempo /= 0.5
    while tempo > 2.0:
        steps.append(2.0)
        tempo /= 2.0
    steps.append(tempo)
    return ",".join(f"atempo={s:.6g}" for s in steps)


def write_video(
    path: str | os.PathLike[str],
    frames: Any,
    fps: float,
    *,
    format: str | None = None,
    metadata: dict[str, Any] | None = None,
    audio_from: str | os.PathLike[str] | None = None,
    encoding: Encoding | None = None,
    overwrite: bool = False,
) -> Path:
    """Write uint8 frames (f, h, w, 3) to ``path`` atomically; see ``VideoWriter``.

    Returns:
        The written path.
    """
    x = _as_frames(frames)
    with VideoWriter(
        path, fps, format=format, metadata=metadata, audio_from=audio_from, encoding=encoding,
        overwrite=overwrite,
    ) as w:
        w.append(x)
    return w.path


