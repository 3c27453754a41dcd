"""Crash-safe file writes: write a hidden sibling file, then rename it into place.

A reader (or a later run) therefore sees either the old file or the complete new
one, never a truncated or 0-byte file at the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdvideo.errors import UserError

# Linux NAME_MAX; temp names must stay under it even for long stems.
_NAME_MAX = 255

# Errors raised while writing data that are about the destination, not about the data:
# a full disk, a quota, or a file-size limit on the process (RLIMIT_FSIZE, with SIGXFSZ ignored).
DEST_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def destination_full(exc: BaseException) -> OSError | None:
    """The full-disk OSError behind `exc`, also when a library wrapped it in its own type.

    torch.save raises a RuntimeError whose context is the OSError; safetensors' Rust writer
    raises SafetensorError naming "os error N".
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DEST_FULL:
            return seen
        code = re.search(r"os error (\d+)", str(seen))
        if code and int(code.group(1)) in DEST_FULL:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        seen = seen.__cause__ or seen.__context__
    return None


def _cannot_write(directory: Path, reason: str | BaseException) -> UserError:
    if isinstance(reason, OSError):
        reason = reason.strerror or str(reason)
    return UserError(f"cannot write to {directory}: {reason}; choose another --output")


def _make_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise _cannot_write(directory, "exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        # Raised when the path (not a parent) is an existing non-directory.
        raise _cannot_write(directory, "exists and is not a directory") from exc
    except OSError as exc:
        raise _cannot_write(directory, exc) from exc


@contextlib.contextmanager
def _full_disk_is_user_error(directory: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        full = destination_full(exc)
        if full:
            raise UserError(
                f"cannot write to {directory}: {full.strerror}; free some space or choose another --output "
                "(files written before are intact)"
            ) from exc
        raise


def _temp_name(name: str) -> str:
    # The real suffix stays at the end so ffmpeg/imageio/Pillow infer the format from it;
    # the leading dot keeps half-written files out of casual listings and globs.
    p = Path(name)
    stem, suffix = (p.stem, p.suffix) if p.suffix else (name, "")
    tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    room = _NAME_MAX - len(tag) - len(suffix) - 1
    return f".{stem[: max(room, 1)]}{tag}{suffix}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write to; rename it over `path` on success.

    The temp file already exists (empty) when yielded. On any exception it is removed and
    an existing file at `path` is left untouched. Unusable destinations raise UserError.
    """
    final = Path(path)
    directory = final.parent
    _make_dir(directory)
    tmp = directory / _temp_name(final.name)
    try:
        # O_EXCL: never clobber someone else's temp; 0o666 so umask decides, as for open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise _cannot_write(directory, exc) from exc
    try:
        with _full_disk_is_user_error(directory):
            yield tmp
        # Flush data before the rename so a power loss cannot leave an empty file in place.
        _fsync_path(tmp)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise _cannot_write(directory, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], keep_existing: bool = False) -> Iterator[Path]:
    """Like `atomic_path` for a folder: fill the yielded temp folder; it replaces `path` on success.

    With `keep_existing`, a filled folder that another writer put at `path` meanwhile stays and the temp
    folder is dropped: the first writer wins, and no reader ever sees the folder half-written or removed."""
    final = Path(path)
    _make_dir(final.parent)
    tmp = final.parent / _temp_name(final.name)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise _cannot_write(final.parent, exc) from exc
    try:
        with _full_disk_is_user_error(final.parent):
            yield tmp
        if keep_existing:
            try:
                os.rename(tmp, final)  # fails onto a folder that is not empty
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp)
        else:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace `path` with `data`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace `path` with `text` (no newline translation)."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write `obj` as JSON: indent 2, key order kept, trailing newline."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_yaml_atomic(path: str | os.PathLike[str], obj: Any, header: str = "") -> Path:
    """Atomically write `obj` as block-style YAML, key order kept, after `header` (e.g. comments)."""
    import yaml

    return write_text_atomic(path, header + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create directory `path` (with parents) and prove it is writable with a probe file."""
    directory = Path(path)
    _make_dir(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _cannot_write(directory, exc) from exc
    return directory
