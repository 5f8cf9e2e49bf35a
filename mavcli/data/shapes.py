"""The "shapes" world: a renderer of captioned toy videos, its captions, and datasets.

The rules of this world live in ``shared/shapes-domain.md``; this module is their single
implementation. Every clip shows exactly one object (circle, square or triangle) of one of six
exact colours on a flat black, white or gray background; the object either moves left, right,
up or down at constant speed, its centre travelling 35-55% of the frame side over the clip, or
stays still. The object is wholly inside the frame in every frame.

Coordinates are normalised: ``(x, y)`` in ``[0, 1]``, ``x`` to the right, ``y`` *down* (image
rows), so "up" means ``y`` decreases. The "centre" of an object is the centre of its bounding
box (for the triangle that is half-way between apex and base, not the centroid).

Anti-aliasing is analytic coverage: a pixel's value is ``bg + alpha * (fg - bg)`` with ``alpha``
the fraction of the pixel the object covers (exact box-filter coverage for the square, the
usual signed-distance estimate ``clip(d + 1/2, 0, 1)`` for the circle and the triangle's edges),
so interior pixels have exactly the palette colour. Against dense (16x16) supersampling the
coverage of an edge pixel is off by 1% on average and at most ~0.1 (at the triangle's
corners), at a fraction of the cost; only a window around the object is computed.

The held-out colour-shape pairs (``HELD_OUT``) never appear in training data: ``sample_spec``
skips them by default, and the dataset classes refuse to be built with them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from mavcli.errors import UserInputError

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "HELD_OUT",
    "SIZE_RANGE",
    "TRAVEL_RANGE",
    "MARGIN",
    "ShapeSpec",
    "sample_spec",
    "render",
    "caption",
    "all_captions",
    "contrast_captions",
    "parse_caption",
    "ShapesVideoDataset",
    "ShapesImageDataset",
]

# ---------------------------------------------------------------------------------------------
# The rules (shared/shapes-domain.md)

#: background name -> exact RGB
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}

#: object colour name -> exact RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 25),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

#: colour-shape pairs that never appear in training data (the composition test set)
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("red", "square"), ("blue", "circle"), ("yellow", "square")}
)

#: object size (circle diameter, square side, triangle side) as a fraction of the frame side
SIZE_RANGE: tuple[float, float] = (0.28, 0.40)
#: distance the object's centre travels over a clip, as a fraction of the frame side
TRAVEL_RANGE: tuple[float, float] = (0.35, 0.55)
#: gap kept between the object and the frame border when sampling (fraction of the side), so
#: that at 64x64 no border pixel is touched even by an anti-aliased edge.
MARGIN: float = 0.02

#: unit direction (dx, dy) of each motion, y pointing down
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}

_SQRT3_2 = math.sqrt(3.0) / 2.0


def _half_extents(shape: str, size: float) -> tuple[float, float]:
    """Half width and half height of the object's bounding box (normalised units)."""
    if shape == "triangle":
        return size / 2.0, size * _SQRT3_2 / 2.0
    return size / 2.0, size / 2.0


