"""Shared fixtures: a tiny freshly initialised pack (random weights) saved as a folder."""

import pytest
import torch

from mavcli.models.presets import init_pack
from mavcli.models.text import Tokenizer
from mavcli.weights.pack import save_pack

CAPTIONS = [
    "a red circle moving left on a black background",
    "a blue square moving up on a white background",
    "a green triangle standing still on a gray background",
]


def randomise(module, std=0.05, seed=0):
    """Move every weight off its initial value, so zero-initialised outputs are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(scope="session")
def tiny_pack():
    pack = init_pack(Tokenizer.from_texts(CAPTIONS), "tiny")
    for i, net in enumerate(pack.networks.values()):
        randomise(net, seed=i)
    return pack


@pytest.fixture(scope="session")
def tiny_pack_dir(tiny_pack, tmp_path_factory):
    return save_pack(tmp_path_factory.mktemp("packs") / "tiny", tiny_pack, dtype=None)


@pytest.fixture
def unhashed_pack(tiny_pack_dir, tmp_path):
    """A copy of the tiny pack whose pack.json records no sha256 (as packs from before hashes)."""
    import json
    import shutil

    folder = tmp_path / "unhashed-pack"
    shutil.copytree(tiny_pack_dir, folder)
    index = json.loads((folder / "pack.json").read_text())
    index.pop("sha256")
    (folder / "pack.json").write_text(json.dumps(index))
    return folder
