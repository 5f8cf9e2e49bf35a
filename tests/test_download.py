"""`mav download weights`, pack resolution and `mav info` against a stand-in Hub on 127.0.0.1.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is first imported, so
every download runs the real CLI in a subprocess (`python -m mavcli ...`) with its own
environment, against `tests/hub_server.py` on loopback. Commands that need no network run
in-process through Typer's CliRunner; library functions that only read the cache run
in-process with an explicit `cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mavcli
from mavcli.cli.app import app
from mavcli.errors import PackError, UserInputError
from mavcli.weights import resolve as resolve_module
from mavcli.weights.hub import pack_files_from_index
from mavcli.weights.integrity import safetensors_problem
from mavcli.weights.manifest import load_manifest
from mavcli.weights.resolve import list_packs, resolve_pack

try:
    from hub_server import StandInHub, small_disk
except ImportError:  # tests/ imported as a package
    from tests.hub_server import StandInHub, small_disk

REPO = "mavcli/tiny"
TIMEOUT = 60  # seconds per subprocess; a hung download must fail the test, not the suite


# --------------------------------------------------------------------------------------
# a tiny pack


def safetensors_bytes(tensors: dict[str, list[float]], metadata: dict[str, str]) -> bytes:
    """A float32 safetensors file written by hand (8-byte header length, JSON, data)."""
    header: dict[str, object] = {"__metadata__": metadata}
    data = b""
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def tiny_pack_files() -> dict[str, bytes]:
    # the index as mavcli.weights.pack writes it: stage -> file
    index = {"format": "mavcli-pack", "version": 1,
             "stages": {"prior": "prior.safetensors", "keyframe": "keyframe.safetensors"}}
    return {
        "pack.json": json.dumps(index).encode(),
        "prior.safetensors": safetensors_bytes({"w": [0.5] * 64}, {"config": '{"dim": 8}'}),
        # 64 KiB, so a dropped connection really is mid-file
        "keyframe.safetensors": safetensors_bytes(
            {"a": [float(i) for i in range(8192)], "b": [1.0] * 8192}, {"config": '{"dim": 16}'}
        ),
        "tokenizer.json": b'{"vocab": ["a", "red", "circle"]}',
        "README.md": b"# tiny\nA test pack.\n",
    }


def manifest_toml(name: str, repo: str, revision: str, files: dict[str, bytes], default: bool = True) -> str:
    lines = [f'default = "{name}"'] if default else []
    lines += [f"[packs.{name}]", f'repo = "{repo}"', f'revision = "{revision}"', 'description = "test pack"']
    for path, content in files.items():
        lines += [
            f"[[packs.{name}.files]]",
            f'path = "{path}"',
            f'sha256 = "{hashlib.sha256(content).hexdigest()}"',
            f"size = {len(content)}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Env:
    """One test's stand-in Hub, HF_HOME and manifest."""

    hub: StandInHub
    home: Path
    manifest: Path
    sha: str
    files: dict[str, bytes]
    tmp: Path

    @property
    def cache(self) -> Path:
        return self.home / "hub"

    @property
    def repo_cache(self) -> Path:
        return self.cache / "models--mavcli--tiny"

    @property
    def snapshot(self) -> Path:
        return self.repo_cache / "snapshots" / self.sha

    def mav(self, *args: str, offline: bool = False, manifest: bool = True,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `python -m mavcli ARGS` against the stand-in Hub."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
        env.update(
            HF_ENDPOINT=self.hub.url,
            HF_HOME=str(self.home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            NO_PROXY="127.0.0.1,localhost",
            COLUMNS="400",  # rich wraps messages at the terminal width; keep them on one line
        )
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        env.update(extra_env or {})
        extra = ["--manifest", str(self.manifest)] if manifest else []
        return subprocess.run(
            [sys.executable, "-m", "mavcli", *args, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.tmp,
        )


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def hub() -> StandInHub:
    with StandInHub() as server:
        yield server


@pytest.fixture
def env(hub: StandInHub, tmp_path: Path) -> Env:
    files = tiny_pack_files()
    sha = hub.add_repo(REPO, files)
    manifest = tmp_path / "weights.toml"
    manifest.write_text(manifest_toml("tiny", REPO, sha, files), encoding="utf-8")
    return Env(hub, tmp_path / "hf", manifest, sha, files, tmp_path)


def assert_pack_is(folder: Path, files: dict[str, bytes]) -> None:
    for path, content in files.items():
        assert (folder / path).read_bytes() == content, path


def no_partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".incomplete", ".tmp"))]


