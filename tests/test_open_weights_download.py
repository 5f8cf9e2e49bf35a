"""Downloading a latent video pack (kind = "diffusers") from the stand-in Hub on 127.0.0.1:
a fresh download verified against the hashes the Hub reports, a cached re-run with no
transfer, a corrupted transfer, offline with a cold cache, and generation from the download."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hub_server import StandInHub, small_disk  # noqa: E402
from open_weights_fixture import build_reference  # noqa: E402

REPO = "vilab/tiny-t2v"
TIMEOUT = 120


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("tiny-t2v")
    build_reference(folder, seed=1)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pack_table(name: str, repo: str, revision: str, files: dict[str, bytes], unpinned: str | None = None) -> list[str]:
    lines = [f"[packs.{name}]", f'repo = "{repo}"', f'revision = "{revision}"', 'kind = "diffusers"',
             'licence = "cc-by-nc-4.0"', 'description = "test"'] + ([f'unpinned = "{unpinned}"'] if unpinned else [])
    for path in files:
        lines += [f"[[packs.{name}.files]]", f'path = "{path}"', 'sha256 = "hub"']
    return lines


def manifest(revision: str, files: dict[str, bytes], unpinned: str | None = None,
             more: list[str] | None = None) -> str:
    lines = ['default = "shapes"', "[packs.shapes]", 'bundled = "shapes"']
    return "\n".join(lines + pack_table("tiny-t2v", REPO, revision, files, unpinned) + (more or [])) + "\n"


def run(tmp: Path, hub: StandInHub, *args: str, offline: bool = False,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               NO_PROXY="127.0.0.1,localhost", COLUMNS="400")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "mavcli", *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp)


@pytest.fixture
def setup(tmp_path, repo_files):
    with StandInHub() as hub:
        sha = hub.add_repo(REPO, repo_files)
        (tmp_path / "weights.toml").write_text(manifest(sha, repo_files))
        yield hub, tmp_path, sha


def test_download_verifies_against_the_hub_and_records(setup, repo_files):
    hub, tmp, sha = setup
    done = run(tmp, hub, "download", "weights", "tiny-t2v", "--manifest", str(tmp / "weights.toml"))
    assert done.returncode == 0, done.stderr
    assert "licence cc-by-nc-4.0" in done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    for path, content in repo_files.items():
        assert (folder / path).read_bytes() == content
    record = json.loads((folder.parent.parent / "mavcli-verified" / f"{sha}.json").read_text())
    import hashlib

    assert record == {p: hashlib.sha256(c).hexdigest() for p, c in repo_files.items()}
    # a cached re-run transfers nothing
    before = len(hub.requests_for("unet/diffusion_pytorch_model.safetensors", "GET"))
    again = run(tmp, hub, "download", "weights", "tiny-t2v", "--manifest", str(tmp / "weights.toml"))
    assert again.returncode == 0, again.stderr
    assert len(hub.requests_for("unet/diffusion_pytorch_model.safetensors", "GET")) == before
    # a byte changed in the cache after verification is caught on the next load
    blob = (folder / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    from mavcli.weights.hub import find_cached_pack
    from mavcli.weights.manifest import load_manifest

    entry = load_manifest(tmp / "weights.toml").packs["tiny-t2v"]
    state = find_cached_pack(entry, cache_dir=tmp / "hf" / "hub")
    assert state.removed == ("unet/diffusion_pytorch_model.safetensors",) and not state.complete


def test_corrupt_transfer_is_refused_and_deleted(setup):
    hub, tmp, _ = setup
    hub.corrupt(REPO, "vae/diffusion_pytorch_model.safetensors")  # every time: the retry fails too
    done = run(tmp, hub, "download", "weights", "tiny-t2v", "--manifest", str(tmp / "weights.toml"))
    assert done.returncode == 1
    assert "vae/diffusion_pytorch_model.safetensors" in done.stderr and "failed verification twice" in done.stderr
    cached = list((tmp / "hf").rglob("vae/diffusion_pytorch_model.safetensors"))
    assert not any(p.exists() for p in cached)


def test_sizes_the_manifest_leaves_out_are_asked_of_the_hub_before_a_download(setup):
    """Zeroscope's files have no published sizes: the disk check asks the Hub for them (metadata
    requests only) and refuses a download that would not fit, before any transfer."""
    hub, tmp, _ = setup
    done = run(tmp, hub, "download", "weights", "tiny-t2v", "--manifest", str(tmp / "weights.toml"),
               extra_env=small_disk(tmp, 100 * 2**20))
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and re.search(r"needs \d+ [kM]B more", text) and "105 MB free" in text, text
    assert hub.requests_for("unet/diffusion_pytorch_model.safetensors", "HEAD")
    assert not [r for r in hub.requests if r.method == "GET"]


def test_offline_cold_cache_names_the_command(setup):
    hub, tmp, _ = setup
    done = run(tmp, hub, "generate", "a red fox", "--pack", "tiny-t2v", "--manifest", str(tmp / "weights.toml"),
               offline=True)
    assert done.returncode == 2
    assert "mav download weights tiny-t2v" in " ".join(done.stderr.split())
    assert not list(tmp.glob("*.mp4"))


def test_generate_downloads_with_flag_then_runs(setup):
    hub, tmp, _ = setup
    done = run(tmp, hub, "generate", "a red fox", "--pack", "tiny-t2v", "--manifest", str(tmp / "weights.toml"),
               "--download", "--steps", "2",
               "--frames", "2", "--interp-factor", "1", "--seed", "0", "--out", "fox.mp4")
    assert done.returncode == 0, done.stderr
    assert (tmp / "fox.mp4").stat().st_size > 0


def weight_gets(hub: StandInHub) -> list:
    return [r for r in hub.requests if r.path.endswith(".safetensors") and r.method == "GET"]


def test_generate_checks_the_request_before_downloading_weights(setup, tmp_path):
    """Every check that can fail runs before a weight file is transferred: the options, the
    output path, the optional libraries, and memory (from the configs, fetched first)."""
    hub, tmp, _ = setup
    base = ["generate", "a red fox", "--pack", "tiny-t2v", "--manifest", str(tmp / "weights.toml"), "--download"]
    bad_stage = run(tmp, hub, *base, "--stage-steps", "prior=3")
    assert bad_stage.returncode == 2 and "prior" in bad_stage.stderr
    assert hub.request_count() == 0
    (tmp / "fox.mp4").write_bytes(b"keep")
    exists = run(tmp, hub, *base, "--out", "fox.mp4")
    assert exists.returncode == 2 and "--overwrite" in exists.stderr and hub.request_count() == 0
    # an install without the open-weights extra: told so, nothing fetched
    blocker = tmp_path / "blocker"
    (blocker / "diffusers").mkdir(parents=True)
    (blocker / "diffusers" / "__init__.py").write_text("raise ImportError('not installed')\n")
    no_extra = run(tmp, hub, *base, extra_env={"PYTHONPATH": str(blocker)})
    assert no_extra.returncode == 2 and "mavcli[open-weights]" in " ".join(no_extra.stderr.split())
    assert hub.request_count() == 0
    # 2000 frames of 256x256 need hundreds of GiB: refused after the configs, before any weights
    huge = run(tmp, hub, *base, "--frames", "2000", "--height", "256", "--width", "256", "--device", "cpu",
               "--precision", "float32")
    text = " ".join(huge.stderr.split())
    assert huge.returncode == 2 and "2000 frames of 256x256" in text and "GiB of memory" in text, huge.stderr
    assert hub.requests_for("unet/config.json", "GET") and not weight_gets(hub)
    assert (tmp / "fox.mp4").read_bytes() == b"keep"


def test_download_flag_fetches_the_upscaler_too(tmp_path, repo_files):
    """`--download --upscale PACK` fetches both packs, the README's Zeroscope recipe."""
    with StandInHub() as hub:
        sha = hub.add_repo(REPO, repo_files)
        up_sha = hub.add_repo("vilab/tiny-up", repo_files)
        (tmp_path / "weights.toml").write_text(
            manifest(sha, repo_files, more=pack_table("tiny-up", "vilab/tiny-up", up_sha, repo_files)))
        done = run(tmp_path, hub, "generate", "a red fox", "--pack", "tiny-t2v", "--manifest",
                   str(tmp_path / "weights.toml"), "--download", "--upscale", "tiny-up", "--upscale-size", "64x64",
                   "--steps", "2", "--frames", "2", "--interp-factor", "1", "--seed", "0", "--out", "fox.mp4")
        assert done.returncode == 0, done.stderr
        assert len([r for r in weight_gets(hub) if r.repo == "vilab/tiny-up"]) == 3
        assert (tmp_path / "fox.mp4").stat().st_size > 0


