"""Atomic file output: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import csv
import glob
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["atomic_output", "stale_temporaries", "write_json_atomic", "write_csv_atomic"]


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


def stale_temporaries(path: str | os.PathLike) -> list[str]:
    """The temporary files :func:`atomic_output` left for ``path`` when its process was killed while writing."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*tmp*"))


def write_json_atomic(data: Any, path: str, overwrite: bool = False, indent: int = 4) -> str:
    """
    Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.
    A reader never sees a half-written file, and an interrupted write leaves any old file intact.

    Args:
        data: JSON-serialisable object.
        path: destination file; its folder is created if needed.
        overwrite: replace an existing file; otherwise an existing ``path`` raises ``FileExistsError``.
        indent: JSON indentation.

    Returns:
        the absolute path written.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give the path of the JSON file to write.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite True) to replace it.")
    text = json.dumps(data, indent=indent) + "\n"  # serialise before creating any file
    with atomic_output(path) as temporary, open(temporary, "w") as f:
        f.write(text)
    return path


def write_csv_atomic(path: str, rows: Sequence[Sequence[Any]]) -> str:
    """Write ``rows`` (header first) as CSV through a temporary file and a rename; returns ``path``."""
    with atomic_output(path, suffix=".csv.tmp") as temporary, open(temporary, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path
