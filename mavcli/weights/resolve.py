"""Turn what a user typed after `--pack` into a pack folder on disk.

Accepted, in this order:

1. nothing -> the manifest's `default` pack;
2. an existing folder holding `pack.json` -> that folder;
3. a pack name from weights.toml -> its bundled folder (mavcli/packs/<bundled>), else its
   verified snapshot in the Hugging Face cache, else a download (only when allowed);
4. a Hub repository id `owner/name` (optionally `owner/name@revision`) -> that repository,
   fetched at `main` (or the revision) when downloads are allowed, else from the cache.

Nothing here touches the network unless `allow_download=True`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mavcli.errors import PackError, UserInputError
from mavcli.weights.hub import DownloadProgress, download_pack, download_repo, find_cached_pack
from mavcli.weights.integrity import sha256_file
from mavcli.weights.manifest import REPO_ID, Manifest, PackEntry, load_manifest

__all__ = ["BUNDLED_DIR", "PackStatus", "bundled_pack_dir", "list_packs", "resolve_pack"]

#: Where bundled packs live inside the installed package.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "packs"

_LAYOUT = "pack.json, one <stage>.safetensors per stage, tokenizer.json and README.md"


def bundled_pack_dir(entry: PackEntry) -> Path | None:
    """The installed folder of a bundled pack, or None if it is not bundled or not installed."""
    if entry.bundled is None:
        return None
    folder = BUNDLED_DIR / entry.bundled
    return folder if (folder / "pack.json").is_file() else None


def _verify_bundled(entry: PackEntry, folder: Path) -> None:
    """A bundled pack's files against the sha256s weights.toml pins (when it lists them)."""
    for f in entry.files:
        path = folder / f.path
        if not path.is_file():
            raise PackError(f"bundled pack {entry.name!r} is missing {f.path}; reinstall mavcli")
        if sha256_file(path) != f.sha256:
            raise PackError(
                f"bundled pack {entry.name!r}: {f.path} does not match its sha256 in weights.toml; "
                "the installation is damaged or was edited: reinstall mavcli"
            )


