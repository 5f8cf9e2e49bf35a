"""Real data for `mav train` (Make-A-Video section 3.5: image-text pairs teach appearance and
language; unlabelled video teaches motion).

- `ImageCaptionFolder`: every image (png, jpg, jpeg, webp, bmp) with a same-named `.txt`
  caption beside it; an image without its caption is an error that names it.
- `VideoFolder`: videos (mp4, webm, gif, mov, mkv) without captions; an item is a random clip
  of `frames` frames sampled at a random frame rate in `fps_range` (the paper samples 1-30 fps),
  returned with that fps so the network learns fps conditioning.

Items are deterministic in (seed, index) and use the same keys as the shapes datasets:
images `(c, h, w)` / videos `(c, f, h, w)` float in [-1, 1], center-cropped to squares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mavcli.errors import UserInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
from mavcli.video.common import VIDEO_SUFFIXES  # noqa: F401 (also imported from here by data.motion)


def _square(frames: np.ndarray, size: int) -> np.ndarray:
    """Center-crop `(..., h, w, 3)` uint8 to a square and resize to `size` (area / bilinear)."""
    import torch
    import torch.nn.functional as F

    h, w = frames.shape[-3:-1]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = frames[..., y:y + side, x:x + side, :]
    t = torch.from_numpy(np.ascontiguousarray(crop)).float()
    t = t.reshape(-1, side, side, 3).permute(0, 3, 1, 2)
    mode = "area" if side > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    t = F.interpolate(t, size=(size, size), mode=mode, **kwargs)
    return (t / 127.5 - 1.0).numpy()  # (n, 3, size, size)


class ImageCaptionFolder:
    """Map-style dataset of captioned images; `length` items cycle over the files."""

    def __init__(self, root: str | Path, *, size: int, seed: int = 0, length: int = 2**62) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserInputError(f"image folder {root} does not exist")
        self.images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise UserInputError(f"{root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) with captions")
        missing = [p for p in self.images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise UserInputError(
                f"{len(missing)} image(s) in {root} have no caption file, e.g. {missing[0].name}: "
                f"add {missing[0].with_suffix('.txt').name} with its caption"
            )
        self.size, self.seed, self.length = size, seed, length

    def __len__(self) -> int:
        return self.length

    def captions(self) -> list[str]:
        return [p.with_suffix(".txt").read_text().strip() for p in self.images]

    def __getitem__(self, index: int) -> dict:
        import torch

        from mavcli.video.read import read_image

        order = np.random.default_rng([self.seed, index // len(self.images)]).permutation(len(self.images))
        path = self.images[order[index % len(self.images)]]
        image = read_image(path)
        return {"image": torch.from_numpy(_square(image, self.size)[0]),
                "caption": path.with_suffix(".txt").read_text().strip(), "index": index}


def video_files(root: str | Path) -> list[Path]:
    """The video files below the folder `root` (UserInputError when it is missing or has none)."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"video folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise UserInputError(f"{root} has no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return paths


class VideoFolder:
    """Map-style dataset of random clips from uncaptioned videos at random frame rates."""

    def __init__(self, root: str | Path, *, frames: int, size: int, fps_range: tuple[float, float] = (1.0, 30.0),
                 seed: int = 0, length: int = 2**62) -> None:
        from mavcli.video import probe_video

        lo, hi = fps_range
        if not 0 < lo <= hi:
            raise UserInputError(f"fps range must satisfy 0 < low <= high, got {fps_range}")
        self.videos = []
        #: (file, why) for each video left out: unreadable, or fewer than 2 frames
        self.skipped: list[tuple[Path, str]] = []
        for p in video_files(root):
            try:
                info = probe_video(p)
            except UserInputError as err:
                self.skipped.append((p, str(err)))
                continue
            if info.num_frames < 2:
                self.skipped.append((p, f"{p.name} has {info.num_frames} frame"))
            else:
                self.videos.append((p, info))
        if not self.videos:
            raise UserInputError(f"no video in {root} can be trained on: {self.skipped[0][1]}")
        self.frames, self.size, self.fps_range, self.seed, self.length = frames, size, fps_range, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        import torch

        from mavcli.video import read_video

        rng = np.random.default_rng([self.seed, index])
        path, info = self.videos[int(rng.integers(len(self.videos)))]
        # the clip's rate: at most the source's own (frames are never invented here)
        fps = float(rng.uniform(self.fps_range[0], min(self.fps_range[1], info.fps)))
        step = info.fps / fps
        span = int(np.ceil(step * (self.frames - 1))) + 1
        estimate = info.num_frames or span
        start = int(rng.integers(max(1, estimate - span + 1)))
        clip = read_video(path, max_frames=start + span)  # decodes only up to the clip's end
        total = clip.frames.shape[0]
        if total < 2:
            raise UserInputError(f"{path} has fewer than 2 frames")
        start = min(start, max(0, total - span))
        idx = np.minimum(np.round(start + step * np.arange(self.frames)).astype(int), total - 1)
        video = _square(clip.frames[idx], self.size)  # (f, 3, s, s)
        return {"video": torch.from_numpy(np.ascontiguousarray(video.transpose(1, 0, 2, 3))), "fps": fps, "index": index}
