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
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SYSTEM_DATA = Path("/usr/share/datasets/fashion-mnist")
RESULTS = ROOT / "benchmarks" / "results"
TARGET_VAL = 0.92
PROJECT_SEEDS = (42, 1, 2)
TRAIN_IMAGES = 48_000
VAL_IMAGES = 12_000
VAL_RE = re.compile(r"val_accuracy: ([0-9.]+)")


# --------------------------------------------------------------------------- measuring


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


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run ``cmd``; stamp every stdout line; sample the process tree's RSS every 0.1 s."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
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
    for chunk in iter(lambda: proc.stdout.read(4096), b""):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append((time.monotonic() - started, line.decode(errors="replace")))
    proc.wait()
    done.set()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = b"".join(err_chunks).decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return {"seconds": seconds, "lines": lines, "peak_rss_mb": peak[0] / 2**20}


def epochs_from(lines: list[tuple[float, str]]) -> list[tuple[float, float]]:
    """(seconds since start, val_accuracy) for each finished epoch."""
    out = []
    for stamp, line in lines:
        found = VAL_RE.findall(line)
        if found:
            out.append((stamp, float(found[-1])))
    return out


def epoch_gflop(train_mflop: float, forward_mflop: float) -> float:
    """GFLOP of one epoch as both contenders run it: training steps, then validation forwards."""
    return (TRAIN_IMAGES * train_mflop + VAL_IMAGES * forward_mflop) / 1e3


def training_figures(timed: dict, train_mflop: float, ceiling: float, forward_mflop: float) -> dict:
    epochs = epochs_from(timed["lines"])
    reached = next((t for t, v in epochs if v >= TARGET_VAL), None)
    intervals = [b[0] - a[0] for a, b in zip(epochs, epochs[1:], strict=False)]
    per_epoch = statistics.median(intervals) if intervals else float("nan")
    images_s = TRAIN_IMAGES / per_epoch
    # The epoch's time includes validating 12,000 images, so their FLOPs count too.
    gflops = epoch_gflop(train_mflop, forward_mflop) / per_epoch
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


def matmul_ceiling(dtype: str) -> float:
    """GFLOP/s of a large TF matmul in ``dtype`` on this machine, right now (own process)."""
    code = f"""
import time, tensorflow as tf
n = 2048
a = tf.random.normal((n, n), dtype=tf.float32)
a = tf.cast(a, "{dtype}"); b = tf.identity(a)
f = tf.function(lambda x, y: tf.matmul(x, y))
f(a, b).numpy()
best = 0.0
for _ in range(5):
    t = time.perf_counter(); k = 10
    for _ in range(k): c = f(a, b)
    c.numpy(); best = max(best, 2 * n**3 * k / (time.perf_counter() - t) / 1e9)
print(best)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    return float(out.stdout.strip().splitlines()[-1])


def train_mflop_per_image() -> tuple[float, float]:
    """Forward and training MFLOP per image of the default model (multiply-add = 2 FLOP).

    Training = forward + backward; backward is twice the forward, except the first layer,
    which needs no gradient with respect to its input.
    """
    from omegaconf import OmegaConf

    from fmnist_mlops.model.cnn import build_model

    model = build_model(OmegaConf.load(ROOT / "params.yaml").model)
    forward, first = 0.0, None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops = 2 * h * w * cout * kh * kw * cin
        elif kind == "Dense":
            cin, cout = layer.kernel.shape
            flops = 2 * cin * cout
        else:
            continue
        first = flops if first is None else first
        forward += flops
    return forward / 1e6, (3 * forward - first) / 1e6


# --------------------------------------------------------------------------- the contenders


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def keras_home(tmp: Path) -> Path:
    """A Keras home whose dataset cache holds the real files: the seed's load_data, offline."""
    home = tmp / "keras-home"
    cache = home / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True, exist_ok=True)
    for gz in SYSTEM_DATA.glob("*.gz"):
        target = cache / gz.name
        if not target.exists():
            target.symlink_to(gz)
    return home


