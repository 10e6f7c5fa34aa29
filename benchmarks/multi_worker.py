"""Two local workers (`make train-workers N=2`) vs one process, on the smoke setup.

Side by side, alternating, each repeat with fresh stores: wall time of the whole command and
the chief's `fit_seconds`. Both train the same global batch for the same epochs; on one
2-core machine the workers share the cores, so this measures the cost of the multi-worker
machinery (gRPC collectives per step), not a speed-up. Prints a table; writes
results/multi_worker.json.

Usage: python benchmarks/multi_worker.py [--repeats 3] [--epochs 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT


def _run(cmd: list[str], tmp: Path, epochs: int) -> tuple[float, float]:
    args = [
        "+experiment=smoke",
        "train.verbose=0",
        f"train.epochs={epochs}",
        f"train.patience={epochs}",
        f"paths.prepared={tmp / 'prepared'}",
        f"paths.scratch={tmp / 'scratch'}",
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TF_CONFIG"))}
    started = time.perf_counter()
    done = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    chief = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]
    return wall, chief["fit_seconds"]


def main() -> None:
    """Alternate the two commands ``--repeats`` times; print medians and the ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    commands = {
        "1 process": [sys.executable, "src/train.py"],
        "2 workers": [sys.executable, str(ROOT / "src" / "train_workers.py"), "-n", "2", "--"],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="fmnist-mw-") as tmp:
        prepared = Path(tmp) / "base"
        subprocess.run(
            [
                sys.executable,
                "src/prepare.py",
                "+experiment=smoke",
                f"paths.prepared={prepared}/prepared",
            ],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        for r in range(args.repeats):
            for name, cmd in commands.items():
                run_dir = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                run_dir.mkdir()
                (run_dir / "prepared").symlink_to(prepared / "prepared")
                times[name].append(_run(cmd, run_dir, args.epochs))
    base_wall = statistics.median(w for w, _ in times["1 process"])
    base_fit = statistics.median(f for _, f in times["1 process"])
    title = f"smoke, {args.epochs} epochs, median of {args.repeats}"
    print(f"| {title} | wall (s) | fit (s) | fit vs 1 process |")
    print("| --- | --- | --- | --- |")
    for name, rows in times.items():
        wall = statistics.median(w for w, _ in rows)
        fit = statistics.median(f for _, f in rows)
        ratios = f"{fit / base_fit:.2f}x (wall {wall / base_wall:.2f}x)"
        print(f"| {name} | {wall:.1f} | {fit:.1f} | {ratios} |")
    out = ROOT / "benchmarks" / "results" / "multi_worker.json"
    out.write_text(json.dumps({"runs": times, **vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