# ---------------------------------------------------------------------------------------------
# Spec


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one clip of the shapes world.

    Attributes:
        colour: object colour, a key of ``COLOURS``.
        shape: ``"circle" | "square" | "triangle"``.
        motion: ``"left" | "right" | "up" | "down" | "still"``.
        background: a key of ``BACKGROUNDS``.
        size: circle diameter / square side / triangle side, fraction of the frame side.
        start: ``(x, y)`` of the bounding-box centre in the first frame, normalised, y down.
        travel: distance the centre moves over the whole clip (fraction of the side); 0 for
            ``"still"``.
    """

    colour: str
    shape: str
    motion: str
    background: str
    size: float
    start: tuple[float, float]
    travel: float

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.motion, MOTIONS, "motion"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in allowed:
                raise UserInputError(
                    f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}"
                )
        if not 0.0 < self.size < 1.0:
            raise UserInputError(
                f"size must be a fraction of the frame side in (0, 1), got {self.size}"
            )
        if self.travel < 0.0:
            raise UserInputError(f"travel must be >= 0, got {self.travel}")
        if self.motion == "still" and self.travel != 0.0:
            raise UserInputError("a still object has travel 0")
        if self.motion != "still" and self.travel == 0.0:
            raise UserInputError(f"a {self.motion}-moving object needs travel > 0")
        object.__setattr__(self, "start", (float(self.start[0]), float(self.start[1])))
        hx, hy = _half_extents(self.shape, self.size)
        for x, y in (self.start, self.end):
            if not (hx <= x <= 1.0 - hx and hy <= y <= 1.0 - hy):
                raise UserInputError(
                    f"the {self.shape} would leave the frame: centre ({x:.3f}, {y:.3f}) with "
                    f"half-extents ({hx:.3f}, {hy:.3f}); move the start or shorten the travel"
                )

    @property
    def end(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in the last frame."""
        return self.centre_at(1.0)

    @property
    def half_extents(self) -> tuple[float, float]:
        """Half width and half height of the bounding box, normalised."""
        return _half_extents(self.shape, self.size)

    def centre_at(self, t: float) -> tuple[float, float]:
        """Centre at normalised time ``t`` in [0, 1] (0 = first frame, 1 = last); constant speed."""
        dx, dy = DIRECTIONS[self.motion]
        return (self.start[0] + dx * self.travel * t, self.start[1] + dy * self.travel * t)

    def facts(self) -> dict[str, str]:
        """The four facts a caption states: colour, shape, motion, background."""
        return {
            "colour": self.colour,
            "shape": self.shape,
            "motion": self.motion,
            "background": self.background,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``start`` as a list)."""
        d = asdict(self)
        d["start"] = list(self.start)
        return d

    @property
    def held_out(self) -> bool:
        """Whether the colour-shape pair is one of the held-out pairs."""
        return (self.colour, self.shape) in HELD_OUT


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _subset(given: Iterable[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    if given is None:
        return list(allowed)
    out = list(dict.fromkeys(given))
    unknown = [v for v in out if v not in allowed]
    if unknown:
        raise UserInputError(f"unknown {what} {unknown}; choose from: {', '.join(allowed)}")
    if not out:
        raise UserInputError(f"the list of {what}s is empty")
    return out


def _allowed_pairs(
    colours: Iterable[str] | None,
    shapes: Iterable[str] | None,
    exclude_held_out: bool,
) -> list[tuple[str, str]]:
    cs = _subset(colours, tuple(COLOURS), "colour")
    ss = _subset(shapes, SHAPES, "shape")
    pairs = [(c, s) for c in cs for s in ss if not (exclude_held_out and (c, s) in HELD_OUT)]
    if not pairs:
        raise UserInputError(
            f"no colour-shape pair left from colours {cs} and shapes {ss} once the held-out "
            f"pairs {sorted(HELD_OUT)} are removed"
        )
    return pairs


def sample_spec(
    rng: np.random.Generator | int | None = None,
    *,
    exclude_held_out: bool = True,
    colours: Iterable[str] | None = None,
    shapes: Iterable[str] | None = None,
    motions: Iterable[str] | None = None,
    backgrounds: Iterable[str] | None = None,
    pairs: Iterable[tuple[str, str]] | None = None,
    size_range: tuple[float, float] = SIZE_RANGE,
    travel_range: tuple[float, float] = TRAVEL_RANGE,
) -> ShapeSpec:
    """Draw a random clip description that obeys the rules of the world.

    The colour-shape pair is uniform over the allowed pairs (``colours x shapes``, or ``pairs``,
    minus ``HELD_OUT`` when ``exclude_held_out``); motion, background, size and travel are
    uniform. The start is uniform over the positions from which the whole motion stays at
    least ``MARGIN`` inside the frame.

    Args:
        rng: a numpy Generator, or a seed.
        exclude_held_out: never return a held-out pair (the default; training data).
        colours, shapes, motions, backgrounds: optional subsets to draw from.
        pairs: explicit colour-shape pairs (overrides ``colours``/``shapes``); held-out pairs in
            it are dropped when ``exclude_held_out``.
    """
    rng = _as_rng(rng)
    if pairs is not None:
        plist = [tuple(p) for p in pairs]
        for c, s in plist:
            _subset([c], tuple(COLOURS), "colour")
            _subset([s], SHAPES, "shape")
        plist = [p for p in plist if not (exclude_held_out and p in HELD_OUT)]
        if not plist:
            raise UserInputError("no colour-shape pair left once the held-out pairs are removed")
    else:
        plist = _allowed_pairs(colours, shapes, exclude_held_out)
    ms = _subset(motions, MOTIONS, "motion")
    bs = _subset(backgrounds, tuple(BACKGROUNDS), "background")

    colour, shape = plist[int(rng.integers(len(plist)))]
    motion = ms[int(rng.integers(len(ms)))]
    background = bs[int(rng.integers(len(bs)))]
    size = float(rng.uniform(*size_range))
    travel = 0.0 if motion == "still" else float(rng.uniform(*travel_range))

    hx, hy = _half_extents(shape, size)
    dx, dy = DIRECTIONS[motion]

    def axis_range(half: float, d: int) -> tuple[float, float]:
        # start s such that s and s + d * travel both lie in [half + MARGIN, 1 - half - MARGIN]
        lo, hi = half + MARGIN, 1.0 - half - MARGIN
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        if hi < lo:
            raise UserInputError(
                f"size {size:.3f} with travel {travel:.3f} does not fit in the frame"
            )
        return lo, hi

    x = float(rng.uniform(*axis_range(hx, dx)))
    y = float(rng.uniform(*axis_range(hy, dy)))
    return ShapeSpec(colour, shape, motion, background, size, (x, y), travel)


# ---------------------------------------------------------------------------------------------
# Renderer


def _coverage_1d(lo: np.ndarray, hi: np.ndarray, j0: np.ndarray, m: int) -> np.ndarray:
    """Exact overlap of pixel ``[j, j+1)`` with the interval ``[lo, hi]`` (pixel units), for
    the ``m`` pixels ``j = j0 .. j0 + m - 1``.

    lo, hi, j0: (f,) -> (f, m) in [0, 1].
    """
    j = (j0[:, None] + np.arange(m)[None, :]).astype(np.float32)
    return np.clip(np.minimum(j + 1.0, hi[:, None]) - np.maximum(j, lo[:, None]), 0.0, 1.0)


def _alpha(
    shape: str,
    size_px: float | np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    ox: np.ndarray,
    oy: np.ndarray,
    m: int,
) -> np.ndarray:
    """Coverage of the object in each pixel of an m x m window per frame.

    cx, cy: (f,) bounding-box centres in pixel units; ox, oy: (f,) int window origins (the
    window's first column / row); size_px: the object's size in pixels, one for all frames or
    (f,) -> alpha (f, m, m) float32 in [0, 1].
    """
    if np.ndim(size_px):  # one size per frame
        size_px = np.asarray(size_px, dtype=np.float32)
    if shape == "square":
        h = size_px / 2.0
        ax = _coverage_1d(cx - h, cx + h, ox, m)  # (f, w)
        ay = _coverage_1d(cy - h, cy + h, oy, m)  # (f, h)
        return ay[:, :, None] * ax[:, None, :]
    if np.ndim(size_px):
        size_px = size_px[:, None, None]  # (f, 1, 1) against the window's pixels

    p = np.arange(m, dtype=np.float32) + 0.5  # pixel centres within the window
    px = p[None, None, :] + (ox - cx)[:, None, None]  # (f, 1, w): x relative to the centre
    py = p[None, :, None] + (oy - cy)[:, None, None]  # (f, h, 1)
    if shape == "circle":
        r = size_px / 2.0
        d = r - np.sqrt(px * px + py * py)  # signed distance to the rim, > 0 inside
        return np.clip(d + 0.5, 0.0, 1.0)

    # triangle, apex up, base horizontal at the bottom: three half-planes
    hh = size_px * _SQRT3_2 / 2.0  # half height
    base = np.clip(hh - py + 0.5, 0.0, 1.0)  # inside when py <= hh
    # Slanted edges from the apex A = (0, -hh) to the base corners (+-s/2, hh). The right edge
    # has unit direction (1/2, sqrt3/2) and inward normal (-sqrt3/2, 1/2), so the signed
    # distance of P = (px, py) from it, > 0 inside, is n . (P - A); the left edge mirrors it.
    d_right = -_SQRT3_2 * px + 0.5 * (py + hh)
    d_left = _SQRT3_2 * px + 0.5 * (py + hh)
    right = np.clip(d_right + 0.5, 0.0, 1.0)
    left = np.clip(d_left + 0.5, 0.0, 1.0)
    return base * right * left


def render(
    spec: ShapeSpec,
    frames: int | None = 16,
    size: int = 64,
    *,
    times: Sequence[float] | np.ndarray | None = None,
    scales: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Render a clip of ``spec``.

    Args:
        spec: the clip description.
        frames: number of frames, evenly spaced from the first (t=0) to the last (t=1)
            position; ignored (may be None) when ``times`` is given.
        size: frame side in pixels (frames are square).
        times: optional normalised times in [0, 1] to render instead (e.g. a window or a frame
            skip of a denser clip): frame ``i`` shows the object at ``spec.centre_at(times[i])``.
        scales: optional per-frame multipliers of the object's size, one per frame. Not the
            domain (its sizes are constant over a clip): clips that break that rule, for the
            matcher to learn it (``size_drift``). An object scaled past the frame is cut off.

    Returns:
        uint8 array (f, size, size, 3), RGB.
    """
    if times is None:
        if frames is None or int(frames) < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        frames = int(frames)
        t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    else:
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if t.size == 0:
            raise ValueError("times is empty")
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if t.min() < 0.0 or t.max() > 1.0:
        raise ValueError("times must lie in [0, 1] (the clip's first to last frame)")
    n = int(size)
    f = t.size
    k = 1.0 if scales is None else np.asarray(scales, dtype=np.float32).reshape(-1)
    if scales is not None and (k.size != f or not np.all(k > 0)):
        raise ValueError(f"scales must be {f} positive multipliers, one per frame; got {k.size}")
    dx, dy = DIRECTIONS[spec.motion]
    cx = ((spec.start[0] + dx * spec.travel * t) * n).astype(np.float32)  # (f,)
    cy = ((spec.start[1] + dy * spec.travel * t) * n).astype(np.float32)
    hx, hy = (v * n * float(np.max(k)) for v in spec.half_extents)
    # Coverage is computed only in a window around the object (a 1 px rim beyond its box):
    # the same size m for every frame, so it stays one vectorised computation.
    m = int(math.ceil(2 * max(hx, hy))) + 3
    if m < n:
        ox = np.clip(np.floor(cx - hx).astype(np.int64) - 1, 0, n - m)
        oy = np.clip(np.floor(cy - hy).astype(np.int64) - 1, 0, n - m)
    else:
        m = n
        ox = oy = np.zeros(f, dtype=np.int64)
    alpha = _alpha(spec.shape, spec.size * n * k, cx, cy, ox, oy, m)[..., None]  # (f, m, m, 1)
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    fg = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    patch = np.rint(bg + alpha * (fg - bg)).astype(np.uint8)  # (f, m, m, 3)
    out = np.empty((f, n, n, 3), dtype=np.uint8)
    out[:] = np.asarray(BACKGROUNDS[spec.background], dtype=np.uint8)
    for i in range(f):
        out[i, oy[i] : oy[i] + m, ox[i] : ox[i] + m] = patch[i]
    return out


def size_drift(frames: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Per-frame size multipliers `(frames,)` for `render(scales=...)` that break the domain's
    steady size clearly: a steady growth or shrinking of the side by 20-45% over the clip, or a
    side that jumps by up to +-15% from frame to frame, one frame by 20% more. Either moves the object's area by more
    than the judge's stability threshold (relative std 0.10). The matcher learns from such
    clips that a caption's object keeps its size (`loss_matcher`)."""
    rng = _as_rng(rng)
    x = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    if rng.random() < 0.5:  # drift: 1 -> 1 +- d, centred so the clip's mean size is kept
        d = float(rng.uniform(0.20, 0.45)) * (1.0 if rng.random() < 0.5 else -1.0)
        k = 1.0 + d * (x - 0.5)
    else:  # jitter: every frame's side on its own
        k = 1.0 + rng.uniform(-0.15, 0.15, size=frames)
        k[rng.integers(frames)] += 0.20 * (1.0 if rng.random() < 0.5 else -1.0)  # at least one clear jump
    return k.astype(np.float32)


# the too-small twins' sides: below SIZE_RANGE, down to about the size at which the keyframe
# decoder draws the objects of some held-out pairs (0.21-0.24, docs/evaluation.md)
UNDERSIZE_RANGE: tuple[float, float] = (0.16, 0.25)


def undersize(size: float, frames: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Per-frame size multipliers `(frames,)` for `render(scales=...)` that draw an object of
    side `size` at one steady side below the domain's range (uniform in UNDERSIZE_RANGE). The
    matcher learns from such clips that a caption's object is never that small."""
    rng = _as_rng(rng)
    return np.full(frames, float(rng.uniform(*UNDERSIZE_RANGE)) / size, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Captions

_DIR_WORDS = {
    "left": "to the left",
    "right": "to the right",
    "up": "upwards",
    "down": "downwards",
}

_MOVING_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} moving {d} on a {b} background",  # canonical, keep first
    "a {c} {s} moves {dw} over a {b} background",
    "a {c} {s} sliding {d} across a {b} background",
    "a {c} {s} travelling {dw} against a {b} background",
    "on a {b} background, a {c} {s} moves {d}",
    "a {b} background with a {c} {s} moving {dw}",
    "{c} {s} going {d}, {b} background",
)
_STILL_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} standing still on a {b} background",  # canonical, keep first
    "a motionless {c} {s} on a {b} background",
    "a {c} {s} that stays still over a {b} background",
    "a {c} {s} resting in place against a {b} background",
    "a {b} background with a {c} {s} that does not move",
    "{c} {s} not moving, {b} background",
)


