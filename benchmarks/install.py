"""`make install` from `rm -rf .venv` with pip and with uv, cold and warm caches, side by side.

Each repeat runs the four cases back to back in a fresh clone, so machine drift hits them alike.
Cold = empty pip and uv cache folders; warm = the caches the same installer just filled. Both
installers first `pip install uv` (the uv path installs with it; the pip path exports the lock's
pins with it), so getting uv is inside every timing.

Usage: python benchmarks/install.py [--repeats 3]   (prints a table, writes results/install.json)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from measure import ROOT

CASES = [("pip", "cold"), ("pip", "warm"), ("uv", "cold"), ("uv", "warm")]


def _install(clone: Path, installer: str, cache: Path) -> float:
    shutil.rmtree(clone / ".venv", ignore_errors=True)
    env = {
        **os.environ,
        "PIP_CACHE_DIR": str(cache / "pip"),
        "UV_CACHE_DIR": str(cache / "uv"),
    }
    start = time.perf_counter()
    subprocess.run(
        ["make", "-s", "install", f"INSTALLER={installer}"],
        cwd=clone,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    """Time the four cases ``--repeats`` times and print medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {f"{i} {c}": [] for i, c in CASES}
    with tempfile.TemporaryDirectory(prefix="fmnist-install-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        for _ in range(args.repeats):
            for installer in ("pip", "uv"):
                cache = Path(tmp) / f"cache-{installer}"
                shutil.rmtree(cache, ignore_errors=True)
                for state in ("cold", "warm"):
                    seconds = _install(clone, installer, cache)
                    times[f"{installer} {state}"].append(seconds)
                    print(f"  {installer} {state}: {seconds:.1f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| case | median of {args.repeats} (s) | runs (s) | vs pip cold |")
    print("| --- | --- | --- | --- |")
    for key, runs in times.items():
        ratio = medians[key] / medians["pip cold"]
        listed = ", ".join(f"{r:.1f}" for r in runs)
        print(f"| {key} | {medians[key]:.1f} | {listed} | {ratio:.2f} |")
    out = ROOT / "benchmarks" / "results" / "install.json"
    out.write_text(json.dumps({"runs_s": times, "median_s": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
