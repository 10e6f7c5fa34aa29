"""Measure training levers side by side: each variant trained and evaluated on the same seeds.

``python benchmarks/levers.py --seeds 42 --variant base="model=vgg train.epochs=20"
--variant smooth="model=vgg train.epochs=20 train.label_smoothing=0.1"``

Every variant is one ``python src/train.py`` + ``python src/evaluate.py`` per seed on the real
split, each into a store and output folder of its own (nothing touches the project's
``mlflow.db``); variants run interleaved seed by seed, so drift of the host's speed hits them
alike. Prints one Markdown row per variant: test and validation accuracy (median over seeds,
and each seed), training seconds, the time the run logged to each validation threshold, the
epochs trained, and the accuracy on the three shoe classes (the classes a horizontal flip can
hurt: all shoes in Fashion-MNIST point the same way). Writes everything to
``benchmarks/results/levers.json`` (``--out``). Needs the real data (``make data``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import RESULTS, ROOT, each, env, table_head, table_row
from training import logged_time_to_accuracy, prepare_data

SHOES = ("Sandal", "Sneaker", "Ankle boot")
COLUMNS = (
    "variant | test (median) | test per seed | val | fit s | epochs | to val 0.92 s "
    "| to val 0.94 s | shoes (S/Sn/AB)"
)


def run_variant(tmp: Path, name: str, seed: int, prepared: Path, overrides: list[str]) -> dict:
    """Train and evaluate one variant with one seed; its figures."""
    work = tmp / f"{name}-{seed}"
    work.mkdir()
    args = [
        f"paths.prepared={prepared}",
        f"paths.out={work}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"seed={seed}",
        "train.verbose=2",
        *overrides,
    ]
    started = time.perf_counter()
    for stage in ("train", "evaluate"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "src" / f"{stage}.py"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env(),
        )
        if done.returncode != 0:
            raise SystemExit(f"{name} seed {seed}: {stage} failed:\n{done.stderr[-2000:]}")
    scored = json.loads(done.stdout.strip().splitlines()[-1])
    per_class = json.loads((work / "reports" / "per_class.json").read_text())
    return {
        "variant": name,
        "seed": seed,
        "overrides": overrides,
        "wall_s": time.perf_counter() - started,
        "test_accuracy": scored["test_accuracy"],
        "val_accuracy": scored["val_accuracy"],
        "epochs_trained": scored["epochs_trained"],
        "best_epoch": scored["best_epoch"],
        "fit_s": json.loads((work / "models" / "run.json").read_text()).get("fit_seconds"),
        "shoes": {c: _recall(per_class, c) for c in SHOES},
        **logged_time_to_accuracy(work / "mlflow.db", scored["run_id"]),
    }


def _recall(per_class: dict, name: str) -> float | None:
    row = per_class.get(name)
    return None if row is None else row["recall"]


def table(runs: list[dict], names: list[str]) -> str:
    """One Markdown row per variant, medians over its seeds."""

    def med(key: str, spec: str, mine: list[dict]) -> str:
        values = [r[key] for r in mine if r[key] is not None]
        return each([statistics.median(values) if values else None], spec)

    lines = table_head(COLUMNS)
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        shoes = "/".join(
            each([statistics.median(r["shoes"][c] for r in mine)], ".3f") for c in SHOES
        )
        lines.append(
            table_row(
                name,
                med("test_accuracy", ".4f", mine),
                each([r["test_accuracy"] for r in mine], ".4f"),
                med("val_accuracy", ".4f", mine),
                med("fit_s", ".0f", mine),
                med("epochs_trained", ".0f", mine),
                med("logged_to_val_0.92", ".0f", mine),
                med("logged_to_val_0.94", ".0f", mine),
                shoes,
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every variant on every seed, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument(
        "--variant", action="append", required=True, help='NAME="override override ..."'
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "levers.json")
    parser.add_argument("--keep", type=Path, help="copy each run's model.keras into this folder")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fmnist-levers-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = prepare_data(tmp)
        for seed in args.seeds:
            for name, overrides in variants.items():
                runs.append(run_variant(tmp, name, seed, prepared, overrides.split()))
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    model = tmp / f"{name}-{seed}" / "models" / "model.keras"
                    shutil.copyfile(model, args.keep / f"{name}-{seed}.keras")
                print(json.dumps(runs[-1]), flush=True)
    print(table(runs, list(variants)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": variants, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
