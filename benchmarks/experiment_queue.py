"""`dvc queue start -j 2` vs `-j 1`: 4 queued smoke experiments into one SQLite store.

Side by side in one session (a fresh clone each), wall time from `queue start` until nothing
is queued or running. Prints a table; writes results/experiment_queue.json.

Usage: python benchmarks/experiment_queue.py [--experiments 4] [--epochs 8]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import BIN, ROOT, env


def _sh(cwd: Path, *cmd: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=True)
    return done.stdout


def queue_wall(jobs: int, experiments: int, epochs: int, tmp: Path) -> float:
    """Seconds for ``experiments`` queued smoke experiments on ``jobs`` workers."""
    project = tmp / f"clone-j{jobs}"
    _sh(tmp, "git", "clone", "-q", str(ROOT), str(project))
    _sh(project, sys.executable, "src/params.py", "+experiment=smoke")
    _sh(project, "git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-qam", "s")
    _sh(project, str(BIN / "dvc"), "repro")
    for i in range(experiments):
        _sh(
            project,
            *(str(BIN / "dvc"), "exp", "run", "--queue", "-n", f"b{i}", "-S", "+experiment=smoke"),
            *("-S", f"seed={i}", "-S", f"train.epochs={epochs}", "-S", f"train.patience={epochs}"),
        )
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "dvc"), "queue", "start", "-j", str(jobs)],
        cwd=project,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    while True:
        status = _sh(project, str(BIN / "dvc"), "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    seconds = time.perf_counter() - start
    assert status.count("Success") == experiments, status
    return seconds


def main() -> None:
    """Time -j 1 and -j 2 on the same experiments; print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fmnist-queue-") as tmp:
        walls = {j: queue_wall(j, args.experiments, args.epochs, Path(tmp)) for j in (1, 2)}
    print(f"| workers | wall for {args.experiments} smoke experiments (s) | vs -j 1 |")
    print("| --- | --- | --- |")
    for jobs, seconds in walls.items():
        print(f"| -j {jobs} | {seconds:.1f} | {seconds / walls[1]:.2f} |")
    out = ROOT / "benchmarks" / "results" / "experiment_queue.json"
    out.write_text(json.dumps({"wall_s": walls, **vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
