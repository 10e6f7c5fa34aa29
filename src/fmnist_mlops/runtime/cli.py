"""What every entry point does around its stage function: logging and one-line errors."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fmnist_mlops.runtime.errors import (
    Interrupted,
    ProjectError,
    inside_store_call,
    note_signal,
    raise_if_interrupted,
)

# A plain `pip install -e .` on Linux x86_64 has no TensorFlow: the build is an extra there.
MISSING_TF = (
    "TensorFlow is not installed in this environment: `make install`, or "
    "pip install -e '.[cpu]' (or '.[gpu]' on a Linux x86_64 GPU host)"
)


def setup_logging() -> None:
    """One line per event on stderr; the stage name starts each message."""
    # MLflow draws a progress bar for every tiny artifact download; in logs that is noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    quiet_mlflow()
    for noisy in ("alembic", "mlflow", "absl", "h5py", "matplotlib", "urllib3", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plain_warnings()


def quiet_mlflow() -> None:
    """MLflow's own loggers at WARNING unless the user set ``MLFLOW_LOGGING_LEVEL``.

    MLflow sets its loggers' levels when it is imported, which is after a command starts (lazy
    imports), so a logger level set here would be undone: without the variable, opening a fresh
    store prints its migrations' INFO lines beside a command's one-line refusal.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_warnings() -> None:
    """Print warnings without terminal colour codes when stderr is not a terminal.

    MLflow colours some warnings with ANSI escapes; in DVC logs, CI output and files they
    arrive as ``[33m...[0m`` noise.
    """
    if getattr(warnings.formatwarning, "_plain", False):
        return
    original = warnings.formatwarning

    def formatwarning(*args: Any, **kwargs: Any) -> str:
        text = original(*args, **kwargs)
        return text if sys.stderr.isatty() else _ANSI.sub("", text)

    formatwarning._plain = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


def skip_exit_collection() -> None:
    """Spare the interpreter its last garbage collection over everything TensorFlow loaded.

    At exit Python walks every tracked object (millions, once TensorFlow, Keras and MLflow
    are imported) looking for cycles to free, memory the OS reclaims anyway: 1.7 s of every
    stage's wall time on the reference machine. Freezing the heap in an exit handler skips that
    walk; the other exit handlers and the flushing of files and streams still run.
    """
    atexit.unregister(gc.freeze)  # once per process, however many jobs a sweep runs
    atexit.register(gc.freeze)


def _raise_interrupted(signum: int, frame: Any) -> None:
    note_signal(signum)
    if inside_store_call(frame):
        return  # raised at the next check: a batch's end, or when the stage returns
    raise Interrupted(signum)


def die_with_parent() -> None:
    """Under DVC, get SIGTERM when ``dvc`` dies instead of training on as an orphan.

    DVC does not forward SIGTERM to the stage command, which it starts through ``$SHELL -c``
    (a shell that may or may not stay in between). So: ask Linux for SIGTERM when the direct
    parent dies (``PR_SET_PDEATHSIG``), and watch the ``dvc`` ancestor itself from a daemon
    thread, which signals this process when that ancestor is gone.
    """
    if not os.environ.get("DVC_ROOT"):
        return
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request was in place
            raise Interrupted(signal.SIGTERM)
    import psutil

    try:
        dvc = next(
            (
                p
                for p in psutil.Process().parents()
                if any(os.path.basename(part) == "dvc" for part in p.cmdline()[:3])
            ),
            None,
        )
    except psutil.Error:
        dvc = None
    if dvc is None:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                alive = dvc.is_running() and dvc.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="dvc-watchdog", daemon=True).start()


def run(
    stage: str,
    fn: Callable[[DictConfig], Any],
    cfg: DictConfig,
    on_success: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> Any:
    """Call ``fn(cfg)``; print its result as JSON.

    A :class:`ProjectError` becomes one line on stderr and exit 2; SIGTERM/SIGINT become
    :class:`Interrupted` (the stage marks its MLflow run KILLED) and exit 128 + signal number.
    With ``on_error`` (a job of a sweep) any error is reported in one line and handed to it,
    and ``run`` returns None so the sweep goes on; an interruption still ends everything.
    """
    setup_logging()
    skip_exit_collection()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    try:
        die_with_parent()
        result = fn(cfg)
        raise_if_interrupted()  # a signal that arrived inside a store call and was held back
    except Exception as exc:
        if on_error is None:
            sys.exit(fail(stage, exc))
        known = isinstance(exc, ProjectError)
        print(
            f"{stage}: error: {exc if known else f'{type(exc).__name__}: {exc}'}", file=sys.stderr
        )
        on_error(exc)
        return None
    except Interrupted as exc:
        sys.exit(fail(stage, exc))
    if on_success is not None:
        on_success(result)
    if result is not None:
        print(json.dumps(result, default=str))
    return result


def fail(stage: str, exc: BaseException) -> int:
    """The one failure path: a known error becomes one line on stderr and its exit code.

    :class:`ProjectError` (bad input, an unusable setting) and a missing TensorFlow give exit
    2; an interruption gives 128 + the signal number. Anything else is a bug: re-raised, so
    its traceback shows.
    """
    if isinstance(exc, Interrupted):
        print(f"{stage}: {exc}; nothing was registered", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, ModuleNotFoundError) and exc.name in ("tensorflow", "keras"):
        print(f"{stage}: error: {MISSING_TF}", file=sys.stderr)
        return 2
    if isinstance(exc, ProjectError):
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return 2
    raise exc


def command(stage: str, main: Callable[[], int | None]) -> None:
    """Run a plain command-line ``main`` (``src/params.py``, ``src/predict.py``, ...).

    The same failure path as the Hydra stages (:func:`fail`); SIGTERM and SIGINT end it as
    an interruption. Exits with ``main``'s return value.
    """
    quiet_mlflow()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    try:
        code = main()
    except (Exception, Interrupted) as exc:
        code = fail(stage, exc)
    sys.exit(code or 0)


def entry(stage: str, hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point; Hydra's own errors become one line and exit 2.

    An unknown key or group option, an override that does not parse, or a config that does
    not compose is a user error like any other: ``<stage>: error: <what>``, no traceback.
    Errors raised inside the stage keep their own handling (:func:`run`).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra prints a shortened message and exits 1 unless asked for the exception itself.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        # Hydra appends its config search path: noise for the user, who asked for a key.
        text = str(exc).split("Config search path:")[0]
        print(f"{stage}: error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(2)