def test_a_pull_request_ref_downloads_with_a_warning_and_records_its_commit(tmp_path, repo_files):
    """A pack whose safetensors live only in a Hub conversion PR (Zeroscope): the ref is fetched,
    the user is told it is not pinned, and the hashes the Hub reports are recorded and checked."""
    import hashlib

    with StandInHub() as hub:
        hub.add_repo(REPO, {"model_index.json": b"{}", "unet/x.bin": b"pickle"})  # main: pickles only
        sha = hub.add_repo(REPO, repo_files, branch="refs/pr/7")
        (tmp_path / "weights.toml").write_text(manifest("refs/pr/7", repo_files, unpinned="hash unknown"))
        done = run(tmp_path, hub, "download", "weights", "tiny-t2v", "--manifest", str(tmp_path / "weights.toml"))
        assert done.returncode == 0, done.stderr
        err = " ".join(done.stderr.split())
        assert "refs/pr/7 is not pinned to a commit (hash unknown)" in err
        folder = Path(done.stdout.strip().splitlines()[-1])
        assert folder.name == sha  # the snapshot of the commit the ref pointed at
        for path, content in repo_files.items():
            assert (folder / path).read_bytes() == content
        record = json.loads((folder.parent.parent / "mavcli-verified" / "refs" / "pr" / "7.json").read_text())
        assert record == {p: hashlib.sha256(c).hexdigest() for p, c in repo_files.items()}
        packs = run(tmp_path, hub, "packs", "--manifest", str(tmp_path / "weights.toml"))
        assert packs.returncode == 0 and "cached" in packs.stdout + packs.stderr
