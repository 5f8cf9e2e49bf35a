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

from mavcli.video.common import DEFAULT_FPS, IMAGE_SUFFIXES, WRITE_FORMATS
from mavcli.video.cuts import detect_scene_cuts
from mavcli.video.read import VideoClip, VideoInfo, iter_video_frames, probe_video, read_video
from mavcli.video.write import VideoWriter, sidecar_path, write_video

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
    "DEFAULT_FPS",
    "WRITE_FORMATS",
    "IMAGE_SUFFIXES",
]
