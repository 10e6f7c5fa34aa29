"""``make bench``: the tutorial's recipe vs the project, side by side in one run.

1. Training: ``benchmarks/seed_recipe.py`` vs ``python src/train.py`` (default config), same
   architecture, same split sizes (48,000 / 12,000), interleaved repeats. Wall time from process
   start to the first epoch with val accuracy >= 0.92, training images/s, achieved GFLOP/s and
   its share of a matmul ceiling measured right before each run for its precision, val/test accuracy
   of the restored best weights, peak RSS of the process tree. Medians (min-max).
2. Pipeline cost: ``dvc repro -f`` (all stages) in a fresh copy of the project vs the same work
   in one bare process (``benchmarks/bare_pipeline.py``, no DVC, no MLflow), and vs the seed
   script. Each repeat runs every contender back to back (seed, project, ``dvc repro -f``,
   no-op ``dvc repro``, bare); ratios are taken within a repeat, then their median.
3. No-op ``dvc repro``; MLflow's cost per epoch (what the epoch logger sends, SQLite store).
4. Serving figures from ``benchmarks/results/serving.json`` (``python benchmarks/serving.py``).

Prints one Markdown table per section and writes everything to
``benchmarks/results/training.json``. Needs the real data (``make data``) and ~25 minutes with
the default 3 repeats; ``--repeats 1 --skip-pipeline`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from flops import epoch_gflop, train_mflop_per_image
from measure import RESULTS, ROOT, config, env, keras_home, mid, probe, run_timed, system_data
from pipeline import mlflow_cost, project_copy, run_pipeline_pair
from training_report import report

from fmnist_mlops.config.schema import split_sizes
from fmnist_mlops.train.platforms import resolve_precision

TARGET_VAL = 0.92
# The tutorial's validation_split (48,000 / 12,000 images); the project's default is the same.
VAL_SPLIT = 0.2
PROJECT_SEEDS = (42, 1, 2)
VAL_RE = re.compile(r"val_accuracy: ([0-9.]+)")


def epochs_from(lines: list[tuple[float, str]]) -> list[tuple[float, float]]:
    """(seconds since start, val_accuracy) for each finished epoch."""
    out = []
    for stamp, line in lines:
        found = VAL_RE.findall(line)
        if found:
            out.append((stamp, float(found[-1])))
    return out


def training_figures(timed: dict, train_mflop: float, ceiling: float, forward_mflop: float) -> dict:
    epochs = epochs_from(timed["lines"])
    reached = next((t for t, v in epochs if v >= TARGET_VAL), None)
    intervals = [b[0] - a[0] for a, b in zip(epochs, epochs[1:], strict=False)]
    per_epoch = statistics.median(intervals) if intervals else float("nan")
    images_s = split_sizes(VAL_SPLIT)["train"] / per_epoch
    # The epoch's time includes validating 12,000 images, so their FLOPs count too.
    gflops = epoch_gflop(train_mflop, forward_mflop, VAL_SPLIT) / per_epoch
    reached_91 = next((t for t, v in epochs if v >= 0.91), None)
    return {
        "seconds_to_val_0.92": reached,
        "seconds_to_val_0.91": reached_91,
        "curve": [[round(t, 2), v] for t, v in epochs],
        "epochs": len(epochs),
        "seconds_per_epoch": per_epoch,
        "images_per_s": images_s,
        "gflop_s": gflops,
        "ceiling_share": gflops / ceiling,
        "best_val_accuracy": max(v for _, v in epochs),
        "wall_s": timed["seconds"],
        "peak_rss_mb": timed["peak_rss_mb"],
    }


# --------------------------------------------------------------------------- the contenders


def run_seed(tmp: Path, n: int) -> dict:
    work = tmp / f"seed-{n}"
    work.mkdir()
    timed = run_timed(
        [sys.executable, str(ROOT / "benchmarks" / "seed_recipe.py")],
        work,
        env(KERAS_HOME=str(keras_home(tmp))),
    )
    timed["test_accuracy"] = float(
        probe("test_accuracy.py", str(work / "best-cnn-model.h5"), str(system_data()))
    )
    return timed


def run_project(tmp: Path, n: int, prepared: Path, overrides: list[str]) -> dict:
    work = tmp / f"project-{n}"
    work.mkdir()
    args = [
        f"paths.prepared={prepared}",
        f"paths.out={work}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        *overrides,
    ]
    timed = run_timed([sys.executable, str(ROOT / "src" / "train.py"), *args], ROOT, env())
    evaluated = subprocess.run(
        [sys.executable, str(ROOT / "src" / "evaluate.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env(),
        check=True,
    )
    scored = json.loads(evaluated.stdout.strip().splitlines()[-1])
    timed["test_accuracy"] = scored["test_accuracy"]
    timed["logged"] = logged_time_to_accuracy(work / "mlflow.db", scored["run_id"])
    return timed


def logged_time_to_accuracy(store: Path, run_id: str) -> dict[str, float | None]:
    """The run's own ``time_to_val_accuracy_<t>`` metrics (training seconds from fit's start).

    What the MLflow UI sorts runs by; None for a threshold the run never reached.
    """
    from mlflow.tracking import MlflowClient

    from fmnist_mlops.train.history import THRESHOLDS

    metrics = MlflowClient(f"sqlite:///{store}").get_run(run_id).data.metrics
    return {
        f"logged_to_val_{t:.2f}": metrics.get(f"time_to_val_accuracy_{t:.2f}") for t in THRESHOLDS
    }


def prepare_data(tmp: Path) -> Path:
    prepared = tmp / "prepared"
    subprocess.run(
        [sys.executable, str(ROOT / "src" / "prepare.py"), f"paths.prepared={prepared}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        env=env(),
    )
    return prepared


def per_repeat_ratios(seeds: list[dict], projects: list[dict], pipes: list[dict]) -> dict:
    """Project / seed ratios within each repeat (same minutes of the host), then their median.

    Time to val >= 0.92 is compared only in repeats where the seed got there at all.
    """

    def ratios(key: str) -> dict | None:
        values = [
            p[key] / s[key] for s, p in zip(seeds, projects, strict=True) if s[key] and p[key]
        ]
        return mid(values) if values else None

    return {
        "to_val_0.92": ratios("seconds_to_val_0.92"),
        "seed_reached_0.92": sum(bool(s["seconds_to_val_0.92"]) for s in seeds),
        "to_val_0.91": ratios("seconds_to_val_0.91"),
        "per_epoch": ratios("seconds_per_epoch"),
        "repro_over_seed_script": mid(
            [q["repro_s"] / s["wall_s"] for s, q in zip(seeds, pipes, strict=False)]
        )
        if pipes
        else None,
    }


def summarise(runs: list[dict]) -> dict:
    keys = (
        "seconds_to_val_0.92",
        "seconds_to_val_0.91",
        "wall_s",
        "seconds_per_epoch",
        "images_per_s",
        "gflop_s",
        "ceiling_share",
        "ceiling_gflop_s",
        "best_val_accuracy",
        "test_accuracy",
        "peak_rss_mb",
        "epochs",
    )
    return {k: mid([r[k] for r in runs]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write ``benchmarks/results/training.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the project's runs")
    args = parser.parse_args(argv)
    data = system_data()
    if not (data / "train-images-idx3-ubyte.gz").exists():
        print(f"error: real data missing in {data}: run `make data`", file=sys.stderr)
        return 2
    cfg = config(args.overrides)
    # As the training resolves it: `auto` is mixed_bfloat16 on a CPU with native bfloat16, and
    # each run's share is of the ceiling for the precision it really computes in.
    resolved = resolve_precision(cfg.train.precision)
    precision = "bfloat16" if resolved == "mixed_bfloat16" else "float32"
    forward_mflop, train_mflop = train_mflop_per_image(config().model)
    result: dict = {
        "machine": {"cpus": os.cpu_count()},
        "project_overrides": args.overrides,
        "project_config": cfg.train.model_dump(),
        "mflop_per_image": {"forward": forward_mflop, "training": train_mflop},
    }
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ceilings = {p: float(probe("matmul_ceiling.py", p)) for p in ("float32", "bfloat16")}
        result["matmul_ceiling_gflop_s"] = ceilings
        prepared = prepare_data(tmp)
        clone = None if args.skip_pipeline else project_copy(tmp)
        seeds, projects, pipes = [], [], []
        # Every contender once per repeat, back to back: the host's speed drifts by up to
        # ~1.7x within the hour, so ratios are taken within a repeat, never across.
        for n in range(args.repeats):
            if not args.skip_seed:
                ceiling = float(probe("matmul_ceiling.py", "float32"))
                timed = run_seed(tmp, n)
                seeds.append(
                    {
                        **training_figures(timed, train_mflop, ceiling, forward_mflop),
                        "ceiling_gflop_s": ceiling,
                        "test_accuracy": timed["test_accuracy"],
                    }
                )
                print(f"seed run {n}: {seeds[-1]}", file=sys.stderr)
            # One seed per repeat: the accuracy median is over seeds, the timing over runs.
            seed = PROJECT_SEEDS[n % len(PROJECT_SEEDS)]
            ceiling = float(probe("matmul_ceiling.py", precision))
            timed = run_project(tmp, n, prepared, [f"seed={seed}", *args.overrides])
            projects.append(
                {
                    **training_figures(timed, train_mflop, ceiling, forward_mflop),
                    "ceiling_gflop_s": ceiling,
                    "test_accuracy": timed["test_accuracy"],
                    **timed["logged"],
                }
            )
            print(f"project run {n}: {projects[-1]}", file=sys.stderr)
            if clone is not None:
                pipes.append(run_pipeline_pair(clone))
                print(f"pipeline {n}: {pipes[-1]}", file=sys.stderr)
        result["training"] = {"seed": seeds, "project": projects}
        seed_sum = summarise(seeds) if seeds else None
        project_sum = summarise(projects)
        project_sum.update(
            {k: mid([r[k] for r in projects]) for k in projects[0] if k.startswith("logged_to")}
        )
        result["training_summary"] = {"seed": seed_sum, "project": project_sum}
        if seeds:
            result["ratios"] = per_repeat_ratios(seeds, projects, pipes)
        if pipes:
            result["pipeline"] = {
                "dvc_repro_f_s": mid([p["repro_s"] for p in pipes]),
                "bare_process_s": mid([p["bare_s"] for p in pipes]),
                "repro_over_bare": mid([p["repro_s"] / p["bare_s"] for p in pipes]),
                "bare_test_accuracy": [p["bare_test_accuracy"] for p in pipes],
                "noop_dvc_repro_s": mid([p["noop_s"] for p in pipes]),
            }
        result["mlflow_ms_per_epoch"] = mlflow_cost(tmp)

    serving = RESULTS / "serving.json"
    if serving.exists():
        result["serving"] = json.loads(serving.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result, precision))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
