"""Atomic file output: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """
    Yields a temporary file path in the folder of ``path`` (created if needed) for the caller to write. When the
    block ends without error the file is flushed to disk and renamed onto ``path``; on any error, a kill
    included, ``path`` keeps its old content and the temporary file is removed (or, after a kill, left as a
    hidden ``.<name>.*`` file).

    Args:
        path: the destination file.
        suffix: end of the temporary name; keep the extension a writer picks its format by, e.g. ``.tmp.nii.gz``.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