def _fill(template: str, spec: ShapeSpec, background_word: str) -> str:
    return template.format(
        c=spec.colour,
        s=spec.shape,
        d=spec.motion,
        dw=_DIR_WORDS.get(spec.motion, spec.motion),
        b=background_word,
    )


def all_captions(spec: ShapeSpec) -> list[str]:
    """Every wording this module can produce for ``spec``; the first is the canonical one."""
    templates = _STILL_TEMPLATES if spec.motion == "still" else _MOVING_TEMPLATES
    out = [_fill(tpl, spec, spec.background) for tpl in templates]
    if spec.background == "gray":
        out += [_fill(tpl, spec, "grey") for tpl in templates[1:]]
    return out


def caption(
    spec: ShapeSpec,
    rng: np.random.Generator | int | None = None,
    canonical: bool = True,
) -> str:
    """Describe ``spec`` in words.

    Canonical form (always used when ``canonical``):
    ``a {colour} {shape} moving {left|right|up|down} on a {background} background`` or
    ``a {colour} {shape} standing still on a {background} background``.
    With ``canonical=False`` a wording is drawn with ``rng`` from ``all_captions(spec)``
    (which includes the canonical one); pass an rng or seed for reproducible captions.
    """
    options = all_captions(spec)
    if canonical:
        return options[0]
    return options[int(_as_rng(rng).integers(len(options)))]


