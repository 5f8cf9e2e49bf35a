"""mavcli: Make-A-Video (Singer et al. 2022, arXiv 2209.14792) as a library and a command-line tool.

Public API only. Importing this package is cheap and has no side effects: torch and the
networks load on first attribute access.

    from mavcli import Pseudo3DConv, SpatioTemporalAttention   # the seed's layer API
    from mavcli import SpaceTimeUnet, MakeAVideoPipeline
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    "Pseudo3DConv": "mavcli.nn.conv",
    "SpatioTemporalAttention": "mavcli.nn.attention",
    "Attention": "mavcli.nn.attention",
    "LearnedTemporalEMA": "mavcli.nn.ema",
    "SpaceTimeUnet": "mavcli.models.unet",
    "UnetConfig": "mavcli.models.unet",
    "inflate_unet": "mavcli.models.unet",
    "MakeAVideoPipeline": "mavcli.pipeline",
    "VideoOutput": "mavcli.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mavcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
