"""weights.toml: the packs mavcli knows by name, each pinned to a Hub commit and to file hashes.

A manifest looks like this::

    default = "shapes"                  # optional: the pack used when none is named

    [packs.shapes]
    repo = "mavcli/shapes"              # Hub repository id
    revision = "<40-hex commit sha>"    # pinned: a branch could change under the user
    bundled = "shapes"                  # optional: ships in mavcli/packs/shapes
    description = "..."

    [[packs.shapes.files]]
    path = "keyframe.safetensors"       # relative, forward slashes, never leaves the pack folder
    sha256 = "<64 hex>"
    size = 1234

A pack with `bundled` may leave out `repo`, `revision` and `files` (it then exists only inside
the package). A pack with a `repo` must pin a `revision` and list every file, `pack.json`
included, with its sha256 and size: mavcli checks each download against them, because the
Hub client itself only checks sizes.

Reading a manifest is pure: no network, no files written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mavcli.errors import PackError, UserInputError

__all__ = [
    "DEFAULT_MANIFEST",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "PackEntry",
    "check_relative_path",
    "load_manifest",
    "parse_manifest",
]

#: The manifest that ships with the package (mavcli/weights.toml, a copy of the repo root's).
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "weights.toml"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# a Hub pull-request ref: the only unpinned revision a manifest may name, for a repository whose
# safetensors exist only in an unmerged conversion PR whose commit hash is not known
_PR_REF = re.compile(r"refs/pr/[1-9][0-9]*")
_PACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Hub ids: "name" or "owner/name"; letters, digits, '-', '_', '.'; no '--' or '..' (Hub rules).
REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*")

#: `sha256 = "hub"`: no published hash is known; verify against the Hub's own at the revision
HUB_HASH = "hub"
_PACK_KEYS = {"repo", "revision", "bundled", "description", "files", "kind", "licence", "unpinned"}
#: what a pack is: mavcli's own layout (pack.json), or a diffusers-layout latent video model
#: pack kind -> the file that must be among its files: a mavcli pack's index, a diffusers layout's
#: index, or for a published RIFE network (models/rife.py) its one safetensors file (any name)
PACK_KINDS = {"mavcli": "pack.json", "diffusers": "model_index.json", "rife": "*.safetensors"}
_FILE_KEYS = {"path", "sha256", "size"}
_TOP_KEYS = {"default", "packs"}


class ManifestError(PackError):
    """weights.toml is malformed: a missing key, a bad hash, a path that leaves its folder."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a pack, as pinned in the manifest."""

    path: str
    """Relative POSIX path inside the pack folder (validated by `check_relative_path`)."""
    sha256: str | None
    """Lower-case hex digest of the file's bytes; None (`sha256 = "hub"` in weights.toml) where
    no published hash could be found: the download then checks the file against the hash the Hub reports for it at the pinned
    revision and records it beside the cached pack, and every load checks the record."""
    size: int | None
    """Size in bytes (None: not published)."""


