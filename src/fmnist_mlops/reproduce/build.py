"""Build a commit as it was: a worktree, its locked environment, its own stage commands.

The worktree is temporary; the environment comes from the commit's ``uv.lock``; the commands
are the commit's ``dvc.yaml`` ones, run against a throwaway store.

The stages never see the user's store: the rebuilt run, and the version its ``evaluate`` stage
registers, live in a SQLite store inside the worktree, deleted with it. So a reproduction
creates no registry version and moves no alias, whatever the commit's code does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import yaml

from fmnist_mlops.runtime.errors import ProjectError
from fmnist_mlops.runtime.files import file_lock
from fmnist_mlops.runtime.processes import stop_group

# Environment variables of the caller that must not reach the commit's stages.
_DROPPED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "VIRTUAL_ENV",
    "PYTHONPATH",
)


class BuildError(ProjectError):
    """A step of the rebuild failed (its command's last line says why).

    Attributes:
        code: The failed command's exit code (None: no command ran).
        last: The last line it wrote.
    """

    def __init__(self, message: str, code: int | None = None, last: str = "") -> None:
        super().__init__(message)
        self.code, self.last = code, last


@contextlib.contextmanager
def worktree(repo: Path, commit: str, home: Path, keep: bool = False) -> Iterator[Path]:
    """A detached git worktree of ``commit`` in ``home/tree``; removed after, with ``home``.

    The user's checkout is not touched: no file of it changes, and the worktree's entry in
    ``.git/worktrees`` is removed again (``keep`` leaves both for a look).
    """
    tree = home / "tree"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        if not keep:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True
            )
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


def apply_diff(tree: Path, diff: str) -> None:
    """Apply a recorded uncommitted change on top of the worktree's commit."""
    patch = tree.parent / "uncommitted.diff"
    patch.write_text(diff)
    done = subprocess.run(
        ["git", "apply", "--binary", "--whitespace=nowarn", str(patch)],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BuildError(f"the recorded diff does not apply to its commit: {_last(done.stderr)}")


def environment(tree: Path, envs: Path, uv: Path) -> tuple[Path, bool]:
    """The commit's locked environment (its ``uv.lock``), built once and reused.

    Keyed by the lock, ``pyproject.toml`` and this Python's version; built with ``uv sync
    --frozen`` from uv's cache (packages missing from it come from the index). The project
    itself is not installed: ``python src/<stage>.py`` imports the worktree's own package.

    Returns:
        The environment's ``bin`` folder and whether it was already built.
    """
    lock, project = tree / "uv.lock", tree / "pyproject.toml"
    if not lock.is_file():
        raise BuildError(f"{tree.name}: the commit has no uv.lock: its environment is unknown")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(lock.read_bytes() + project.read_bytes() + python.encode()).hexdigest()
    env_dir = envs / f"py{python}-{key[:16]}"
    offered = tomllib.loads(project.read_text()).get("project", {}).get("optional-dependencies", {})
    extras = [e for e in ("cpu",) if e in offered]
    with file_lock(envs / f".{env_dir.name}.lock"):
        ready = (env_dir / ".synced").is_file()
        if not ready:
            cmd = [str(uv), "sync", "--frozen", "--no-install-project", "-q"]
            cmd += [a for e in extras for a in ("--extra", e)]
            cmd += ["--python", getattr(sys, "_base_executable", sys.executable)]
            env = {
                **_clean_env(),
                "UV_PROJECT_ENVIRONMENT": str(env_dir),
                # Compiled once here: the three stages would each compile TensorFlow again.
                "UV_COMPILE_BYTECODE": "1",
            }
            run_logged(cmd, tree, env, envs / f"{env_dir.name}.log", "building the environment")
            (env_dir / ".synced").write_text(python + "\n")
    return env_dir / "bin", ready


def stage_commands(tree: Path) -> dict[str, str]:
    """The commit's own ``dvc.yaml`` commands (``prepare``, ``train``, ``evaluate``), expanded."""
    spec = yaml.safe_load((tree / "dvc.yaml").read_text())
    values: dict[str, str] = {}
    for entry in spec.get("vars", []) or []:
        if isinstance(entry, dict):
            values.update({k: str(v) for k, v in entry.items()})
    commands = {}
    for name in ("prepare", "train", "evaluate"):
        stage = spec.get("stages", {}).get(name)
        if stage is None:
            raise BuildError(f"dvc.yaml of the commit has no {name} stage")
        cmd = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), stage["cmd"])
        if "${" in cmd:
            raise BuildError(f"dvc.yaml of the commit: cannot expand {stage['cmd']!r}")
        commands[name] = cmd
    return commands


def run_stage(cmd: str, tree: Path, bin_dir: Path, env: dict[str, str], log: Path) -> None:
    """Run one of the commit's stage commands in the worktree, with its environment first."""
    full = {**_clean_env(), **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_logged(["bash", "-c", cmd], tree, full, log, cmd.split(" -cd ")[0])


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, what: str) -> None:
    """Run ``cmd`` to its end in its own process group, output to ``log``.

    An interruption stops the whole group (a stage and the processes it started).

    Raises:
        BuildError: It failed; the message ends with the last line it wrote.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait()
        except BaseException:
            stop_group(proc)
            raise
    if code != 0:
        last = _last(log.read_text(errors="replace"))
        raise BuildError(
            f"{what} failed (exit {code}): {last} (reproduce.keep=true keeps its log, {log.name})",
            code,
            last,
        )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"git {' '.join(args[:2])} failed: {_last(done.stderr)}")
    return done.stdout
