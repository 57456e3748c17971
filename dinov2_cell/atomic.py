"""Atomic file writes: write to a temporary file beside the destination, then ``os.replace`` it into place.

A crash or a kill never leaves a half-written file under the final name, and an existing file is never replaced
unless the caller says so (``overwrite=True``), so earlier outputs and checkpoints are not lost silently. The file
ends with the permissions a plain ``open()`` would give under the current umask (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise unless ``path`` is free or may be overwritten.

    Args:
        path: destination.
        overwrite: whether replacing an existing file is allowed.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (the message names the path and the flag).
    """
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{os.fspath(path)} already exists; refusing to overwrite it (pass --overwrite)")


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in the destination's folder; on success it is renamed to ``path``.

    With ``suffix=""`` the temporary name ends with the destination's own extension, for writers that choose the
    format from it (``np.save`` appends ``.npy`` otherwise; ``to_csv`` infers compression from ``.gz``).

    Args:
        path: final destination.
        overwrite: allow replacing an existing file (checked before anything is written).
        suffix: suffix of the temporary name.

    Yields:
        The temporary path to write to. On an exception it is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    refuse_existing(path, overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    if suffix:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=suffix)
    else:
        # Keep the real extension last (e.g. ".x.npy" -> ".x.<rand>.npy") for writers that key on it.
        stem, ext = os.path.splitext(base)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=ext)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; end with the mode a plain open() gives, so collaborators can read shared outputs
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> str:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: destination.
        data: the bytes.
        overwrite: allow replacing an existing file.

    Returns:
        The path written.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> str:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Args:
        path: destination.
        text: the text.
        overwrite: allow replacing an existing file.

    Returns:
        The path written.
    """
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
