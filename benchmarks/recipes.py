"""The named recipes against their goals: ``dvc exp run -S '+experiment=<name>'``, three seeds.

For each seed, each recipe runs once, interleaved (drift of the host's speed hits them alike),
in a fresh clone of the committed project: the wall time of the whole ``dvc exp run``
(prepare, train and evaluate: what a user waits for) and the test accuracy it wrote to
``reports/metrics.json``. Prints a Markdown table with every seed, the medians and whether each
goal holds on them; writes ``benchmarks/results/recipes.json``. Needs the real data
(``make data``); about 3 x (1 + 6 + 30) minutes for both recipes.

The goals are minutes on this machine at its normal speed, and its speed drifts (up to 1.8x
slow for hours). So each seed also runs the default pipeline (``dvc exp run`` with no recipe:
about 60 s at normal speed) just before the recipes, and every recipe's wall time is also
given as a multiple of that seed's default run: ratio x 60 s estimates the recipe's time at
normal speed. Both judgements are printed, as measured and at normal speed. The estimate is
rough (it read 20 % low for ``fast`` on a slow host, which slows the short default run more
than long epochs; docs/experiments.md): a run at normal speed decides.

One measurement, one owner: each finished run is kept in ``<out>.partial.json`` as it ends, and
the same command run again on the same commit continues the measurement (an interrupted run
starts again from scratch, so every wall time is whole; no finished run is ever repeated or
re-rolled). The partial file is removed when the results are written.

Usage: python benchmarks/recipes.py [--recipes fast best] [--seeds 42 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import BIN, RESULTS, ROOT, each, env, run_timed, table_head, table_row
from pipeline import project_copy

from fmnist_mlops.runtime.files import write_json
from fmnist_mlops.tracking.tags import git_tags

# The goals of each recipe: median test accuracy at least this, median wall minutes at most.
GOALS = {"fast": (0.940, 6.0), "best": (0.950, 30.0)}
# The yardstick run before the recipes of every seed: the pipeline as params.yaml has it.
REFERENCE = "default"
# What the default `dvc exp run --force` takes on this machine at its normal speed (~3.4 s a
# default epoch; docs/performance.md): the unit that turns a ratio back into minutes.
REFERENCE_NORMAL_S = 60.0
COLUMNS = (
    "recipe | test per seed | wall min per seed | x default per seed | test (median) "
    "| wall min (median) | min at normal speed (median) | goal | holds as measured "
    "| holds at normal speed"
)


def plan(recipes: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (recipe, seed) pair, interleaved: for each seed the default run, then each recipe."""
    return [(recipe, seed) for seed in seeds for recipe in [REFERENCE, *recipes]]


def progress_file(out: Path) -> Path:
    """Where an unfinished measurement keeps its finished runs: ``<out>.partial.json``."""
    return out.with_name(out.stem + ".partial.json")


def continued(partial: Path, key: dict) -> list[dict]:
    """The finished runs of the unfinished measurement ``key`` names; [] when there is none.

    Raises:
        SystemExit: ``partial`` belongs to another measurement (other commit, recipes or seeds):
            continuing it would mix two, and starting over would drop its runs unasked.
    """
    if not partial.exists():
        return []
    saved = json.loads(partial.read_text())
    if {k: saved.get(k) for k in key} != key:
        theirs = ", ".join(f"{k}={saved.get(k)}" for k in key)
        print(
            f"recipes: error: {partial} holds an unfinished measurement ({theirs}); rerun it "
            "with those arguments on that commit to continue it, or delete the file to start over",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return saved["runs"]


def run_recipe(clone: Path, recipe: str, seed: int) -> dict:
    """One ``dvc exp run`` of ``+experiment=<recipe>`` with ``seed``; its wall time and test."""
    # --force: every stage runs, prepare too, as on a machine that has not run it yet.
    cmd = [str(BIN / "dvc"), "exp", "run", "--force", "-S", f"seed={seed}"]
    if recipe != REFERENCE:
        cmd += ["-S", f"+experiment={recipe}"]
    timed = run_timed(cmd, clone, env())
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    return {
        "recipe": recipe,
        "seed": seed,
        "wall_s": timed["seconds"],
        "run_id": metrics["run_id"],
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics.get("val_accuracy"),
        "epochs_trained": metrics.get("epochs_trained"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(runs: list[dict], recipes: list[str]) -> str:
    """One Markdown row per recipe, the default run first: every seed, the medians, the goal.

    A goal is judged twice on the medians: on the minutes as measured, and on the minutes at
    the machine's normal speed (each run's multiple of its seed's default run, times 60 s).
    """
    reference = {r["seed"]: r["wall_s"] for r in runs if r["recipe"] == REFERENCE}
    lines = table_head(COLUMNS)
    for recipe in [REFERENCE, *recipes]:
        mine = [r for r in runs if r["recipe"] == recipe]
        ratios = [r["wall_s"] / reference[r["seed"]] for r in mine]
        test = statistics.median(r["test_accuracy"] for r in mine)
        minutes = statistics.median(r["wall_s"] / 60 for r in mine)
        normal = statistics.median(ratios) * REFERENCE_NORMAL_S / 60
        floor, limit = GOALS.get(recipe, (None, None))
        goal = "-" if floor is None else f">= {floor:.3f} in <= {limit:.0f} min"
        holds = (
            ["-", "-"]
            if floor is None
            else [_yes(test >= floor and m <= limit) for m in (minutes, normal)]
        )
        lines.append(
            table_row(
                recipe,
                each([r["test_accuracy"] for r in mine], ".4f"),
                each([r["wall_s"] / 60 for r in mine], ".1f"),
                each(ratios, ".2f"),
                f"{test:.4f}",
                f"{minutes:.1f}",
                f"{normal:.1f}",
                goal,
                *holds,
            )
        )
    return "\n".join(lines)


def _yes(holds: bool) -> str:
    return "yes" if holds else "no"


def main(argv: list[str] | None = None) -> int:
    """Run every recipe on every seed in one fresh clone; print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    named = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    parser.add_argument("--recipes", nargs="+", default=list(GOALS), choices=named)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "recipes.json")
    args = parser.parse_args(argv)
    commit = git_tags(ROOT)["git_commit"]
    key = {"commit": commit, "recipes": args.recipes, "seeds": args.seeds}
    partial = progress_file(args.out)
    runs = continued(partial, key)
    done = {(r["recipe"], r["seed"]) for r in runs}
    todo = [pair for pair in plan(args.recipes, args.seeds) if pair not in done]
    if runs:
        print(f"continuing {partial}: {len(runs)} runs done, {len(todo)} to go", flush=True)
    if todo:
        with tempfile.TemporaryDirectory(prefix="fmnist-recipes-") as tmp:
            clone = project_copy(Path(tmp))
            for recipe, seed in todo:
                runs.append(run_recipe(clone, recipe, seed))
                write_json(partial, {**key, "runs": runs})
                print(json.dumps(runs[-1]), flush=True)
    print(table(runs, args.recipes))
    write_json(
        args.out,
        {"goals": GOALS, "reference_normal_s": REFERENCE_NORMAL_S, "commit": commit, "runs": runs},
    )
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