def contrast_captions(spec: ShapeSpec, rng: np.random.Generator | int | None = None,
                      canonical_prob: float = 0.5) -> list[str]:
    """Captions that are wrong for ``spec`` in exactly one fact: another colour, another shape,
    another background, and each of the other four motions (7 in all, in that order), each in
    a random wording (canonical with ``canonical_prob``). Hard negatives for a matcher of clips
    and captions. Never a held-out colour-shape pair, since they are training data too."""
    rng = _as_rng(rng)

    def other(values, current, ok=lambda v: True):
        options = [v for v in values if v != current and ok(v)]
        return options[int(rng.integers(len(options)))]

    facts = spec.facts()
    changed = [
        {**facts, "colour": other(tuple(COLOURS), spec.colour, lambda c: (c, spec.shape) not in HELD_OUT)},
        {**facts, "shape": other(SHAPES, spec.shape, lambda s: (spec.colour, s) not in HELD_OUT)},
        {**facts, "background": other(tuple(BACKGROUNDS), spec.background)},
        *({**facts, "motion": m} for m in MOTIONS if m != spec.motion),
    ]
    out = []
    for f in changed:
        # the templates read only the four facts
        words = _CaptionFacts(f["colour"], f["shape"], f["motion"], f["background"])
        options = all_captions(words)  # type: ignore[arg-type]
        canonical = rng.random() < canonical_prob
        out.append(options[0] if canonical else options[int(rng.integers(len(options)))])
    return out


