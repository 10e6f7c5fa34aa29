"""The tables ``make bench`` prints: training side by side, ratios, pipeline cost, serving."""

from __future__ import annotations

from measure import fmt


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
            f"| {label} | {fmt(seed[key], digits)} | {fmt(project[key], digits)} | {ratio} |"
        )
    return "\n".join(out)


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
    project = summary["project"]
    logged = sorted(k for k in project if k.startswith("logged_to_val_"))
    if logged:
        parts.append(
            "\n".join(
                [
                    "\n### The project's own time to accuracy (MLflow metrics "
                    "`time_to_val_accuracy_<t>`: training seconds from the start of fit)\n",
                    "| val accuracy ≥ | seconds |",
                    "|---|---:|",
                    *(f"| {k.rsplit('_', 1)[1]} | {fmt(project[k], 1)} |" for k in logged),
                ]
            )
        )
    ratios = result.get("ratios")
    if ratios:
        rows = [
            "\n### Project / seed, within each repeat (median of the repeats' ratios, min–max)\n",
            "| | ratio |",
            "|---|---:|",
            f"| wall time to val ≥ 0.92 (repeats where the seed got there: "
            f"{ratios['seed_reached_0.92']} of {len(result['training']['seed'])}) | "
            + (fmt(ratios["to_val_0.92"], 2) if ratios["to_val_0.92"] else "–")
            + " |",
            "| wall time to val ≥ 0.91 | "
            + (fmt(ratios["to_val_0.91"], 2) if ratios["to_val_0.91"] else "–")
            + " |",
            f"| s per epoch | {fmt(ratios['per_epoch'], 2)} |",
        ]
        if ratios.get("repro_over_seed_script"):
            rows.append(
                f"| `dvc repro -f` / seed script | {fmt(ratios['repro_over_seed_script'], 2)} |"
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
                    f"| `dvc repro -f` (prepare, train, evaluate + promotion) | {fmt(repro)} "
                    "| 1.00× |",
                    f"| bare process (same work, no DVC/MLflow) | {fmt(bare)} | "
                    f"{fmt(pipe['repro_over_bare'], 2)}× (per-pair ratios) |",
                ]
            )
        )
        parts.append(
            f"\n## 3. Overheads\n\n| | value |\n|---|---:|\n"
            f"| no-op `dvc repro` | {fmt(pipe['noop_dvc_repro_s'], 2)} s |\n"
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
