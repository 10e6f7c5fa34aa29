"""The one way files are written and locked: atomic publishing, JSON and text, a host-wide lock.

A leaf: imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """The one way files are published: write the yielded path, it replaces ``path`` at the end.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic) and
    keeps its suffix (Keras and matplotlib choose the format by it). A reader, DVC included,
    sees the old file or the new one, never half of one; on an error the temporary is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic`)."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON atomically: a reader sees the old file or the new one."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """The one inter-process lock of this host: an exclusive ``flock`` on ``path``.

    The kernel drops it when the holder dies, so a killed process never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` atomically; the suffix picks the format.

    Figures are made as ``matplotlib.figure.Figure`` objects, never through pyplot: no
    backend, no screen and no global figure list to close.
    """
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path
