"""weights.toml parsing and validation (mavcli.weights.manifest): pure, no network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mavcli.errors import PackError, UserInputError
from mavcli.weights.manifest import (
    DEFAULT_MANIFEST,
    FileEntry,
    ManifestError,
    check_relative_path,
    load_manifest,
    parse_manifest,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()


def manifest_text(*, revision: str = SHA, files: str | None = None, extra: str = "", top: str = "") -> str:
    files = files if files is not None else (
        f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\nsize = 3\n'
        f'[[packs.tiny.files]]\npath = "sub/keyframe.safetensors"\nsha256 = "{H2.upper()}"\nsize = 3\n'
    )
    return (
        f'{top}[packs.tiny]\nrepo = "mavcli/tiny"\nrevision = "{revision}"\n'
        f'description = "a tiny pack"\n{extra}{files}'
    )


def test_parses_a_valid_manifest_into_dataclasses() -> None:
    man = parse_manifest('default = "tiny"\n' + manifest_text())
    assert man.default == "tiny"
    assert man.names() == ["tiny"]
    entry = man.packs["tiny"]
    assert entry.repo == "mavcli/tiny"
    assert entry.revision == SHA
    assert entry.bundled is None
    assert entry.description == "a tiny pack"
    assert entry.files == (
        FileEntry("pack.json", H1, 3),
        FileEntry("sub/keyframe.safetensors", H2, 3),  # hex is normalised to lower case
    )
    assert entry.file("pack.json").sha256 == H1
    assert entry.total_size == 6
    assert entry.downloadable


def test_bundled_only_pack_needs_no_repo() -> None:
    man = parse_manifest('[packs.shapes]\nbundled = "shapes"\ndescription = "ships inside"\n')
    entry = man.packs["shapes"]
    assert entry.bundled == "shapes"
    assert entry.repo is None and entry.revision is None and entry.files == ()
    assert not entry.downloadable


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (manifest_text(revision="main"), "40-hex commit sha"),
        (manifest_text(revision="refs/pr/3"), "pull-request ref, which can move"),
        (manifest_text(revision="refs/heads/main", extra='unpinned = "x"\n'), "40-hex commit sha"),
        (manifest_text(extra='unpinned = "no hash"\n'), "'unpinned' is only for a pull-request ref"),
        (manifest_text(revision="refs/pr/3", extra='unpinned = " "\n'), "'unpinned' must say why"),
        (manifest_text(revision="abc123"), "40-hex commit sha"),
        (manifest_text().replace(f'revision = "{SHA}"\n', ""), "missing 'revision'"),
        (manifest_text().replace('repo = "mavcli/tiny"\n', ""), "missing 'repo'"),
        (manifest_text().replace('repo = "mavcli/tiny"', 'repo = "bad repo!"'), "'repo' must be a Hub id"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "xyz"\nsize = 3\n'), "64 hex digits"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1[:-1]}"\nsize = 3\n'), "64 hex digits"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\n'), "missing size"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\nsize = -1\n'), "'size' must be"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\nsize = true\n'), "'size' must be"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha265 = "{H1}"\nsize = 1\n'), "unknown key(s) sha265"),
        (manifest_text(files=f'[[packs.tiny.files]]\npath = "a.safetensors"\nsha256 = "{H1}"\nsize = 1\n'), "must include the pack index 'pack.json'"),
        (manifest_text(files=(f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\nsize = 1\n') * 2), "listed twice"),
        (manifest_text(files=""), "missing [[packs.tiny.files]]"),
        (manifest_text(extra='revsion = "x"\n'), "unknown key(s) revsion"),
        (manifest_text(extra='bundled = "../up"\n'), "'bundled' must be the name of a folder"),
        (manifest_text(top='default = "other"\n'), "default pack 'other' has no [packs.other]"),
        (manifest_text(top='defualt = "tiny"\n'), "unknown top-level key(s) defualt"),
        ("[packs.tiny\n", "not valid TOML"),
        ('[packs."bad name"]\nbundled = "x"\n', "pack names use"),
    ],
)
def test_invalid_manifests_raise_a_clear_error(text: str, needle: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source="w.toml")
    assert needle in str(info.value)
    assert str(info.value).startswith("w.toml")
    assert info.value.exit_code == 2
    assert isinstance(info.value, PackError)


@pytest.mark.parametrize(
    "bad",
    ["../evil", "a/../../evil", "/etc/passwd", "a\\b", "..\\evil", "C:evil", "a//b", "./a", "a/.", "", " a", "a\n"],
)
def test_paths_that_escape_or_alias_are_rejected(bad: str) -> None:
    with pytest.raises(ManifestError):
        check_relative_path(bad)
    # A TOML multi-line literal string keeps backslashes and newlines exactly as written.
    text = manifest_text(
        files=f'[[packs.tiny.files]]\npath = "pack.json"\nsha256 = "{H1}"\nsize = 1\n'
        f"[[packs.tiny.files]]\npath = '''{bad}'''\nsha256 = \"{H2}\"\nsize = 1\n"
    )
    with pytest.raises(ManifestError, match="is not allowed"):
        parse_manifest(text)


@pytest.mark.parametrize("good", ["pack.json", "sub/dir/x.safetensors", "a..b", ".hidden", "name with space"])
def test_ordinary_relative_paths_are_accepted(good: str) -> None:
    assert check_relative_path(good) == good


def test_load_manifest_from_a_file_and_its_fetch_command(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(manifest_text(), encoding="utf-8")
    man = load_manifest(path)
    assert man.path == path and not man.is_packaged
    assert man.fetch_command("tiny") == f"mav download weights tiny --manifest {path}"


def test_load_manifest_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist") as info:
        load_manifest(tmp_path / "nope.toml")
    assert info.value.exit_code == 2
    with pytest.raises(UserInputError, match="is a folder"):
        load_manifest(tmp_path)


def test_packaged_manifest_loads_and_is_the_default() -> None:
    assert DEFAULT_MANIFEST.name == "weights.toml" and DEFAULT_MANIFEST.parent.name == "mavcli"
    man = load_manifest()
    assert man.is_packaged
    assert man.path == DEFAULT_MANIFEST
    # With mavcli's own manifest the fetch command needs no --manifest.
    assert man.fetch_command("shapes") == "mav download weights shapes"
    for entry in man.packs.values():  # whatever packs it lists are pinned, or say why they cannot be
        assert entry.bundled is not None or entry.pinned or (entry.unpinned and entry.revision.startswith("refs/pr/"))


def test_a_pull_request_ref_is_accepted_only_with_its_reason() -> None:
    entry = parse_manifest(manifest_text(revision="refs/pr/46", extra='unpinned = "hash unknown"\n')).packs["tiny"]
    assert entry.revision == "refs/pr/46" and entry.unpinned == "hash unknown"
    assert not entry.pinned and entry.revision_label == "refs/pr/46"
    pinned = parse_manifest(manifest_text()).packs["tiny"]
    assert pinned.pinned and pinned.revision_label == SHA[:12]


def test_packaged_manifest_lists_the_open_latent_packs() -> None:
    man = load_manifest()
    for name in ("modelscope", "zeroscope", "zeroscope-xl"):
        entry = man.packs[name]
        assert entry.kind == "diffusers" and entry.licence and entry.licence.startswith("cc-by-nc-4.0")
        paths = {f.path for f in entry.files}
        assert {"model_index.json", "unet/config.json", "scheduler/scheduler_config.json",
                "tokenizer/vocab.json", "tokenizer/merges.txt"} <= paths
        assert not any(p.endswith((".bin", ".pth", ".ckpt")) for p in paths)
        assert sum(p.endswith(".safetensors") for p in paths) == 3  # unet, vae, text encoder
    modelscope = man.packs["modelscope"]
    # pinned: a commit and a published sha256 and size for every file, the fp16 variants
    assert modelscope.pinned and all(f.sha256 and f.size for f in modelscope.files)
    assert modelscope.file("unet/diffusion_pytorch_model.fp16.safetensors").size == 2822650226
    assert not man.packs["zeroscope"].pinned and man.packs["zeroscope"].unpinned
