"""Integrity of weight files: content hashes and the safetensors check, shared by the Hub
downloads (`hub.py`), the manifest (`manifest.py`), bundled and folder packs.

- `sha256_file`: what weights.toml pins and a folder pack records.
- `git_blob_sha1_file`: what the Hub reports (its ETag) for a file it does not store with LFS,
  so a small file with no pinned hash can still be checked against the Hub's own record.
- `safetensors_problem`: the `safetensors` library opens the file and reads every tensor's
  header entry; it refuses a bad header, offsets outside the buffer, gaps and overlaps.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20

__all__ = ["git_blob_sha1_file", "hub_hash_problem", "safetensors_problem", "sha256_file"]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1_file(path: str | Path) -> str:
    """Git's object id of the file: sha1 of `blob <size>\\0` + content."""
    digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_hash_problem(path: str | Path, etag: str) -> str | None:
    """Why `path` differs from the Hub's ETag for it (sha256 for LFS files, git blob sha1 for
    the rest), or None when it matches."""
    etag = etag.strip('"').lower()
    if len(etag) == 64:
        got, kind = sha256_file(path), "sha256"
    elif len(etag) == 40:
        got, kind = git_blob_sha1_file(path), "git blob sha1"
    else:
        return f"the Hub reported no usable hash ({etag[:20]!r})"
    return None if got == etag else f"{kind} {got[:16]}..., the Hub reports {etag[:16]}..."


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a valid safetensors file, or None if it is."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own error types (SafetensorError, ...)
        return str(err) or type(err).__name__
    return None
