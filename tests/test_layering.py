"""Commands that train nothing never import TensorFlow, Keras or matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "keras", "matplotlib")

# (how the command is started, its arguments) - each ends with a one-line error or a result.
LIGHT = {
    "make rollback": ("src/rollback.py", ["mlflow.tracking_uri=sqlite:///{tmp}/m.db"]),
    "make clean-runs": (
        "-m fmnist_mlops.housekeeping",
        ["--no-dvc", "--tracking-uri=sqlite:///{tmp}/m.db"],
    ),
    "make clean": ("-m fmnist_mlops.scratch", ["--root={tmp}/scratch"]),
}


@pytest.mark.parametrize("command", sorted(LIGHT))
def test_a_command_that_trains_nothing_imports_no_heavy_library(
    command, tmp_path, project_root, subprocess_env
):
    target, args = LIGHT[command]
    args = [a.format(tmp=tmp_path) for a in args]
    run = (
        f"import runpy, sys; sys.argv = [{target!r}, *{args!r}]\n"
        "try:\n"
        + (
            f"    runpy.run_module({target.split()[1]!r}, run_name='__main__')\n"
            if target.startswith("-m ")
            else f"    runpy.run_path({target!r}, run_name='__main__')\n"
        )
        + "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", run],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", (command, proc.stdout, proc.stderr[-500:])