def _looks_like_path(text: str) -> bool:
    """True for things only a path would look like: ./x, ../x, /x, ~/x, a\\b, a/b/c, x/."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.endswith("/")
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
    )


def resolve_pack(
    name_or_path: str | os.PathLike[str] | None,
    *,
    manifest: Manifest | None = None,
    allow_download: bool = False,
    progress: DownloadProgress | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Path:
    """The folder of the pack a user named (see the module docstring for the rules).

    Raises UserInputError for an unknown name (listing the known ones) or a missing path,
    PackError for a folder without pack.json or a pack that is not downloaded (naming the
    missing files and the command that fetches them), and the download errors of
    `mavcli.weights.hub` when `allow_download` is set.
    """
    man = manifest if manifest is not None else load_manifest()
    common = dict(allow_download=allow_download, progress=progress, cache_dir=cache_dir, token=token)
    if name_or_path is None:
        if man.default is None:
            raise PackError(
                "no pack was named and weights.toml sets no default; give a pack name "
                f"({_known(man)}), a pack folder, or a Hub repo id"
            )
        return _resolve_entry(man.packs[man.default], man, **common)

    text = os.fspath(name_or_path)
    if not text.strip():
        raise UserInputError("the pack name is empty")
    entry = man.get(text)
    local = Path(text).expanduser()
    if local.is_dir():
        if (local / "pack.json").is_file() or (local / "model_index.json").is_file():
            return local.resolve()
        if entry is None or _looks_like_path(text):
            raise PackError(
                f"folder {text!r} is not a mavcli pack: it has no pack.json (a pack holds {_LAYOUT})"
            )
        # A folder in the working directory that merely shares a manifest pack's name.
    elif local.exists() and (entry is None or _looks_like_path(text)):
        raise UserInputError(f"{text!r} is a file; a pack is a folder holding {_LAYOUT}")

    if entry is not None:
        return _resolve_entry(entry, man, **common)
    if _looks_like_path(text):
        raise UserInputError(f"pack folder {text!r} does not exist")

    repo, _, revision = text.partition("@")
    if "/" in repo and REPO_ID.fullmatch(repo) and "--" not in repo and ".." not in repo:
        return download_repo(
            repo,
            revision or "main",
            cache_dir=cache_dir,
            token=token,
            progress=progress,
            local_files_only=not allow_download,
        )
    raise UserInputError(
        f"unknown pack {text!r}; known packs: {_known(man)}. A pack folder or a Hub repo id "
        "(owner/name) works too"
    )


def _known(man: Manifest) -> str:
    return ", ".join(man.names()) or "none (weights.toml lists no packs)"


def _resolve_entry(
    entry: PackEntry,
    man: Manifest,
    *,
    allow_download: bool,
    progress: DownloadProgress | None,
    cache_dir: str | Path | None,
    token: str | bool | None,
) -> Path:
    bundled = bundled_pack_dir(entry)
    if bundled is not None:
        _verify_bundled(entry, bundled)
        return bundled
    if not entry.downloadable:
        raise PackError(
            f"pack {entry.name!r} should ship inside mavcli (mavcli/packs/{entry.bundled}) but "
            "is not installed; reinstall mavcli"
        )
    command = man.fetch_command(entry.name)
    if allow_download:
        # download_pack verifies every file and costs no request for what is cached already.
        return download_pack(
            entry, cache_dir=cache_dir, token=token, progress=progress, fetch_command=command
        )
    state = find_cached_pack(entry, cache_dir=cache_dir, verify=True)
    if state.complete:
        assert state.root is not None
        return state.root
    removed = (
        f" ({', '.join(state.removed)} failed verification and was deleted)" if state.removed else ""
    )
    what = "is not downloaded yet" if len(state.missing) == len(entry.files) else "is incomplete"
    raise PackError(
        f"pack {entry.name!r} {what}{removed}. Missing: {', '.join(state.missing)}. "
        f"Fetch it with: {command}"
    )


_SYMBOLS = {"text_encoder": "C_x", "prior": "P", "keyframes": "D^t", "interpolation": "F_i",
            "sr_video": "SR_l^t", "sr_image": "SR_h", "matcher": "matcher", "ranker": "ranker",
            "flow_interpolation": "F_i (flow)"}


def pack_stages(entry: PackEntry, folder: Path | None) -> str:
    """The stages a pack brings, e.g. "C_x P D^t F_i SR_l^t SR_h"."""
    if entry.kind == "diffusers":
        return "C_x D^t (latent, no P)"
    if entry.kind == "rife":
        return "F_i (RIFE)"
    names = [f.path.removesuffix(".safetensors") for f in entry.files if f.path.endswith(".safetensors")]
    if folder is not None and not names:
        names = [p.stem for p in sorted(folder.glob("*.safetensors"))]
    order = list(_SYMBOLS)
    known = sorted((n for n in names if n in _SYMBOLS), key=order.index)
    return " ".join(_SYMBOLS[n] for n in known)


@dataclass(frozen=True)
class PackStatus:
    """One row of `mav info`: where a manifest pack is, or where it would come from."""

    name: str
    kind: str
    """"bundled", "cached" (complete in the HF cache), "downloadable" or "missing"."""
    location: str
    """A folder for bundled and cached packs, `repo@revision` for the others."""
    description: str
    size: int
    """Bytes a download fetches (0 for bundled-only packs; the known part where not all are published)."""
    is_default: bool
    licence: str | None = None
    size_known: bool = True
    stages: str = ""
    """The cascade stages the pack brings, in the paper's symbols."""


def list_packs(manifest: Manifest | None = None, *, cache_dir: str | Path | None = None) -> list[PackStatus]:
    """Every manifest pack with its state; checks presence and sizes, not hashes (fast)."""
    man = manifest if manifest is not None else load_manifest()
    rows: list[PackStatus] = []
    for entry in man.packs.values():
        is_default = entry.name == man.default
        bundled = bundled_pack_dir(entry)
        if bundled is not None:
            kind, location = "bundled", str(bundled)
        elif entry.downloadable:
            state = find_cached_pack(entry, cache_dir=cache_dir, verify=False)
            if state.complete:
                kind, location = "cached", str(state.root)
            else:
                assert entry.revision is not None
                at = entry.revision_label + ("" if entry.pinned else " (unpinned)")
                kind, location = "downloadable", f"{entry.repo}@{at}"
        else:
            kind, location = "missing", f"mavcli/packs/{entry.bundled} (not installed)"
        rows.append(
            PackStatus(entry.name, kind, location, entry.description, entry.total_size, is_default,
                       entry.licence, entry.size_known, pack_stages(entry, bundled))
        )
    return rows
