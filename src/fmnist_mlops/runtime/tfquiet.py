"""TensorFlow's start-up banner, printed twice per process, kept out of every command's output.

Two of TensorFlow's shared libraries each log "oneDNN custom operations are on" (and absl's
"All log messages before absl::InitializeLog()") straight to file descriptor 2 while they load;
``TF_CPP_MIN_LOG_LEVEL`` does not reach those lines. :func:`install` makes the process's first
``import tensorflow`` run with descriptor 2 captured and passes on every other line, so
nothing but the banner is dropped. Nothing is imported here.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

BANNER = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def install() -> None:
    """Quiet TensorFlow's logging and drop its banner from the first ``import tensorflow``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


@contextlib.contextmanager
def without_banner() -> Iterator[None]:
    """Capture descriptor 2 for the block; afterwards write back all but the banner's lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in BANNER):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with without_banner():
            self.inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not come back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec
