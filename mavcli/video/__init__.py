"""Read and write videos (numpy uint8 frames) with imageio-ffmpeg; detect scene cuts.

Reading goes through the ffmpeg binary that imageio-ffmpeg ships, so anything ffmpeg decodes
works (mp4, mov, mkv, webm, avi, gif, ...), plus folders of PNG/JPEG frames. Frames are RGB
uint8 arrays ``(f, h, w, 3)``; ``iter_video_frames`` streams ``(h, w, 3)`` frames so a long
video never has to fit in memory.

Writing is atomic: frames go to a hidden temporary file beside the target
(``.{stem}.partial{suffix}``, or a ``.{name}.partial`` folder for PNG frames) that replaces the
target with ``os.replace`` only once complete; on any exception, KeyboardInterrupt included,
the temporary file is removed. An existing target is only replaced with ``overwrite=True``.

Formats written (``mavcli.video.encoding`` holds the codec choices and defaults):

- ``mp4``, ``mov``, ``mkv``: H.264 by default (libx264, CRF 12, yuv420p or the input's pixel
  format, +faststart), or libx265, libvpx-vp9 (mp4, mkv), ProRes (mov, mkv), FFV1 (mkv).
  H.264/H.265 at 4:2:0 need an even width and height: an odd-sized frame is padded by
  repeating its last column / row and the true size is recorded in the ``comment`` metadata,
  so ``read_video`` returns exactly the size written (other players show the extra line).
- ``webm``: VP9 (CRF 20); odd sizes are stored as they are.
- ``lossless`` (any container but gif): RGB stored exactly (libx264rgb -qp 0, FFV1, lossless
  x265 / VP9); what is read back equals what was written.
- ``gif``: ffmpeg with a palette computed over the whole clip (palettegen/paletteuse). GIF
  stores frame delays in 1/100 s, so an fps whose period is not a whole number of
  centiseconds (8 fps = 12.5 cs) plays at a slightly different rate: 10, 20, 25 and 50 fps are
  exact.
- ``png``: a folder of ``frame_000000.png``... plus ``video.json`` (fps, size, metadata),
  lossless; chosen for a path without a suffix or ``format="png"``.

``metadata`` is written to a sidecar JSON (``sidecar_path``: ``out.mp4`` -> ``out.mp4.json``)
and, except for gif, embedded as the container's ``comment`` (JSON text). ``audio_from`` copies
every audio stream and the subtitles of another file (stream copy when the container allows the
codec, else AAC for mp4/mov, Opus for webm, FLAC for mkv).
"""

from mavcli.video.common import DEFAULT_FPS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, WRITE_FORMATS, exact_rate
from mavcli.video.encoding import Colour, Encoding
from mavcli.video.cuts import detect_scene_cuts
from mavcli.video.read import FrameTimes, VideoClip, VideoInfo, frame_times, iter_video_frames, probe_video, read_video
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
    "frame_times",
    "exact_rate",
    "FrameTimes",
    "Encoding",
    "Colour",
    "VIDEO_SUFFIXES",
    "DEFAULT_FPS",
    "WRITE_FORMATS",
    "IMAGE_SUFFIXES",
]