@dataclass(frozen=True)
class _CaptionFacts:
    colour: str
    shape: str
    motion: str
    background: str


_MOTION_WORDS: dict[str, str] = {
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "still": "still",
    "motionless": "still",
    "stationary": "still",
    "static": "still",
}
_STILL_PHRASES = ("does not move", "doesn't move", "not moving", "in place", "stays put")
_FACTS = ("colour", "shape", "motion", "background")


def parse_caption(text: str, strict: bool = True) -> dict[str, str | None]:
    """Read the four facts back from a caption (canonical or one of this module's wordings).

    Returns ``{"colour", "shape", "motion", "background"}`` -> name (``None`` for a fact the
    text does not state, only when ``strict`` is False). "grey" is read as "gray".

    Raises:
        UserInputError: the text names two different values of one fact, or (``strict``) leaves
            a fact out; the message gives the canonical form.
    """
    low = text.lower()
    words = re.findall(r"[a-z']+", low)
    words = ["gray" if w == "grey" else w for w in words]

    # background: the word right before "background" when present, else any background word
    bg_found: list[str] = []
    for i, w in enumerate(words):
        if w == "background" and i > 0 and words[i - 1] in BACKGROUNDS:
            bg_found.append(words[i - 1])
    if not bg_found:
        bg_found = [w for w in words if w in BACKGROUNDS]
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    motions = [_MOTION_WORDS[w] for w in words if w in _MOTION_WORDS]
    if any(p in low for p in _STILL_PHRASES):
        motions.append("still")

    found = {"colour": colours, "shape": shapes, "motion": motions, "background": bg_found}
    facts: dict[str, str | None] = {}
    for key in _FACTS:
        distinct = list(dict.fromkeys(found[key]))
        if len(distinct) > 1:
            raise UserInputError(
                f"the prompt {text!r} names more than one {key}: {', '.join(distinct)}; "
                f"one clip shows one object. Canonical form: "
                f"'a red circle moving left on a black background'"
            )
        facts[key] = distinct[0] if distinct else None
    missing = [k for k in _FACTS if facts[k] is None]
    if strict and missing:
        stray_bg = [w for w in words if w in BACKGROUNDS and w != facts["background"]]
        hint = ""
        if facts["colour"] is None and stray_bg:
            hint = f" ({stray_bg[0]} is a background colour, not an object colour)"
        raise UserInputError(
            f"the prompt {text!r} does not state the {', '.join(missing)}{hint}. "
            f"Colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; motions: "
            f"{', '.join(MOTIONS)}; backgrounds: {', '.join(BACKGROUNDS)}. Canonical form: "
            f"'a red circle moving left on a black background' or "
            f"'a red circle standing still on a white background'"
        )
    return facts