@dataclass(frozen=True)
class PackEntry:
    """One `[packs.NAME]` table of the manifest."""

    name: str
    repo: str | None
    revision: str | None
    files: tuple[FileEntry, ...]
    bundled: str | None = None
    description: str = ""
    kind: str = "mavcli"
    licence: str | None = None
    unpinned: str | None = None
    """Why `revision` is a pull-request ref rather than a commit (None: pinned)."""

    @property
    def pinned(self) -> bool:
        """True when the revision is a 40-hex commit, which cannot change under the user."""
        return self.revision is not None and bool(_COMMIT.fullmatch(self.revision))

    @property
    def revision_label(self) -> str:
        """The revision as messages show it: a commit's first 12 digits, a ref in full."""
        return "" if self.revision is None else (self.revision[:12] if self.pinned else self.revision)

    @property
    def downloadable(self) -> bool:
        """True when the pack can be fetched from the Hub (it names a repo and its files)."""
        return self.repo is not None

    def file(self, path: str) -> FileEntry:
        """The entry of `path`; KeyError if the pack does not list it."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    @property
    def total_size(self) -> int:
        """Sum of the known sizes of the files, in bytes."""
        return sum(f.size or 0 for f in self.files)

    @property
    def size_known(self) -> bool:
        return all(f.size is not None for f in self.files)


@dataclass(frozen=True)
class Manifest:
    """A parsed weights.toml."""

    packs: dict[str, PackEntry]
    default: str | None = None
    path: Path | None = None
    """Where it was read from (None when parsed from a string)."""
    is_packaged: bool = field(default=False)
    """True for the manifest that ships with mavcli (commands then need no --manifest)."""

    def names(self) -> list[str]:
        """Pack names in manifest order."""
        return list(self.packs)

    def get(self, name: str) -> PackEntry | None:
        """The pack called `name`, or None."""
        return self.packs.get(name)

    def fetch_command(self, name: str) -> str:
        """The exact command that downloads pack `name` with this manifest."""
        if self.is_packaged or self.path is None:
            return f"mav download weights {name}"
        return f"mav download weights {name} --manifest {self.path}"


def check_relative_path(path: str, *, what: str = "path") -> str:
    """Return `path` if it is a safe relative POSIX path inside a folder, else raise ManifestError.

    Rejected: empty, absolute (`/x`, `C:x`), backslashes, `..` or `.` components, empty
    components (`a//b`), control characters, and leading or trailing spaces. These are the
    ways a file name in a manifest or a pack index could write outside its folder or alias
    another file.
    """
    problem = _path_problem(path)
    if problem is not None:
        raise ManifestError(f"{what} {path!r} is not allowed: {problem}")
    return path


def _path_problem(path: str) -> str | None:
    if not isinstance(path, str) or not path:
        return "it is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "it contains control characters"
    if "\\" in path:
        return "use forward slashes ('/'), not backslashes"
    if path.startswith("/") or PurePosixPath(path).is_absolute():
        return "it is absolute; paths must be relative to the pack folder"
    if ":" in path:
        # "C:evil" is drive-relative on Windows; a colon also names NTFS streams.
        return "it contains ':'"
    if path != path.strip():
        return "it has leading or trailing spaces"
    parts = path.split("/")
    if any(part == ".." for part in parts):
        return "it escapes its folder ('..')"
    if any(part in ("", ".") for part in parts):
        return "it has an empty or '.' component"
    return None


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ManifestError(
                f"reading {source} needs Python 3.11 or newer, or the 'tomli' package "
                "(pip install tomli)"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{source} is not valid TOML: {err}") from None


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a weights.toml; `None` reads the one shipped with mavcli.

    Raises UserInputError when `path` does not exist or cannot be read, ManifestError
    (exit code 2) when its content is invalid.
    """
    packaged = path is None
    file = DEFAULT_MANIFEST if path is None else Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if packaged:
            raise PackError(
                f"mavcli's own weights.toml is missing ({file}); reinstall mavcli"
            ) from None
        raise UserInputError(f"manifest {str(file)!r} does not exist") from None
    except IsADirectoryError:
        raise UserInputError(f"manifest {str(file)!r} is a folder, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read manifest {str(file)!r}: {err}") from None
    return parse_manifest(text, source=str(file), path=file, is_packaged=packaged)


def parse_manifest(
    text: str,
    *,
    source: str = "weights.toml",
    path: Path | None = None,
    is_packaged: bool = False,
) -> Manifest:
    """Parse and validate manifest `text`; `source` names it in error messages."""
    data = _read_toml(text, source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ManifestError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected 'default' and [packs.NAME] tables"
        )
    raw_packs = data.get("packs", {})
    if not isinstance(raw_packs, dict):
        raise ManifestError(f"{source}: 'packs' must be a table of [packs.NAME] tables")

    packs: dict[str, PackEntry] = {}
    for name, table in raw_packs.items():
        packs[name] = _parse_pack(name, table, source)

    default = data.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise ManifestError(f"{source}: 'default' must be a pack name (a string)")
        if default not in packs:
            known = ", ".join(packs) or "none"
            raise ManifestError(
                f"{source}: default pack {default!r} has no [packs.{default}] table "
                f"(packs defined: {known})"
            )
    return Manifest(packs=packs, default=default, path=path, is_packaged=is_packaged)


def _parse_pack(name: str, table: Any, source: str) -> PackEntry:
    where = f"{source}: [packs.{name}]"
    if not _PACK_NAME.fullmatch(name):
        raise ManifestError(
            f"{where}: pack names use letters, digits, '.', '_' and '-' and start with a "
            "letter or digit"
        )
    if not isinstance(table, dict):
        raise ManifestError(f"{where} must be a table")
    unknown = sorted(set(table) - _PACK_KEYS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_PACK_KEYS))}"
        )

    description = table.get("description", "")
    if not isinstance(description, str):
        raise ManifestError(f"{where}: 'description' must be a string")

    kind = table.get("kind", "mavcli")
    if kind not in PACK_KINDS:
        raise ManifestError(f"{where}: 'kind' must be one of {', '.join(PACK_KINDS)}, got {kind!r}")
    licence = table.get("licence")
    if licence is not None and not isinstance(licence, str):
        raise ManifestError(f"{where}: 'licence' must be a string")
    extra = dict(kind=kind, licence=licence)

    bundled = table.get("bundled")
    if bundled is not None:
        if not isinstance(bundled, str) or _path_problem(bundled) or "/" in bundled:
            raise ManifestError(
                f"{where}: 'bundled' must be the name of a folder in mavcli/packs/, "
                f"got {bundled!r}"
            )

    repo = table.get("repo")
    if repo is None:
        if bundled is None:
            raise ManifestError(
                f"{where}: missing 'repo' (the Hub repository id); only a bundled pack may "
                "leave it out"
            )
        if "revision" in table:
            raise ManifestError(f"{where}: revision given without 'repo'")
        # a bundled pack may pin its files' hashes too: they are checked when it is loaded
        files = _parse_files(table.get("files"), where, name, kind) if "files" in table else []
        return PackEntry(name, None, None, tuple(files), bundled, description, **extra)

    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo:
        raise ManifestError(f"{where}: 'repo' must be a Hub id like 'owner/name', got {repo!r}")

    revision = table.get("revision")
    if revision is None:
        raise ManifestError(
            f"{where}: missing 'revision': pin the 40-hex commit sha of {repo} "
            "(a branch name could change under the user)"
        )
    unpinned = table.get("unpinned")
    if unpinned is not None and (not isinstance(unpinned, str) or not unpinned.strip()):
        raise ManifestError(f"{where}: 'unpinned' must say why the revision cannot be a commit")
    if isinstance(revision, str) and _PR_REF.fullmatch(revision):
        if unpinned is None:
            raise ManifestError(
                f"{where}: revision {revision!r} is a pull-request ref, which can move; pin its 40-hex "
                "commit sha, or say why that is not possible in 'unpinned = \"...\"'"
            )
    elif not isinstance(revision, str) or not _COMMIT.fullmatch(revision.lower()):
        raise ManifestError(
            f"{where}: 'revision' must be a full 40-hex commit sha, got {revision!r} "
            "(branch and tag names are not pinned)"
        )
    elif unpinned is not None:
        raise ManifestError(f"{where}: 'unpinned' is only for a pull-request ref revision; {revision} is pinned")
    else:
        revision = revision.lower()
    extra["unpinned"] = unpinned

    raw_files = table.get("files")
    if raw_files is None:
        raise ManifestError(
            f"{where}: missing [[packs.{name}.files]]: list every file with its sha256 and size"
        )
    files = _parse_files(raw_files, where, name, kind)
    return PackEntry(name, repo, revision, tuple(files), bundled, description, **extra)


