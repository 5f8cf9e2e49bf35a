"""Fetch model packs from the Hugging Face Hub, file by file, and verify every byte.

`huggingface_hub.hf_hub_download` does the transfer (cache layout, locks, resume within a
run, HF_HOME / HF_HUB_CACHE / HF_TOKEN / HF_HUB_OFFLINE / HF_ENDPOINT); it only checks sizes,
so this module adds:

- a streamed sha256 of every file against weights.toml, one forced re-fetch of a file whose
  hash is wrong, and removal of a file that still fails (the snapshot link *and* its blob), so
  no later run can load it;
- a check that every `.safetensors` file parses as safetensors (header and offsets);
- error messages that say what is wrong and what to run, mapped to mavcli's exit codes:
  a missing repo, revision or file -> UserInputError (2); offline or unreachable Hub with
  files not cached -> PackError (2) naming them and the fetch command; a dropped connection
  or a corrupt transfer -> DownloadError (1).

huggingface_hub is imported lazily, inside the functions: it reads its environment variables
when first imported, and importing mavcli must have no side effects. This module never draws
progress itself: callers pass an object with the `DownloadProgress` methods.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from mavcli.errors import DownloadError, PackError, UserInputError
from mavcli.weights.integrity import hub_hash_problem, safetensors_problem, sha256_file
from mavcli.weights.manifest import (
    REPO_ID,
    FileEntry,
    ManifestError,
    PackEntry,
    check_relative_path,
)

__all__ = [
    "CachedPack",
    "DownloadProgress",
    "PACK_FORMAT",
    "download_pack",
    "download_repo",
    "find_cached_pack",
    "pack_files_from_index",
]

#: The `format` value of a pack index (pack.json).
PACK_FORMAT = "mavcli-pack"
#: Files that a pack may lack (a missing model card is not worth failing a download for).
_OPTIONAL_FILES = frozenset({"README.md"})
# Hidden staging folder inside --dir targets; removed when the download ends, either way.
_STAGING = ".mav-download"
# where the hashes that the Hub reported for unpinned files are recorded: beside the snapshot
# in the cache (<repo>/mavcli-verified/<revision>.json), or in a --dir folder
_RECORD_DIR = "mavcli-verified"
_DIR_RECORD = ".mavcli-verified.json"


class DownloadProgress(Protocol):
    """What the download functions report; the CLI implements it with a rich progress bar."""

    def file_started(self, path: str, total: int | None, initial: int) -> None:
        """A transfer of `path` begins: `total` bytes expected, `initial` already on disk."""

    def file_advanced(self, path: str, nbytes: int) -> None:
        """`nbytes` more bytes of `path` arrived (negative when a resume had to restart)."""

    def file_finished(self, path: str) -> None:
        """The transfer of `path` ended (successfully or not)."""

    def note(self, message: str) -> None:
        """Something the user should know (a hash mismatch being retried, a skipped file)."""


# --------------------------------------------------------------------------------------
# verification


def _hash_problem(path: Path, expected: FileEntry, recorded: dict[str, str] | None = None) -> str | None:
    """Why the file at `path` does not match its manifest entry (or, for a file the manifest
    pins no hash for, the hash recorded when it was verified against the Hub), or None."""
    size = os.path.getsize(path)
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, the manifest says {expected.size}"
    want, source = expected.sha256, "the manifest says"
    if want is None:
        want, source = (recorded or {}).get(expected.path), "it was verified as"
        if want is None:
            return "no verified hash is recorded for it"
    digest = sha256_file(path)
    if digest != want:
        return f"sha256 {digest[:16]}..., {source} {want[:16]}..."
    return None


def _record_file(root: Path, revision: str, *, in_dir: bool) -> Path:
    return root / _DIR_RECORD if in_dir else root.parent.parent / _RECORD_DIR / f"{revision}.json"


def read_record(path: Path) -> dict[str, str]:
    """The sha256s recorded for unpinned files (empty when there is no readable record)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def _write_record(path: Path, record: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _remove_from_cache(pointer: Path) -> None:
    """Delete a cached file so no later run uses it: the snapshot link and the blob it names."""
    blob: Path | None = None
    if pointer.is_symlink():
        target = Path(os.readlink(pointer))
        blob = target if target.is_absolute() else (pointer.parent / target)
    pointer.unlink(missing_ok=True)
    if blob is not None:
        blob.unlink(missing_ok=True)


def _snapshot_root(pointer: Path, relative: str) -> Path:
    """The folder that holds the whole pack, given one file's path and its pack-relative path."""
    depth = len(PurePosixPath(relative).parts)
    return pointer.parents[depth - 1]


# --------------------------------------------------------------------------------------
# huggingface_hub plumbing


def _hub() -> Any:
    """huggingface_hub, imported on first use (it reads HF_* variables at import)."""
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.errors

    return huggingface_hub


def _is_offline() -> bool:
    return bool(_hub().constants.is_offline_mode())


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of whichever HTTP client this huggingface_hub version uses."""
    found: list[type[BaseException]] = []
    for module_name, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                              ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        cls = getattr(module, attr, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    found.append(ConnectionError)
    return tuple(found)


def _tqdm_class(progress: DownloadProgress | None, path: str) -> type | None:
    """A tqdm-compatible class that forwards huggingface_hub's progress to `progress`.

    huggingface_hub builds it with `(total=, initial=, desc=, unit=, unit_scale=)`, uses it
    as a context manager and calls `.update(n)`; it reuses the same object across in-run
    resumes. It is never built when the file comes from the cache.
    """
    if progress is None:
        return None

    class _Adapter:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
            self.total = total
            self.n = initial
            self.disable = False
            self._closed = False
            progress.file_started(path, total, initial)

        def update(self, n: int | float | None = 1) -> None:
            step = int(n or 0)
            self.n += step
            progress.file_advanced(path, step)

        def close(self) -> None:
            if not self._closed:
                self._closed = True
                progress.file_finished(path)

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            """tqdm API; nothing to redraw here."""

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            """tqdm API; the file name is fixed."""

        def __enter__(self) -> _Adapter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    _Adapter.__name__ = "MavProgressAdapter"
    return _Adapter


class _NotCached(Exception):
    """Internal: the Hub could not be asked (offline or unreachable) and the file is not cached."""

    def __init__(self, reason: str, cause: BaseException | None = None):
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


def _short(revision: str) -> str:
    return revision[:12] if len(revision) == 40 else revision


def _fetch(
    repo: str,
    path: str,
    revision: str,
    *,
    cache_dir: str | Path | None,
    local_dir: Path | None,
    token: str | bool | None,
    progress: DownloadProgress | None,
    force: bool = False,
    local_files_only: bool = False,
) -> Path:
    """One `hf_hub_download` with its errors turned into mavcli errors (or `_NotCached`)."""
    hub = _hub()
    errors = hub.errors
    from mavcli import __version__

    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    where = f"{repo}@{_short(revision)}"
    try:
        result = hub.hf_hub_download(
            repo,
            path,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
            force_download=force,
            local_files_only=local_files_only,
            library_name="mavcli",
            library_version=__version__,
            tqdm_class=_tqdm_class(progress, path),
        )
        return Path(result)
    except errors.LocalEntryNotFoundError as err:
        reason = "offline" if (local_files_only or _is_offline()) else "unreachable"
        raise _NotCached(reason, err.__cause__ or err) from None
    except errors.OfflineModeIsEnabled as err:
        raise _NotCached("offline", err) from None
    except errors.GatedRepoError:
        raise UserInputError(
            f"Hub repository {repo!r} is gated: accept its terms on the Hub, then set HF_TOKEN "
            "(or run `hf auth login`)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise UserInputError(
            f"Hub repository {repo!r} was not found (if it is private, set HF_TOKEN to a token "
            "that can read it)"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserInputError(
            f"revision {revision!r} does not exist in Hub repository {repo!r}"
        ) from None
    except remote_missing:
        raise UserInputError(f"{path!r} does not exist in Hub repository {where}") from None
    except errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "an error")
        raise DownloadError(
            f"the Hub answered {status} while fetching {path} from {where}; try again later"
        ) from err
    except _transport_errors() as err:
        raise DownloadError(
            f"the connection broke while downloading {path} from {where} ({err}); nothing "
            "partial was kept: run the same command again"
        ) from err
    except ValueError as err:
        # force_download=True whose metadata request failed (the Hub went away mid-run).
        if force:
            raise DownloadError(
                f"could not fetch {path} from {where} again: {err.__cause__ or err}"
            ) from err
        raise
    except OSError as err:
        # "Consistency check failed" (size mismatch), disk full, permission denied.
        raise DownloadError(f"downloading {path} from {where} failed: {err}") from err


def _missing_error(
    name: str, missing: Iterable[str], command: str, reason: str, endpoint: str | None = None
) -> PackError:
    listed = ", ".join(missing)
    if reason == "offline":
        return PackError(
            f"pack {name!r} is not fully in the local cache and the Hub cannot be reached "
            f"(offline mode, HF_HUB_OFFLINE is set). Missing: {listed}. "
            f"Fetch them where the Hub is reachable (without HF_HUB_OFFLINE): {command}"
        )
    return PackError(
        f"could not reach the Hub{f' at {endpoint}' if endpoint else ''} and pack {name!r} is "
        f"not fully in the local cache. Missing: {listed}. "
        f"Check the connection, then run: {command}"
    )


# --------------------------------------------------------------------------------------
# manifest packs


@dataclass(frozen=True)
class CachedPack:
    """What the local Hugging Face cache holds of a manifest pack."""

    root: Path | None
    """The snapshot folder when every file is present (and verified, if asked), else None."""
    missing: tuple[str, ...]
    """Files not in the cache (including any removed because they failed verification)."""
    removed: tuple[str, ...] = ()
    """Files that were cached but failed verification, and were deleted."""

    @property
    def complete(self) -> bool:
        return self.root is not None


def find_cached_pack(
    entry: PackEntry, *, cache_dir: str | Path | None = None, verify: bool = True
) -> CachedPack:
    """Look the pack up in the Hugging Face cache; no network.

    With `verify`, every cached file is hashed against the manifest and a file that fails is
    deleted from the cache (it is reported in `removed` and `missing`). Without it, only
    presence and sizes are checked (cheap enough for `mav info`).
    """
    if not entry.downloadable:
        return CachedPack(None, ())
    assert entry.repo is not None and entry.revision is not None
    hub = _hub()
    missing: list[str] = []
    removed: list[str] = []
    found: dict[str, Path] = {}
    for file in entry.files:
        hit = hub.try_to_load_from_cache(entry.repo, file.path, cache_dir=cache_dir, revision=entry.revision)
        if isinstance(hit, str) and os.path.isfile(hit):
            found[file.path] = Path(hit)
    root = _snapshot_root(*next(iter((p, k) for k, p in found.items()))) if found else None
    recorded = read_record(_record_file(root, entry.revision, in_dir=False)) if root is not None else {}
    for file in entry.files:
        pointer = found.get(file.path)
        if pointer is None:
            missing.append(file.path)
            continue
        if verify:
            bad = _hash_problem(pointer, file, recorded) or (
                safetensors_problem(pointer) if file.path.endswith(".safetensors") else None
            )
        else:
            known = file.size is None or os.path.getsize(pointer) == file.size
            bad = None if known and (file.sha256 or file.path in recorded) else "not verified"
        if bad is not None:
            if verify and (file.sha256 is not None or file.path in recorded):
                _remove_from_cache(pointer)  # a file that fails its hash: nothing may load it
                removed.append(file.path)
            missing.append(file.path)  # an unrecorded file is fetched (and verified) again
    return CachedPack(None if missing else root, tuple(missing), tuple(removed))


def _hub_etag(repo: str, path: str, revision: str, token: str | bool | None) -> str:
    """The hash the Hub reports for a file at a revision (sha256 for LFS files, else the git
    blob sha1): its ETag, from a metadata request."""
    hub = _hub()
    try:
        meta = hub.get_hf_file_metadata(hub.hf_hub_url(repo, path, revision=revision), token=token)
    except _transport_errors() as err:
        raise DownloadError(f"could not ask the Hub for the hash of {path} ({err}); run the same command again") from err
    except hub.errors.HfHubHTTPError as err:
        raise DownloadError(f"the Hub did not report the hash of {path} ({err})") from err
    if not meta.etag:
        raise DownloadError(f"the Hub reported no hash for {path} at {_short(revision)}; it cannot be verified")
    return meta.etag


#: space left free on the disk a download fills, beyond the files themselves
SPACE_MARGIN = 256 * 2**20


def _file_sizes(entry: PackEntry, files: Iterable[FileEntry], token: str | bool | None) -> int | None:
    """Bytes of `files`: the manifest's sizes, and for files it gives none, the sizes the Hub
    reports (a metadata request each). None when the Hub cannot say (the download would then
    fail on its own terms)."""
    assert entry.repo is not None and entry.revision is not None
    hub = _hub()
    total = 0
    for file in files:
        if file.size is None:
            try:
                meta = hub.get_hf_file_metadata(hub.hf_hub_url(entry.repo, file.path, revision=entry.revision), token=token)
            except (*_transport_errors(), hub.errors.HfHubHTTPError):
                return None
            if meta.size is None:
                return None
        total += file.size if file.size is not None else meta.size
    return total


def check_space(entry: PackEntry, files: Iterable[FileEntry], where: Path, token: str | bool | None = None) -> None:
    """Refuse (UserInputError), before any transfer, a download of `files` that would not fit on
    the disk holding `where` (a folder, or the nearest parent that exists), keeping
    `SPACE_MARGIN` free."""
    files = list(files)
    need = _file_sizes(entry, files, token) if files else 0
    if not need:
        return
    from mavcli.runtime import disk_free, size_text

    free = disk_free(where)
    if need + SPACE_MARGIN > free:

        raise UserInputError(
            f"pack {entry.name!r} needs {size_text(need)} more in {where} and its disk has {size_text(free)} "
            "free; free some space there, or put the download on another disk (HF_HOME, or --dir)")


def _fetch_verified(
    entry: PackEntry,
    file: FileEntry,
    *,
    cache_dir: str | Path | None,
    local_dir: Path | None,
    token: str | bool | None,
    progress: DownloadProgress | None,
) -> tuple[Path, str]:
    """Fetch one manifest file, check its hash (re-fetching once) and its safetensors layout.
    A file the manifest pins no hash for is checked against the hash the Hub reports for it
    at the pinned revision. Returns the path and the file's verified sha256."""
    assert entry.repo is not None and entry.revision is not None
    kwargs: dict[str, Any] = dict(
        cache_dir=cache_dir, local_dir=local_dir, token=token, progress=progress
    )
    where = f"{entry.repo}@{_short(entry.revision)}"
    path = _fetch(entry.repo, file.path, entry.revision, **kwargs)
    if file.sha256 is None:
        etag = _hub_etag(entry.repo, file.path, entry.revision, token)

        def check(p: Path) -> str | None:
            return hub_hash_problem(p, etag)
    else:
        def check(p: Path) -> str | None:
            return _hash_problem(p, file)
    problem = check(path)
    if problem is not None:
        if progress is not None:
            progress.note(f"{file.path} failed verification ({problem}); downloading it again")
        path = _fetch(entry.repo, file.path, entry.revision, force=True, **kwargs)
        problem = check(path)
        if problem is not None:
            _discard(path, local_dir)
            raise DownloadError(
                f"{file.path} from {where} failed verification twice ({problem}); it was "
                "deleted so that nothing uses it. The copy on the Hub, or the transfer, is "
                "corrupt: try again later, or report it if it keeps failing"
            )
    if file.path.endswith(".safetensors"):
        bad = safetensors_problem(path)
        if bad is not None:
            _discard(path, local_dir)
            raise PackError(
                f"{file.path} from {where} matches its manifest hash but is not a valid "
                f"safetensors file ({bad}); it was deleted. The pack or weights.toml is broken"
            )
    digest = file.sha256 or (etag.strip('"').lower() if len(etag.strip('"')) == 64 else sha256_file(path))
    return path, digest


def _discard(path: Path, local_dir: Path | None) -> None:
    if local_dir is None:
        _remove_from_cache(path)
    else:
        path.unlink(missing_ok=True)


def _prepare_dir(local_dir: str | Path) -> Path:
    target = Path(local_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise UserInputError(f"--dir {str(target)!r} exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create folder {str(target)!r}: {err.strerror or err}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserInputError(f"folder {str(target)!r} is not writable")
    return target.resolve()


def _place(staged: Path, final: Path) -> None:
    """Move a verified file from the staging folder to its final name in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


def _copy_atomic(source: Path, final: Path) -> None:
    """Copy `source` to `final` through a temporary name, so `final` is whole or absent."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def download_pack(
    entry: PackEntry,
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: DownloadProgress | None = None,
    fetch_command: str | None = None,
) -> Path:
    """Download every file of a manifest pack at its pinned revision and verify it.

    Returns the pack folder: the snapshot folder in the Hugging Face cache (`cache_dir`, by
    default HF_HUB_CACHE / HF_HOME), or `local_dir` when given, filled as a plain folder
    (files appear under their final names only once verified). Files already present and
    verified are not fetched again; with a 40-hex revision a cached file costs no request.

    `fetch_command` is the command quoted in "missing files" errors (default
    `mav download weights NAME`).
    """
    if not entry.downloadable:
        raise PackError(f"pack {entry.name!r} only ships inside mavcli; there is nothing to download")
    assert entry.repo is not None and entry.revision is not None
    command = fetch_command or f"mav download weights {entry.name}"
    if local_dir is not None:
        return _download_pack_to_dir(entry, _prepare_dir(local_dir), cache_dir, token, progress, command)

    if _is_offline():
        # Every file must already be here: say at once which are not, instead of failing on the first.
        state = find_cached_pack(entry, cache_dir=cache_dir)
        if state.complete:
            assert state.root is not None
            return state.root
        _note_removed(progress, state.removed)
        raise _missing_error(entry.name, state.missing, command, "offline")

    missing = set(find_cached_pack(entry, cache_dir=cache_dir, verify=False).missing)
    check_space(entry, [f for f in entry.files if f.path in missing], Path(cache_dir or _hub().constants.HF_HUB_CACHE),
                token)
    root: Path | None = None
    record: dict[str, str] = {}
    for file in entry.files:
        try:
            path, digest = _fetch_verified(
                entry, file, cache_dir=cache_dir, local_dir=None, token=token, progress=progress
            )
        except _NotCached as err:
            state = find_cached_pack(entry, cache_dir=cache_dir, verify=False)
            missing = state.missing or (file.path,)
            raise _missing_error(
                entry.name, missing, command, err.reason, _hub().constants.ENDPOINT
            ) from None
        root = _snapshot_root(path, file.path)
        if file.sha256 is None:
            record[file.path] = digest
    assert root is not None
    if record:
        target = _record_file(root, entry.revision, in_dir=False)
        _write_record(target, {**read_record(target), **record})
    return root


def _note_removed(progress: DownloadProgress | None, removed: Iterable[str]) -> None:
    if progress is not None:
        for path in removed:
            progress.note(f"{path} in the cache failed verification and was deleted")


def _usable_copy(cached: object, file: FileEntry, recorded: dict[str, str]) -> bool:
    """Whether `cached` (a try_to_load_from_cache result) is a verified copy of `file`."""
    if not isinstance(cached, str) or not os.path.isfile(cached):
        return False
    if _hash_problem(Path(cached), file, recorded) is not None:
        return False
    return not file.path.endswith(".safetensors") or safetensors_problem(cached) is None


def _download_pack_to_dir(
    entry: PackEntry,
    target: Path,
    cache_dir: str | Path | None,
    token: str | bool | None,
    progress: DownloadProgress | None,
    command: str,
) -> Path:
    assert entry.repo is not None and entry.revision is not None
    hub = _hub()
    offline = _is_offline()
    staging = target / _STAGING
    missing: list[str] = []
    record_path = _record_file(target, entry.revision, in_dir=True)
    record = read_record(record_path)
    if not offline:  # a file of the right size is there already (the loop below verifies it)
        check_space(entry, [f for f in entry.files if not (target / f.path).is_file()
                            or f.size is not None and (target / f.path).stat().st_size != f.size], target, token)
    try:
        for file in entry.files:
            final = target / file.path
            if final.is_file() and _hash_problem(final, file, record) is None:
                continue  # already there and verified
            # A verified copy in the HF cache saves a download (and works offline).
            cached = hub.try_to_load_from_cache(
                entry.repo, file.path, cache_dir=cache_dir, revision=entry.revision
            )
            cache_record: dict[str, str] = {}
            if isinstance(cached, str) and file.sha256 is None:
                root = _snapshot_root(Path(cached), file.path)
                cache_record = read_record(_record_file(root, entry.revision, in_dir=False))
            if _usable_copy(cached, file, cache_record):
                _copy_atomic(Path(cached), final)
                if file.sha256 is None:
                    record[file.path] = cache_record[file.path]
                    _write_record(record_path, record)
                continue
            if offline:
                missing.append(file.path)
                continue
            try:
                staged, digest = _fetch_verified(
                    entry, file, cache_dir=cache_dir, local_dir=staging, token=token, progress=progress
                )
            except _NotCached as err:
                rest = [f.path for f in entry.files if not (target / f.path).is_file()]
                endpoint = hub.constants.ENDPOINT
                raise _missing_error(entry.name, rest, command, err.reason, endpoint) from None
            _place(staged, final)
            if file.sha256 is None:
                record[file.path] = digest
                _write_record(record_path, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if missing:
        raise _missing_error(entry.name, missing, f"{command} --dir {target}", "offline")
    return target


# --------------------------------------------------------------------------------------
# ad-hoc repositories (--repo / --revision): no pinned hashes


def pack_files_from_index(index: Any) -> list[str]:
    """The files a pack index (pack.json) implies, pack.json first.

    Accepts `stages` as a table {stage: file} (what mavcli.weights.pack writes), or a list
    of names (file `<name>.safetensors`) or of tables with `file`/`path` or `name`; an
    optional explicit `files` list; an optional `tokenizer` file name (default
    `tokenizer.json`). `README.md` (the model card) is always listed (it is optional when
    downloading). Every name is checked not to escape the pack folder.
    """
    if not isinstance(index, dict):
        raise PackError("pack.json is not a JSON object")
    if index.get("format") != PACK_FORMAT:
        raise PackError(
            f"pack.json has format {index.get('format')!r}, expected {PACK_FORMAT!r}: "
            "this is not a mavcli pack"
        )
    names: list[str] = ["pack.json"]
    stages = index.get("stages", [])
    if isinstance(stages, dict):  # {stage: file name}, as mavcli.weights.pack writes it
        for stage, file in stages.items():
            if not isinstance(file, str):
                raise PackError(f"pack.json: stage {stage!r} names no file")
            names.append(file)
        stages = []
    if not isinstance(stages, list):
        raise PackError("pack.json: 'stages' must map stage names to files")
    for stage in stages:
        if isinstance(stage, str):
            names.append(f"{stage}.safetensors")
        elif isinstance(stage, dict):
            file = stage.get("file") or stage.get("path")
            if file is None and isinstance(stage.get("name"), str):
                file = f"{stage['name']}.safetensors"
            if not isinstance(file, str):
                raise PackError(f"pack.json: stage entry {stage!r} names no file")
            names.append(file)
        else:
            raise PackError(f"pack.json: stage entry {stage!r} is neither a name nor a table")
    extra = index.get("files", [])
    if not isinstance(extra, list):
        raise PackError("pack.json: 'files' must be a list")
    for item in extra:
        file = item.get("path") if isinstance(item, dict) else item
        if not isinstance(file, str):
            raise PackError(f"pack.json: file entry {item!r} is not a path")
        names.append(file)
    tokenizer = index.get("tokenizer", "tokenizer.json")
    if isinstance(tokenizer, dict):
        tokenizer = tokenizer.get("file", "tokenizer.json")
    if not isinstance(tokenizer, str):
        raise PackError("pack.json: 'tokenizer' must be a file name")
    names += [tokenizer, "README.md"]

    unique: list[str] = []
    for name in names:
        try:
            check_relative_path(name, what="pack.json names file")
        except ManifestError as err:
            raise PackError(str(err)) from None
        if name not in unique:
            unique.append(name)
    return unique


def _read_index(path: Path, where: str) -> list[str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackError(f"pack.json of {where} is not valid JSON ({err})") from None
    return pack_files_from_index(index)


def download_repo(
    repo: str,
    revision: str = "main",
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: DownloadProgress | None = None,
    local_files_only: bool = False,
) -> Path:
    """Fetch any pack-layout Hub repository: pack.json first, then every file it lists.

    No hashes are pinned for such a repository: only sizes (checked by huggingface_hub) and
    the safetensors layout of each `.safetensors` file are verified. A branch `revision` is
    resolved to one commit by the pack.json request and every other file is fetched at that
    commit, so the pack cannot mix two versions. With `local_files_only` nothing is
    requested: the pack must already be in the cache.
    Returns the pack folder (cache snapshot, or `local_dir`).
    """
    if not REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo:
        raise UserInputError(f"{repo!r} is not a Hub repository id (expected 'owner/name')")
    if not revision or "\\" in revision or revision != revision.strip():
        raise UserInputError(f"{revision!r} is not a valid revision")
    command = f"mav download weights --repo {repo} --revision {revision}"
    offline = local_files_only or _is_offline()

    if local_dir is not None:
        target = _prepare_dir(local_dir)
        staging = target / _STAGING
        try:
            return _download_repo_files(
                repo, revision, staging, target, cache_dir, token, progress, offline, command
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _download_repo_files(repo, revision, None, None, cache_dir, token, progress, offline, command)


def _download_repo_files(
    repo: str,
    revision: str,
    staging: Path | None,
    target: Path | None,
    cache_dir: str | Path | None,
    token: str | bool | None,
    progress: DownloadProgress | None,
    offline: bool,
    command: str,
) -> Path:
    hub = _hub()
    where = f"{repo}@{_short(revision)}"
    fetch = dict(cache_dir=cache_dir, local_dir=staging, token=token, progress=progress,
                 local_files_only=offline)

    def missing(reason: str, files: list[str]) -> PackError:
        return _missing_error(repo, files, command, reason, hub.constants.ENDPOINT)

    try:
        index_path = _fetch(repo, "pack.json", revision, **fetch)
    except _NotCached as err:
        raise missing(err.reason, ["pack.json"]) from None
    commit = revision
    if staging is None:
        commit = index_path.parent.name  # snapshots/<commit>/pack.json
    elif not offline and len(revision) != 40:
        # --dir keeps no snapshot folder to read the commit from: ask for it once.
        url = hub.hf_hub_url(repo, "pack.json", revision=revision)
        commit = hub.get_hf_file_metadata(url, token=token).commit_hash or revision
    files = _read_index(index_path, where)
    if target is not None:
        _place(index_path, target / "pack.json")

    not_cached: list[str] = []
    for name in files[1:]:
        try:
            path = _fetch(repo, name, commit, **fetch)
        except _NotCached as err:
            if name in _OPTIONAL_FILES:
                continue
            if err.reason == "offline":
                not_cached.append(name)
                continue
            raise missing(err.reason, [name]) from None
        except UserInputError:
            if name in _OPTIONAL_FILES:
                if progress is not None:
                    progress.note(f"{where} has no {name}; continuing without it")
                continue
            raise
        if name.endswith(".safetensors"):
            bad = safetensors_problem(path)
            if bad is not None:
                _discard(path, staging)
                raise PackError(
                    f"{name} from {where} is not a valid safetensors file ({bad}); it was deleted"
                )
        if target is not None:
            _place(path, target / name)
    if not_cached:
        raise missing("offline", not_cached)
    if target is not None:
        return target
    return index_path.parent