def test_accuracy_of(keras_file: Path) -> float:
    """Test accuracy of a saved model on the real test set (the seed's scaling: /255)."""
    code = f"""
import gzip, numpy as np, keras
def idx(p, off): return np.frombuffer(gzip.open(p).read(), np.uint8, offset=off)
x = idx("{SYSTEM_DATA}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1) / 255.0
y = idx("{SYSTEM_DATA}/t10k-labels-idx1-ubyte.gz", 8)
m = keras.saving.load_model("{keras_file}", compile=False)
print(float((m.predict(x, batch_size=1024, verbose=0).argmax(1) == y).mean()))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_seed(tmp: Path, n: int) -> dict:
    work = tmp / f"seed-{n}"
    work.mkdir()
    timed = run_timed(
        [sys.executable, str(ROOT / "benchmarks" / "seed_recipe.py")],
        work,
        _env(KERAS_HOME=str(keras_home(tmp))),
    )
    timed["test_accuracy"] = test_accuracy_of(work / "best-cnn-model.h5")
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
    timed = run_timed([sys.executable, str(ROOT / "src" / "train.py"), *args], ROOT, _env())
    evaluated = subprocess.run(
        [sys.executable, str(ROOT / "src" / "evaluate.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    timed["test_accuracy"] = json.loads(evaluated.stdout.strip().splitlines()[-1])["test_accuracy"]
    return timed


def prepare_data(tmp: Path) -> Path:
    prepared = tmp / "prepared"
    subprocess.run(
        [sys.executable, str(ROOT / "src" / "prepare.py"), f"paths.prepared={prepared}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        env=_env(),
    )
    return prepared


def project_copy(tmp: Path) -> Path:
    """A fresh clone of the committed project (what a user gets), with this .venv on PATH."""
    dest = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def run_pipeline_pair(clone: Path) -> dict:
    """``dvc repro -f``, a no-op ``dvc repro``, then the bare process: wall seconds each."""
    env = _env()
    repro = run_timed([str(BIN / "dvc"), "repro", "-f"], clone, env)["seconds"]
    noop = run_timed([str(BIN / "dvc"), "repro"], clone, env)["seconds"]
    bare = run_timed([sys.executable, str(ROOT / "benchmarks" / "bare_pipeline.py")], ROOT, env)
    return {
        "repro_s": repro,
        "noop_s": noop,
        "bare_s": bare["seconds"],
        "bare_test_accuracy": json.loads(bare["lines"][-1][1])["test_accuracy"],
    }


def per_repeat_ratios(seeds: list[dict], projects: list[dict], pipes: list[dict]) -> dict:
    """Project / seed ratios within each repeat (same minutes of the host), then their median.

    Time to val >= 0.92 is compared only in repeats where the seed got there at all.
    """

    def ratios(key: str) -> dict | None:
        values = [
            p[key] / s[key] for s, p in zip(seeds, projects, strict=True) if s[key] and p[key]
        ]
        return _mid(values) if values else None

    return {
        "to_val_0.92": ratios("seconds_to_val_0.92"),
        "seed_reached_0.92": sum(bool(s["seconds_to_val_0.92"]) for s in seeds),
        "to_val_0.91": ratios("seconds_to_val_0.91"),
        "per_epoch": ratios("seconds_per_epoch"),
        "repro_over_seed_script": _mid(
            [q["repro_s"] / s["wall_s"] for s, q in zip(seeds, pipes, strict=False)]
        )
        if pipes
        else None,
    }


# --------------------------------------------------------------------------- reporting


def _mid(values: list[float | None]) -> dict:
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


def _fmt(stat: dict, digits: int = 1) -> str:
    if stat["median"] is None:
        return f"never ({stat['never']} of {stat['n']} runs)" if stat["n"] else "–"
    if stat["never"]:
        return f"{stat['median']:.{digits}f} ({stat['never']} of {stat['n']} runs never)"
    if stat["n"] == 1:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


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
    return {k: _mid([r[k] for r in runs]) for k in keys}


def training_table(seed: dict, project: dict, precision: str) -> str:
    rows = [
        ("wall time to val ≥ 0.92 (s)", "seconds_to_val_0.92", 1),
        ("wall time to val ≥ 0.91 (s)", "seconds_to_val_0.91", 1),
        ("whole script (s)", "wall_s", 1),
        ("epochs run", "epochs", 0),
        ("s per epoch (train + val)", "seconds_per_epoch", 2),
        ("training images/s", "images_per_s", 0),
        ("achieved GFLOP/s (an epoch's training + validation FLOPs / its time)", "gflop_s", 0),
        ("matmul ceiling measured before the run (GFLOP/s)", "ceiling_gflop_s", 0),
        (f"share of that ceiling (float32 / {precision})", "ceiling_share", 3),
        ("best val accuracy", "best_val_accuracy", 4),
        ("test accuracy", "test_accuracy", 4),
        ("peak RSS (MB)", "peak_rss_mb", 0),
    ]
    out = ["| | seed recipe | project (default config) | project / seed |", "|---|---:|---:|---:|"]
    for label, key, digits in rows:
        a, b = seed[key]["median"], project[key]["median"]
        ratio = f"{b / a:.2f}×" if a and b else "–"
        out.append(
            f"| {label} | {_fmt(seed[key], digits)} | {_fmt(project[key], digits)} | {ratio} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write ``benchmarks/results/training.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the project's runs")
    args = parser.parse_args(argv)
    if not (SYSTEM_DATA / "train-images-idx3-ubyte.gz").exists():
        print(f"error: real data missing in {SYSTEM_DATA}: run `make data`", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    from fmnist_mlops.config.compose import compose

    cfg = compose(args.overrides, config_dir=ROOT / "conf")
    precision = "bfloat16" if cfg.train.get("precision") == "mixed_bfloat16" else "float32"
    forward_mflop, train_mflop = train_mflop_per_image()
    result: dict = {
        "machine": {"cpus": os.cpu_count()},
        "project_overrides": args.overrides,
        "project_config": OmegaConf.to_container(cfg.train),
        "mflop_per_image": {"forward": forward_mflop, "training": train_mflop},
    }
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ceilings = {p: matmul_ceiling(p) for p in ("float32", "bfloat16")}
        result["matmul_ceiling_gflop_s"] = ceilings
        prepared = prepare_data(tmp)
        clone = None if args.skip_pipeline else project_copy(tmp)
        seeds, projects, pipes = [], [], []
        # Every contender once per repeat, back to back: the host's speed drifts by up to
        # ~1.7x within the hour, so ratios are taken within a repeat, never across.
        for n in range(args.repeats):
            if not args.skip_seed:
                ceiling = matmul_ceiling("float32")
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
            ceiling = matmul_ceiling(precision)
            timed = run_project(tmp, n, prepared, [f"seed={seed}", *args.overrides])
            projects.append(
                {
                    **training_figures(timed, train_mflop, ceiling, forward_mflop),
                    "ceiling_gflop_s": ceiling,
                    "test_accuracy": timed["test_accuracy"],
                }
            )
            print(f"project run {n}: {projects[-1]}", file=sys.stderr)
            if clone is not None:
                pipes.append(run_pipeline_pair(clone))
                print(f"pipeline {n}: {pipes[-1]}", file=sys.stderr)
        result["training"] = {"seed": seeds, "project": projects}
        seed_sum = summarise(seeds) if seeds else None
        project_sum = summarise(projects)
        result["training_summary"] = {"seed": seed_sum, "project": project_sum}
        if seeds:
            result["ratios"] = per_repeat_ratios(seeds, projects, pipes)
        if pipes:
            result["pipeline"] = {
                "dvc_repro_f_s": _mid([p["repro_s"] for p in pipes]),
                "bare_process_s": _mid([p["bare_s"] for p in pipes]),
                "repro_over_bare": _mid([p["repro_s"] / p["bare_s"] for p in pipes]),
                "bare_test_accuracy": [p["bare_test_accuracy"] for p in pipes],
                "noop_dvc_repro_s": _mid([p["noop_s"] for p in pipes]),
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


def mlflow_cost(tmp: Path, epochs: int = 50) -> float:
    """Milliseconds per epoch for what MlflowEpochLogger sends (5 metrics, synchronous)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'cost.db'}")
    with mlflow.start_run():
        mlflow.log_metrics({"warm": 0.0}, step=0, synchronous=True)
        started = time.perf_counter()
        for epoch in range(epochs):
            values = {k: 0.5 for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr")}
            mlflow.log_metrics(values, step=epoch, synchronous=True)
        return (time.perf_counter() - started) / epochs * 1e3


def report(result: dict, precision: str) -> str:
    parts = []
    summary = result["training_summary"]
    start = result["matmul_ceiling_gflop_s"]
    flops = result["mflop_per_image"]
    parts.append(
        f"## 1. Training (medians of {summary['project']['wall_s']['n']} runs, min–max)\n\n"
        f"MFLOP per image: forward {flops['forward']:.2f}, training {flops['training']:.2f}. "
        f"Matmul ceilings measured at the start: float32 {start['float32']:.0f}, "
        f"bfloat16 {start['bfloat16']:.0f} GFLOP/s (each run's share uses its own, below).\n"
    )
    if summary["seed"]:
        parts.append(training_table(summary["seed"], summary["project"], precision))
    ratios = result.get("ratios")
    if ratios:
        rows = [
            "\n### Project / seed, within each repeat (median of the repeats' ratios, min–max)\n",
            "| | ratio |",
            "|---|---:|",
            f"| wall time to val ≥ 0.92 (repeats where the seed got there: "
            f"{ratios['seed_reached_0.92']} of {len(result['training']['seed'])}) | "
            + (_fmt(ratios["to_val_0.92"], 2) if ratios["to_val_0.92"] else "–")
            + " |",
            "| wall time to val ≥ 0.91 | "
            + (_fmt(ratios["to_val_0.91"], 2) if ratios["to_val_0.91"] else "–")
            + " |",
            f"| s per epoch | {_fmt(ratios['per_epoch'], 2)} |",
        ]
        if ratios.get("repro_over_seed_script"):
            rows.append(
                f"| `dvc repro -f` / seed script | {_fmt(ratios['repro_over_seed_script'], 2)} |"
            )
        parts.append("\n".join(rows))
    pipe = result.get("pipeline")
    if pipe:
        repro, bare = pipe["dvc_repro_f_s"], pipe["bare_process_s"]
        parts.append(
            "\n".join(
                [
                    "\n## 2. Pipeline cost (whole wall time, one pair per repeat)\n",
                    "| | seconds | `dvc repro -f` / this |",
                    "|---|---:|---:|",
                    f"| `dvc repro -f` (prepare, train, evaluate + promotion) | {_fmt(repro)} "
                    "| 1.00× |",
                    f"| bare process (same work, no DVC/MLflow) | {_fmt(bare)} | "
                    f"{_fmt(pipe['repro_over_bare'], 2)}× (per-pair ratios) |",
                ]
            )
        )
        parts.append(
            f"\n## 3. Overheads\n\n| | value |\n|---|---:|\n"
            f"| no-op `dvc repro` | {_fmt(pipe['noop_dvc_repro_s'], 2)} s |\n"
            f"| MLflow logging per epoch (5 metrics, SQLite) | {result['mlflow_ms_per_epoch']:.1f}"
            " ms |"
        )
    serving = result.get("serving")
    if serving:
        parts.append(
            "\n## 4. Serving (`python benchmarks/serving.py`, its last run)\n\n"
            "| model, payload | p50 ms | p95 ms | images/s (256 per request) |\n"
            "|---|---:|---:|---:|"
        )
        for name, row in serving["results"].items():
            parts.append(
                f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} "
                f"| {row['images_per_s']:.0f} |"
            )
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