# ---------------------------------------------------------------------------------------------
# Datasets


class _ShapesBase:
    """Shared construction and sampling of the two datasets (map-style, generated on the fly)."""

    def __init__(
        self,
        length: int = 100_000,
        *,
        size: int = 64,
        seed: int = 0,
        colours: Iterable[str] | None = None,
        shapes: Iterable[str] | None = None,
        motions: Iterable[str] | None = None,
        backgrounds: Iterable[str] | None = None,
        pairs: Iterable[tuple[str, str]] | None = None,
        exclude_held_out: bool = True,
        canonical_prob: float = 0.5,
        as_tensor: bool = True,
    ) -> None:
        if not exclude_held_out:
            raise UserInputError(
                "training data never contains the held-out colour-shape pairs "
                f"{sorted(HELD_OUT)}; they are kept for testing composition"
            )
        if pairs is not None:
            plist = [tuple(p) for p in pairs]
            bad = sorted(set(plist) & HELD_OUT)
            if bad:
                raise UserInputError(
                    f"the pairs {bad} are held out: they never appear in training data"
                )
            if not plist:
                raise UserInputError("the list of colour-shape pairs is empty")
            self.pairs = plist
        else:
            self.pairs = _allowed_pairs(colours, shapes, exclude_held_out=True)
        self.motions = _subset(motions, MOTIONS, "motion")
        self.backgrounds = _subset(backgrounds, tuple(BACKGROUNDS), "background")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0.0 <= canonical_prob <= 1.0:
            raise ValueError(f"canonical_prob must be in [0, 1], got {canonical_prob}")
        self.length = int(length)
        self.size = int(size)
        self.seed = int(seed)
        self.canonical_prob = float(canonical_prob)
        self.as_tensor = as_tensor

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        return np.random.default_rng([self.seed, int(index)])

    def _draw(self, rng: np.random.Generator) -> tuple[ShapeSpec, str]:
        spec = sample_spec(
            rng,
            pairs=self.pairs,
            motions=self.motions,
            backgrounds=self.backgrounds,
        )
        canonical = bool(rng.random() < self.canonical_prob)
        return spec, caption(spec, rng, canonical=canonical)

    def spec(self, index: int) -> ShapeSpec:
        """The clip description behind item ``index``."""
        return self._draw(self._rng(index))[0]

    @staticmethod
    def _to_unit(frames: np.ndarray) -> np.ndarray:
        """uint8 [0, 255] -> float32 [-1, 1]."""
        return frames.astype(np.float32) / 127.5 - 1.0

    def _maybe_tensor(self, x: np.ndarray) -> Any:
        if not self.as_tensor:
            return x
        import torch  # optional dependency of this module: only needed for tensors

        return torch.from_numpy(np.ascontiguousarray(x))


