"""Long videos through any frame interpolator in chunks of bounded memory (no video I/O here)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from mavcli.errors import UserInputError


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