def _parse_files(raw_files: Any, where: str, name: str, kind: str = "mavcli") -> list[FileEntry]:
    if not isinstance(raw_files, list) or not raw_files:
        raise ManifestError(f"{where}: 'files' must be a non-empty array of tables")

    files: list[FileEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(raw_files):
        entry = _parse_file(item, f"{where} files[{index}]")
        if entry.path in seen:
            raise ManifestError(f"{where}: {entry.path!r} is listed twice")
        seen.add(entry.path)
        files.append(entry)
    index = PACK_KINDS[kind]
    if index.startswith("*"):
        if sum(p.endswith(index[1:]) for p in seen) != 1:
            raise ManifestError(f"{where}: a {kind} pack holds exactly one {index[1:]} file")
    elif index not in seen:
        raise ManifestError(f"{where}: the files must include the pack index {index!r}")
    return files


def _parse_file(item: Any, where: str) -> FileEntry:
    if not isinstance(item, dict):
        raise ManifestError(f"{where} must be a table with path, sha256 and size")
    unknown = sorted(set(item) - _FILE_KEYS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: path, sha256, size"
        )
    missing = [key for key in ("path", "sha256") if key not in item]
    if item.get("sha256") != HUB_HASH and "size" not in item:
        missing.append("size")
    if missing:
        raise ManifestError(f"{where}: missing {', '.join(missing)}")

    path = item["path"]
    if not isinstance(path, str):
        raise ManifestError(f"{where}: 'path' must be a string")
    check_relative_path(path, what=f"{where}: path")
    if path.lower().endswith((".bin", ".ckpt", ".pt", ".pth", ".pkl")):
        raise ManifestError(f"{where}: {path} is a pickled weights file; mavcli downloads safetensors only")

    # `sha256 = "hub"` (size optional) only where no published hash exists (see FileEntry)
    sha = item["sha256"]
    if sha == HUB_HASH:
        sha = None
    elif not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        raise ManifestError(
            f"{where} ({path}): 'sha256' must be 64 hex digits (or \"{HUB_HASH}\": the hash the Hub "
            f"reports at the pinned revision), got {sha!r}"
        )

    size = item.get("size")
    # bool is an int subclass in Python: `size = true` is a typo, not a size.
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"{where} ({path}): 'size' must be a whole number of bytes >= 0")
    return FileEntry(path=path, sha256=None if sha is None else sha.lower(), size=size)


def manifest_entry(folder: str | Path, name: str, *, bundled: str | None = None, repo: str | None = None,
                   revision: str | None = None, description: str = "") -> str:
    """The weights.toml text that pins every file of a pack folder by sha256 and size."""
    from mavcli.weights.integrity import sha256_file

    folder = Path(folder)
    lines = [f"[packs.{name}]"]
    if repo:
        lines.append(f'repo = "{repo}"')
    if revision:
        lines.append(f'revision = "{revision}"')
    if bundled:
        lines.append(f'bundled = "{bundled}"')
    if description:
        lines.append(f"description = {description!r}".replace("'", '"'))
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        lines += ["", f"[[packs.{name}.files]]", f'path = "{rel}"', f'sha256 = "{sha256_file(path)}"',
                  f"size = {path.stat().st_size}"]
    text = "\n".join(lines) + "\n"
    parse_manifest(text, source="generated entry")  # what we write must read back
    return text