class ShapesVideoDataset(_ShapesBase):
    """Captioned clips of the shapes world, generated on the fly, deterministic in (seed, index).

    fps conditioning: every spec fixes a constant speed, defined so that ``frames`` frames at
    ``base_fps`` show the whole travel (35-55% of the side, the domain's canonical clip). An
    item draws a rate factor ``k`` from ``rate_factors`` and returns ``frames`` consecutive frames
    of the same motion sampled ``k`` times more densely, i.e. at ``fps = base_fps * k``: a window
    (random offset) of a ``(frames - 1) * k + 1``-frame rendering of the full clip. So the same
    motion appears at different frame rates; per-frame displacement is ``travel / ((frames-1) k)``
    and a clip at ``base_fps`` is exactly the canonical clip that prompts are judged on. Use
    ``rate_factors=(1,)`` for canonical clips only.

    Items are dicts: ``video`` float32 ``(c, f, h, w)`` in [-1, 1] (torch tensor, or numpy with
    ``as_tensor=False``), ``caption`` str, ``fps`` float, ``index`` int. Map-style (``__len__`` +
    ``__getitem__``), so it works with ``torch.utils.data.DataLoader`` as is.
    """

    def __init__(self, length: int = 100_000, *, frames: int = 16, base_fps: float = 8.0,
                 rate_factors: Sequence[int] = (1, 2, 3, 4), **options: Any) -> None:
        """`options`: the colour, shape, motion and background choices of every dataset here
        (`_ShapesBase`: size, seed, colours, shapes, motions, backgrounds, pairs,
        exclude_held_out, canonical_prob, as_tensor)."""
        super().__init__(length, **options)
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        factors = [int(k) for k in rate_factors]
        if not factors or min(factors) < 1:
            raise ValueError(f"rate_factors must be integers >= 1, got {rate_factors}")
        if not base_fps > 0:
            raise ValueError(f"base_fps must be > 0, got {base_fps}")
        self.frames = int(frames)
        self.base_fps = float(base_fps)
        self.rate_factors = factors

    def window(self, index: int) -> tuple[ShapeSpec, str, np.ndarray, float]:
        """(spec, caption, times (f,), fps) of item ``index``."""
        rng = self._rng(index)
        spec, text = self._draw(rng)
        k = self.rate_factors[int(rng.integers(len(self.rate_factors)))]
        dense = (self.frames - 1) * k + 1
        offset = int(rng.integers((self.frames - 1) * (k - 1) + 1))
        idx = offset + np.arange(self.frames)
        times = idx / (dense - 1) if dense > 1 else np.zeros(1)
        return spec, text, times, self.base_fps * k

    def __getitem__(self, index: int) -> dict[str, Any]:
        from einops import rearrange

        spec, text, times, fps = self.window(int(index))
        clip = render(spec, None, self.size, times=times)  # (f, h, w, 3) uint8
        video = rearrange(self._to_unit(clip), "f h w c -> c f h w")
        return {
            "video": self._maybe_tensor(video),
            "caption": text,
            "fps": fps,
            "index": int(index),
        }


class ShapesImageDataset(_ShapesBase):
    """Captioned single frames of the shapes world, for text-to-image (pre-)training.

    Each item is one frame of a clip at a uniformly random time, so the object appears
    anywhere along its path. The caption is the clip's caption (with its motion words), so the
    text side sees exactly the prompt distribution used at inference.

    Items: ``image`` float32 ``(c, h, w)`` in [-1, 1], ``caption`` str, ``index`` int.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        from einops import rearrange

        rng = self._rng(int(index))
        spec, text = self._draw(rng)
        t = float(rng.random())
        frame = render(spec, None, self.size, times=[t])[0]  # (h, w, 3) uint8
        image = rearrange(self._to_unit(frame), "h w c -> c h w")
        return {"image": self._maybe_tensor(image), "caption": text, "index": int(index)}
