"""Open a pack for a command: a folder, a bundled pack, or one fetched from the Hub on first
use (with download progress), then the pipeline on the chosen device."""

from __future__ import annotations

from pathlib import Path


def open_pipeline(pack: str | None, device: str):
    from mavcli.cli.download import RichDownloadProgress
    from mavcli.pipeline import MakeAVideoPipeline
    from mavcli.weights.resolve import resolve_pack

    if pack is not None and Path(pack).is_dir():
        path = Path(pack)
    else:
        with RichDownloadProgress() as progress:
            path = resolve_pack(pack, allow_download=True, progress=progress)
    return MakeAVideoPipeline.from_pretrained(path, device=device)
