"""Start-up of every command: `--help`, `--cfg job` and refusing bad input (`seed=-1`).

Goal (architecture issue): <= 2 s each on the reference machine. Median of --repeats runs;
prints a table, writes results/startup.json. A refusal must exit 2; the stage scripts
validate before importing TensorFlow, the tuner validates its base config inside the study.

Usage: python benchmarks/startup.py [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import ROOT

GOAL_S = 2.0


def hydra_scripts() -> list[Path]:
    """Every Hydra entry point in src/ (made with ``stage_app``)."""
    return sorted(p for p in (ROOT / "src").glob("*.py") if "stage_app(" in p.read_text())


def wall(cmd: list[str], expect: int = 0) -> float:
    """Seconds one run of ``cmd`` takes (it must exit with ``expect``)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    """Time each script's ``--help``, ``--cfg job`` and a refusal; print medians and the goal."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for script in hydra_scripts():
        for flags, expect in ((["--help"], 0), (["--cfg", "job"], 0), (["seed=-1"], 2)):
            key = f"src/{script.name} {' '.join(flags)}"
            cmd = [sys.executable, str(script), *flags]
            runs = [wall(cmd, expect) for _ in range(args.repeats)]
            rows[key] = statistics.median(runs)
    print(f"| command | median of {args.repeats} (s) | goal <= {GOAL_S} s |")
    print("| --- | --- | --- |")
    for key, seconds in rows.items():
        print(f"| `{key}` | {seconds:.2f} | {'ok' if seconds <= GOAL_S else 'OVER'} |")
    out = ROOT / "benchmarks" / "results" / "startup.json"
    out.write_text(json.dumps({"median_s": rows, "goal_s": GOAL_S}, indent=2) + "\n")


if __name__ == "__main__":
    main()