# --------------------------------------------------------------------------------------
# the stand-in Hub itself


def test_stand_in_hub_speaks_the_resolve_protocol(hub: StandInHub) -> None:
    files = {"x.safetensors": bytes(range(200)), "a.txt": b"hello"}
    sha = hub.add_repo("o/r", files)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    head = opener.open(urllib.request.Request(f"{hub.url}/o/r/resolve/main/x.safetensors", method="HEAD"))
    assert head.status == 200
    assert head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(files["x.safetensors"]).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == "200" and head.headers["Content-Length"] == "200"

    ranged = opener.open(urllib.request.Request(f"{hub.url}/o/r/resolve/{sha}/x.safetensors", headers={"Range": "bytes=150-"}))
    assert ranged.status == 206
    assert ranged.headers["Content-Range"] == "bytes 150-199/200"
    assert ranged.read() == bytes(range(150, 200))

    for url, status, code in [
        ("/o/nope/resolve/main/a.txt", 401, "RepoNotFound"),
        ("/o/r/resolve/" + "0" * 40 + "/a.txt", 404, "RevisionNotFound"),
        ("/o/r/resolve/main/missing.txt", 404, "EntryNotFound"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(hub.url + url)
        assert info.value.code == status and info.value.headers["X-Error-Code"] == code

    hub.corrupt("o/r", "a.txt", times=1)
    corrupted = opener.open(f"{hub.url}/o/r/resolve/main/a.txt").read()
    assert corrupted != b"hello" and len(corrupted) == 5
    assert opener.open(f"{hub.url}/o/r/resolve/main/a.txt").read() == b"hello"
    assert [r.status for r in hub.requests_for("a.txt", "GET")] == [401, 404, 200, 200]
    assert len(hub.requests_for("x.safetensors")) == 2


# --------------------------------------------------------------------------------------
# mav download weights


def test_a_download_that_would_not_fit_on_the_disk_is_refused_before_any_transfer(env: Env) -> None:
    tight = small_disk(env.tmp, 200 * 2**20)  # under the 256 MiB mavcli keeps free
    for args in (("download", "weights"), ("download", "weights", "--dir", str(env.tmp / "plain"))):
        result = env.mav(*args, extra_env=tight)
        assert result.returncode == 2, result.stderr
        assert re.search(r"needs \d+ kB more", flat(result.stderr)) and "210 MB free" in flat(result.stderr)
        assert "HF_HOME" in flat(result.stderr)
    assert not env.hub.requests_for("keyframe.safetensors", "GET") and not (env.tmp / "plain" / "pack.json").exists()
    assert not env.hub.requests  # the manifest states every size: not even a metadata request
    # with room, the same download goes ahead
    assert env.mav("download", "weights", extra_env=small_disk(env.tmp, 2**30)).returncode == 0
    assert_pack_is(env.snapshot, env.files)


def test_fresh_download_lands_verified_files_and_prints_the_path(env: Env) -> None:
    result = env.mav("download", "weights")  # no PACK: the manifest's default
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(env.snapshot)
    assert_pack_is(env.snapshot, env.files)
    assert "sha256 verified" in result.stderr
    assert "keyframe.safetensors" in result.stderr  # its progress bar
    # one HEAD + one GET per file, at the pinned commit
    assert len(env.hub.requests) == 2 * len(env.files)
    assert {r.revision for r in env.hub.requests} == {env.sha}
    # the cache holds blobs named by etag, linked from the snapshot
    assert (env.snapshot / "keyframe.safetensors").is_symlink()
    assert no_partial_files(env.home) == []


def test_cached_rerun_makes_no_request(env: Env) -> None:
    first = env.mav("download", "weights", "tiny")
    assert first.returncode == 0, first.stderr
    requests = env.hub.request_count()
    second = env.mav("download", "weights", "tiny")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert env.hub.request_count() == requests  # nothing asked of the Hub
    assert "keyframe.safetensors" not in second.stderr  # no progress bar for cached files

    quiet = env.mav("download", "weights", "tiny", "--quiet")
    assert quiet.returncode == 0
    assert quiet.stdout == first.stdout and quiet.stderr == ""


def test_wrong_sha256_is_fetched_again_then_removed(env: Env) -> None:
    env.hub.corrupt(REPO, "keyframe.safetensors")  # every GET: one byte flipped, same size
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 1
    message = flat(result.stderr)
    assert "keyframe.safetensors failed verification (sha256" in message  # the retry note
    assert "failed verification twice" in message and "it was deleted" in message
    assert "Traceback" not in result.stderr
    assert len(env.hub.requests_for("keyframe.safetensors", "GET")) == 2  # fetched, then once more
    # nothing that failed verification stays where a later run could use it
    assert not (env.snapshot / "keyframe.safetensors").exists()
    assert not (env.snapshot / "keyframe.safetensors").is_symlink()
    good = hashlib.sha256(env.files["keyframe.safetensors"]).hexdigest()
    blobs = {p.name for p in (env.repo_cache / "blobs").iterdir()}
    assert good not in blobs  # the corrupt bytes were stored under the good hash's etag
    assert no_partial_files(env.home) == []

    offline = env.mav("download", "weights", "tiny", offline=True)
    assert offline.returncode == 2
    assert "Missing: keyframe.safetensors" in flat(offline.stderr)

    env.hub.heal()
    fixed = env.mav("download", "weights", "tiny")
    assert fixed.returncode == 0, fixed.stderr
    assert_pack_is(env.snapshot, env.files)


def test_a_transient_bad_hash_is_repaired_by_one_refetch(env: Env) -> None:
    env.hub.corrupt(REPO, "prior.safetensors", times=1)
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 0, result.stderr
    assert "prior.safetensors failed verification" in flat(result.stderr)
    assert len(env.hub.requests_for("prior.safetensors", "GET")) == 2
    assert_pack_is(env.snapshot, env.files)


def test_unknown_repo_is_exit_2_and_named(env: Env) -> None:
    env.manifest.write_text(manifest_toml("tiny", "mavcli/nope", env.sha, env.files), encoding="utf-8")
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 2
    assert "Hub repository 'mavcli/nope' was not found" in flat(result.stderr)
    assert "Traceback" not in result.stderr


def test_unknown_revision_is_exit_2_and_named(env: Env) -> None:
    ghost = "f" * 40
    env.manifest.write_text(manifest_toml("tiny", REPO, ghost, env.files), encoding="utf-8")
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 2
    assert f"revision '{ghost}' does not exist in Hub repository 'mavcli/tiny'" in flat(result.stderr)

    adhoc = env.mav("download", "weights", "--repo", REPO, "--revision", "no-such-branch", manifest=False)
    assert adhoc.returncode == 2
    assert "revision 'no-such-branch' does not exist" in flat(adhoc.stderr)


def test_offline_with_a_cold_cache_names_every_missing_file_and_the_command(env: Env) -> None:
    result = env.mav("download", "weights", "tiny", offline=True)
    assert result.returncode == 2
    message = flat(result.stderr)
    assert "HF_HUB_OFFLINE" in message
    assert "Missing: " + ", ".join(env.files) in message
    assert f"mav download weights tiny --manifest {env.manifest}" in message
    assert env.hub.request_count() == 0

    # once downloaded, offline works and asks nothing
    assert env.mav("download", "weights", "tiny").returncode == 0
    requests = env.hub.request_count()
    again = env.mav("download", "weights", "tiny", offline=True)
    assert again.returncode == 0 and again.stdout.strip() == str(env.snapshot)
    assert env.hub.request_count() == requests


def test_dropped_connection_is_exit_1_and_leaves_nothing_partial(env: Env) -> None:
    env.hub.drop(REPO, "keyframe.safetensors")  # every GET: half the bytes, then hang up
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 1
    message = flat(result.stderr)
    assert "the connection broke while downloading keyframe.safetensors" in message
    assert "run the same command again" in message
    assert not (env.snapshot / "keyframe.safetensors").exists()
    assert no_partial_files(env.home) == []
    good = hashlib.sha256(env.files["keyframe.safetensors"]).hexdigest()
    assert not (env.repo_cache / "blobs" / good).exists()

    env.hub.heal()
    retry = env.mav("download", "weights", "tiny")
    assert retry.returncode == 0, retry.stderr
    assert_pack_is(env.snapshot, env.files)


def test_one_dropped_connection_is_retried_within_the_run(env: Env) -> None:
    env.hub.drop(REPO, "keyframe.safetensors", times=1)
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 0, result.stderr
    assert len(env.hub.requests_for("keyframe.safetensors", "GET")) == 2
    assert_pack_is(env.snapshot, env.files)


def test_a_pinned_file_that_is_not_safetensors_is_rejected_and_removed(env: Env) -> None:
    files = dict(env.files, **{"keyframe.safetensors": b"\x00" * 8 + b"this is not a safetensors file"})
    sha = env.hub.add_repo(REPO, files, branch="broken")
    env.manifest.write_text(manifest_toml("tiny", REPO, sha, files), encoding="utf-8")
    result = env.mav("download", "weights", "tiny")
    assert result.returncode == 2
    message = flat(result.stderr)
    assert "keyframe.safetensors" in message and "not a valid safetensors file" in message
    assert not (env.repo_cache / "snapshots" / sha / "keyframe.safetensors").exists()


def test_dir_writes_a_plain_folder_and_not_the_cache(env: Env) -> None:
    out = env.tmp / "packs" / "tiny"
    result = env.mav("download", "weights", "tiny", "--dir", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out.resolve())
    assert_pack_is(out, env.files)
    assert sorted(p.name for p in out.iterdir()) == sorted(env.files)  # no .cache, no staging left
    assert not any(p.is_symlink() for p in out.iterdir())
    assert not env.repo_cache.exists()

    requests = env.hub.request_count()
    again = env.mav("download", "weights", "tiny", "--dir", str(out))
    assert again.returncode == 0
    assert env.hub.request_count() == requests  # verified files already there


def test_adhoc_repo_downloads_what_pack_json_lists(env: Env) -> None:
    result = env.mav("download", "weights", "--repo", REPO, manifest=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(env.snapshot)
    assert_pack_is(env.snapshot, env.files)
    message = flat(result.stderr)
    assert "not pinned" in message
    # every file was fetched at the commit that 'main' resolved to
    assert {r.revision for r in env.hub.requests if r.path != "pack.json"} == {env.sha}

    out = env.tmp / "plain"
    to_dir = env.mav("download", "weights", "--repo", REPO, "--revision", env.sha, "--dir", str(out), manifest=False)
    assert to_dir.returncode == 0, to_dir.stderr
    assert_pack_is(out, env.files)
    assert sorted(p.name for p in out.iterdir()) == sorted(env.files)


def test_adhoc_repo_with_invalid_safetensors_is_rejected(env: Env) -> None:
    files = dict(env.files, **{"prior.safetensors": b"garbage"})
    env.hub.add_repo("someone/broken", files)
    result = env.mav("download", "weights", "--repo", "someone/broken", "--revision", "main", manifest=False)
    assert result.returncode == 2
    assert "prior.safetensors from someone/broken@main is not a valid safetensors file" in flat(result.stderr)
    snapshots = list((env.cache / "models--someone--broken" / "snapshots").rglob("prior.safetensors"))
    assert snapshots == []


# --------------------------------------------------------------------------------------
# in-process CLI (CliRunner): no network involved


runner = CliRunner()


def test_manifest_path_escaping_its_folder_is_rejected(tmp_path: Path) -> None:
    files = {"pack.json": b"{}", "../evil": b"x"}
    manifest = tmp_path / "w.toml"
    manifest.write_text(manifest_toml("tiny", REPO, "a" * 40, files), encoding="utf-8")
    result = runner.invoke(app, ["download", "weights", "tiny", "--manifest", str(manifest)])
    assert result.exit_code == 2
    assert "'../evil' is not allowed: it escapes its folder" in flat(result.stderr)
    assert not (tmp_path.parent / "evil").exists()


def test_bundled_pack_needs_no_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = tmp_path / "packs" / "shapes"
    bundled.mkdir(parents=True)
    (bundled / "pack.json").write_text('{"format": "mavcli-pack"}')
    monkeypatch.setattr(resolve_module, "BUNDLED_DIR", tmp_path / "packs")
    manifest = tmp_path / "w.toml"
    manifest.write_text('default = "shapes"\n[packs.shapes]\nbundled = "shapes"\n', encoding="utf-8")
    result = runner.invoke(app, ["download", "weights", "--manifest", str(manifest)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(bundled)
    assert "shapes is bundled with mavcli; no download needed" in flat(result.stderr)
    assert resolve_pack(None, manifest=load_manifest(manifest)) == bundled
    rows = list_packs(load_manifest(manifest))
    assert [(r.name, r.kind, r.location, r.is_default) for r in rows] == [("shapes", "bundled", str(bundled), True)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nope"], "unknown pack(s) nope; known packs: tiny"),
        (["--revision", "main"], "--revision needs --repo"),
        (["tiny", "--repo", "a/b"], "give pack names or --repo, not both"),
        (["--repo", "not a repo id"], "is not a Hub repository id"),
    ],
)
def test_bad_usage_is_exit_2_with_a_message(tmp_path: Path, args: list[str], needle: str) -> None:
    manifest = tmp_path / "w.toml"
    files = tiny_pack_files()
    manifest.write_text(manifest_toml("tiny", REPO, "a" * 40, files), encoding="utf-8")
    result = runner.invoke(app, ["download", "weights", *args, "--manifest", str(manifest)])
    assert result.exit_code == 2
    assert needle in flat(result.stderr)


# --------------------------------------------------------------------------------------
# resolve_pack / list_packs (library; cache only, explicit cache_dir)


def test_resolve_pack_before_and_after_download(env: Env) -> None:
    man = load_manifest(env.manifest)
    with pytest.raises(PackError) as info:
        resolve_pack("tiny", manifest=man, cache_dir=env.cache)
    message = str(info.value)
    assert "is not downloaded yet" in message and "keyframe.safetensors" in message
    assert f"mav download weights tiny --manifest {env.manifest}" in message
    assert [r.kind for r in list_packs(man, cache_dir=env.cache)] == ["downloadable"]

    assert env.mav("download", "weights", "tiny").returncode == 0
    assert resolve_pack("tiny", manifest=man, cache_dir=env.cache) == env.snapshot
    assert resolve_pack(None, manifest=man, cache_dir=env.cache) == env.snapshot  # the default
    rows = list_packs(man, cache_dir=env.cache)
    assert [(r.kind, r.location) for r in rows] == [("cached", str(env.snapshot))]
    # an ad-hoc repo id resolves from the cache once its pack.json and files are there
    assert resolve_pack(f"{REPO}@{env.sha}", manifest=man, cache_dir=env.cache) == env.snapshot

    # a cached file that no longer matches its hash is deleted, never loaded
    blob = (env.snapshot / "prior.safetensors").resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"\xff" + env.files["prior.safetensors"][1:])
    with pytest.raises(PackError, match=r"prior.safetensors failed verification and was deleted"):
        resolve_pack("tiny", manifest=man, cache_dir=env.cache)
    assert not (env.snapshot / "prior.safetensors").exists() and not blob.exists()


def test_resolve_pack_local_folders_and_unknown_names(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    man = load_manifest(env.manifest)
    folder = tmp_path / "mypack"
    folder.mkdir()
    with pytest.raises(PackError, match="has no pack.json"):
        resolve_pack(str(folder), manifest=man, cache_dir=env.cache)
    (folder / "pack.json").write_text("{}")
    assert resolve_pack(str(folder), manifest=man, cache_dir=env.cache) == folder.resolve()

    with pytest.raises(UserInputError, match="unknown pack 'nope'; known packs: tiny"):
        resolve_pack("nope", manifest=man, cache_dir=env.cache)
    with pytest.raises(UserInputError, match="does not exist"):
        resolve_pack("./missing/folder", manifest=man, cache_dir=env.cache)
    with pytest.raises(PackError, match="mav download weights --repo someone/else --revision main"):
        resolve_pack("someone/else", manifest=man, cache_dir=env.cache)

    # a folder in the working directory that shares a pack's name does not shadow the pack
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    with pytest.raises(PackError, match="is not downloaded yet"):
        resolve_pack("tiny", manifest=man, cache_dir=env.cache)


# --------------------------------------------------------------------------------------
# safetensors validation and pack indexes


def test_safetensors_validation(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    real = tmp_path / "real.safetensors"
    save_file({"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones(3, dtype=np.int64)}, str(real), metadata={"k": "v"})
    assert safetensors_problem(real) is None
    handmade = tmp_path / "hand.safetensors"
    handmade.write_bytes(tiny_pack_files()["keyframe.safetensors"])
    assert safetensors_problem(handmade) is None

    cases = {
        "short": b"\x01\x02",
        "header too long": struct.pack("<Q", 10_000) + b"{}",
        "not json": struct.pack("<Q", 4) + b"nope",
        "truncated data": real.read_bytes()[:-4],
        "extra data": real.read_bytes() + b"\x00" * 4,
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        assert safetensors_problem(path) is not None, name


def test_pack_files_from_index() -> None:
    index = {"format": "mavcli-pack", "version": 1, "stages": ["prior", {"name": "keyframe"}, {"file": "sr/high.safetensors"}]}
    assert pack_files_from_index(index) == [
        "pack.json", "prior.safetensors", "keyframe.safetensors", "sr/high.safetensors", "tokenizer.json", "README.md",
    ]
    as_written = {"format": "mavcli-pack", "stages": {"prior": "prior.safetensors", "keyframes": "kf.safetensors"}}
    assert pack_files_from_index(as_written) == [
        "pack.json", "prior.safetensors", "kf.safetensors", "tokenizer.json", "README.md",
    ]
    with pytest.raises(PackError, match="not a mavcli pack"):
        pack_files_from_index({"format": "other"})
    with pytest.raises(PackError, match="escapes its folder"):
        pack_files_from_index({"format": "mavcli-pack", "stages": ["../../evil"]})
    with pytest.raises(PackError, match="escapes its folder"):
        pack_files_from_index({"format": "mavcli-pack", "stages": {"prior": "../evil.safetensors"}})


# --------------------------------------------------------------------------------------
# the installed `mav` executable


def mav_executable() -> str:
    found = shutil.which("mav")
    if found is None:
        candidate = Path(sys.executable).parent / "mav"
        if not candidate.exists():
            pytest.skip("the `mav` entry point is not installed (pip install -e .)")
        found = str(candidate)
    return found


def test_installed_mav_executable_version_and_info(env: Env) -> None:
    mav = mav_executable()
    version = subprocess.run([mav, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert version.returncode == 0
    assert version.stdout.strip() == f"mavcli {mavcli.__version__}"

    info_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    info_env.update(HF_HOME=str(env.home), HF_HUB_OFFLINE="1", COLUMNS="400")
    info = subprocess.run([mav, "info", "--manifest", str(env.manifest)], capture_output=True, text=True, timeout=TIMEOUT, env=info_env)
    assert info.returncode == 0, info.stderr
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in info.stdout.splitlines()[:5] if line.strip()}
    assert lines["mavcli"] == mavcli.__version__
    assert lines["device"].split()[0] in {"cpu", "cuda", "mps"}
    assert lines["torch"][0].isdigit()
    assert "hub" in lines and str(env.home) in lines["hub"]
    row = next(line for line in info.stdout.splitlines() if "tiny (default)" in line)
    assert "downloadable" in row and f"{REPO}@{env.sha[:12]}" in row


def test_a_real_saved_pack_round_trips_through_the_hub(hub: StandInHub, tiny_pack_dir: Path, tmp_path: Path) -> None:
    """A pack written by mavcli.weights.pack.save_pack: its pack.json and safetensors pass the checks."""
    files = {p.relative_to(tiny_pack_dir).as_posix(): p.read_bytes() for p in tiny_pack_dir.rglob("*") if p.is_file()}
    assert "pack.json" in files
    for path in files:
        if path.endswith(".safetensors"):
            assert safetensors_problem(tiny_pack_dir / path) is None, path
    listed = pack_files_from_index(json.loads(files["pack.json"]))
    assert sorted(listed) == sorted(files)  # the index accounts for every file of the folder

    sha = hub.add_repo("mavcli/real", files)
    manifest = tmp_path / "weights.toml"
    manifest.write_text(manifest_toml("real", "mavcli/real", sha, files), encoding="utf-8")
    env = Env(hub, tmp_path / "hf", manifest, sha, files, tmp_path)
    result = env.mav("download", "weights", "real")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == env.cache / "models--mavcli--real" / "snapshots" / sha
    assert_pack_is(folder, files)


def test_generate_fetches_a_hub_pack_on_first_use(hub: StandInHub, tiny_pack_dir: Path, tmp_path: Path) -> None:
    """`mav generate --pack owner/name` downloads the pack (verified) and makes the video;
    a second run is served from the cache without a request."""
    files = {p.relative_to(tiny_pack_dir).as_posix(): p.read_bytes() for p in tiny_pack_dir.rglob("*") if p.is_file()}
    sha = hub.add_repo("mavcli/gen", files)
    env = Env(hub, tmp_path / "hf", tmp_path / "unused.toml", sha, files, tmp_path)
    out = tmp_path / "v.mp4"
    result = env.mav("generate", "a red circle moving left on a black background", "--pack", "mavcli/gen",
                     "--seed", "1", "--out", str(out), manifest=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out) and out.stat().st_size > 0
    assert (env.cache / "models--mavcli--gen" / "snapshots" / sha / "pack.json").is_file()
    result = env.mav("generate", "a red circle moving left on a black background", "--pack", "mavcli/gen",
                     "--seed", "1", "--out", str(tmp_path / "w.mp4"), manifest=False, offline=True)
    assert result.returncode == 0, result.stderr
