"""What every benchmark shares: where things are, the environment, timing a process, medians.

Benchmarks are scripts (``python benchmarks/<name>.py``): this folder is first on their
``sys.path``, so they import this module by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from fmnist_mlops.runtime.processes import stop_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
PROBES = ROOT / "benchmarks" / "probes"


def env(**extra: str) -> dict[str, str]:
    """This environment with the venv first on PATH, unbuffered, no MLflow/DVC settings."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONUNBUFFERED"] = "1"
    out.update(extra)
    return out


def config(overrides: list[str] | None = None):
    """The project's validated config (``conf/`` plus ``overrides``), as every stage reads it."""
    from fmnist_mlops.config.compose import compose, validate

    return validate(compose(overrides or [], config_dir=ROOT / "conf"))


def system_data() -> Path:
    """The system folder of the real data set (``data.system_dir``)."""
    return Path(config().data.system_dir)


def keras_home(tmp: Path) -> Path:
    """A Keras home whose dataset cache holds the real files: the seed's load_data, offline."""
    home = tmp / "keras-home"
    cache = home / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True, exist_ok=True)
    for gz in system_data().glob("*.gz"):
        target = cache / gz.name
        if not target.exists():
            target.symlink_to(gz)
    return home


def probe(script: str, *args: str) -> str:
    """Run ``benchmarks/probes/<script>`` in its own process; its last line of output."""
    out = subprocess.run(
        [sys.executable, str(PROBES / script), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    )
    return out.stdout.strip().splitlines()[-1]


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def _exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark like Ctrl-C does: as an exception.

    So the running command is stopped and temporary clones are removed; by default Python dies
    at once and leaves both.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def run_timed(cmd: list[str], cwd: Path, environ: dict[str, str]) -> dict:
    """Run ``cmd``; stamp every stdout line; sample the process tree's RSS every 0.1 s.

    ``cmd`` runs in its own process group: if the benchmark is interrupted (Ctrl-C, SIGTERM),
    the command and everything it started are stopped before the exception goes on.
    """
    _exit_on_sigterm()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
    )
    try:
        return _timed(proc, cmd, started)
    except BaseException:
        stop_group(proc)
        raise


def _timed(proc: subprocess.Popen, cmd: list[str], started: float) -> dict:
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    err_chunks: list[bytes] = []
    threading.Thread(target=sample, daemon=True).start()
    threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True).start()
    lines: list[tuple[float, str]] = []
    buf = b""
    try:
        for chunk in iter(lambda: proc.stdout.read(4096), b""):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append((time.monotonic() - started, line.decode(errors="replace")))
        proc.wait()
    finally:
        done.set()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = b"".join(err_chunks).decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return {"seconds": seconds, "lines": lines, "peak_rss_mb": peak[0] / 2**20}


def mid(values: list[float | None]) -> dict:
    """Median (min-max) over runs; a run that never got there counts as infinitely slow."""
    never = sum(v is None for v in values)
    reached = [v for v in values if v is not None]
    median = statistics.median(reached + [float("inf")] * never) if values else None
    return {
        "median": None if median in (None, float("inf")) else median,
        "min": min(reached) if reached else None,
        "max": max(reached) if reached else None,
        "n": len(values),
        "never": never,
    }


def fmt(stat: dict, digits: int = 1) -> str:
    """A :func:`mid` result as ``median (min–max)``, saying how many runs never got there."""
    if stat["median"] is None:
        return f"never ({stat['never']} of {stat['n']} runs)" if stat["n"] else "–"
    if stat["never"]:
        return f"{stat['median']:.{digits}f} ({stat['never']} of {stat['n']} runs never)"
    if stat["n"] == 1:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def table_row(*cells: object) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def each(values: list[float | None], spec: str) -> str:
    """Every value formatted with ``spec``, space-separated (``-`` for a missing one)."""
    return " ".join("-" if v is None else format(v, spec) for v in values)


def table_head(header: str) -> list[str]:
    """The header (``"a | b | c"``) and separator rows of a Markdown table."""
    return [f"| {header} |", table_row(*["---"] * (header.count("|") + 1))]
