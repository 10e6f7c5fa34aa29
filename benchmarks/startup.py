"""Start-up of every command: `--help` and `--cfg job` of each Hydra script in src/.

Goal (architecture issue): <= 2 s each on the reference machine. Median of --repeats runs;
prints a table, writes results/startup.json.

Usage: python benchmarks/startup.py [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 2.0


def hydra_scripts() -> list[Path]:
    """Every entry point in src/ that is a ``@hydra.main``."""
    return sorted(p for p in (ROOT / "src").glob("*.py") if "@hydra.main" in p.read_text())


def wall(cmd: list[str]) -> float:
    """Seconds one run of ``cmd`` takes (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    """Time each script's ``--help`` and ``--cfg job``; print the medians against the goal."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for script in hydra_scripts():
        for flags in (["--help"], ["--cfg", "job"]):
            key = f"src/{script.name} {' '.join(flags)}"
            runs = [wall([sys.executable, str(script), *flags]) for _ in range(args.repeats)]
            rows[key] = statistics.median(runs)
    print(f"| command | median of {args.repeats} (s) | goal <= {GOAL_S} s |")
    print("| --- | --- | --- |")
    for key, seconds in rows.items():
        print(f"| `{key}` | {seconds:.2f} | {'ok' if seconds <= GOAL_S else 'OVER'} |")
    out = ROOT / "benchmarks" / "results" / "startup.json"
    out.write_text(json.dumps({"median_s": rows, "goal_s": GOAL_S}, indent=2) + "\n")


if __name__ == "__main__":
    main()
