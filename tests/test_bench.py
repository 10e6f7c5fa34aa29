"""The benchmark's baseline and arithmetic (timings themselves live in `make bench`, not here)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import ROOT, load_script

SEED_TEXT = ROOT / "benchmarks" / "seed_tutorial.md"  # the tutorial, as received
# The only edits allowed: the tutorial's typos, and the one call Keras 3 refuses.
FIXES = {
    "train_sclaed, val_scaled": "train_scaled, val_scaled",
    "input_size=(28, 28, 1)": "input_shape=(28, 28, 1)",
    "Dropout(0,4)": "Dropout(0.4)",
    "patiece=2": "patience=2",
    "metrics='accuracy'": "metrics=['accuracy']",
}


def _code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_seed_recipe_is_the_tutorial_with_typos_fixed_only():
    cells = re.findall(r"```python\n(.*?)```", SEED_TEXT.read_text(), re.S)
    tutorial = "\n".join(cells)
    for typo, fixed in FIXES.items():
        assert typo in tutorial
        tutorial = tutorial.replace(typo, fixed)
    recipe = (ROOT / "benchmarks" / "seed_recipe.py").read_text()
    assert _code_lines(recipe) == _code_lines(tutorial)


def test_flop_count_of_the_reference_cnn():
    from fmnist_mlops.config.compose import compose, validate

    train_mflop_per_image = load_script("benchmarks/flops.py").train_mflop_per_image

    forward, training = train_mflop_per_image(validate(compose()).model)
    # conv1 0.45 + conv2 7.23 + dense 0.63 + output 0.002 MFLOP; backward = 2x forward, minus
    # conv1's input gradient: the issue's ≈24.5 MFLOP per training image.
    assert forward == pytest.approx(8.306, abs=0.01)
    assert training == pytest.approx(24.47, abs=0.05)


def test_runs_that_never_reach_the_target_count_as_slowest():
    _fmt = load_script("benchmarks/measure.py").fmt
    _mid = load_script("benchmarks/measure.py").mid

    assert _fmt(_mid([None, None, 80.0])) == "never (2 of 3 runs)"
    stat = _mid([10.0, None, 30.0])
    assert stat["median"] == 30.0 and (stat["min"], stat["max"]) == (10.0, 30.0)
    assert _fmt(stat) == "30.0 (1 of 3 runs never)"
    assert _fmt(_mid([10.0, 12.0, 11.0])) == "11.0 (10.0–12.0)"


def test_ratios_are_taken_within_each_repeat():
    per_repeat_ratios = load_script("benchmarks/training.py").per_repeat_ratios

    def run(to_92, to_91, per_epoch, wall):
        return {
            "seconds_to_val_0.92": to_92,
            "seconds_to_val_0.91": to_91,
            "seconds_per_epoch": per_epoch,
            "wall_s": wall,
        }

    # The host ran twice as fast in the second repeat: per-repeat ratios stay 0.5 / 0.25.
    seeds = [run(None, 80.0, 20.0, 200.0), run(40.0, 40.0, 10.0, 100.0)]
    projects = [run(40.0, 40.0, 10.0, 100.0), run(10.0, 10.0, 5.0, 50.0)]
    pipes = [{"repro_s": 100.0}, {"repro_s": 50.0}]
    ratios = per_repeat_ratios(seeds, projects, pipes)
    assert ratios["seed_reached_0.92"] == 1
    assert ratios["to_val_0.92"]["median"] == 0.25 and ratios["to_val_0.92"]["n"] == 1
    assert ratios["to_val_0.91"]["median"] == pytest.approx(0.375)
    assert ratios["per_epoch"]["median"] == 0.5
    assert ratios["repro_over_seed_script"]["median"] == 0.5


def test_an_epochs_flops_count_its_validation_forwards():
    epoch_gflop = load_script("benchmarks/flops.py").epoch_gflop

    # 48,000 training images at 24.47 MFLOP, 12,000 validation images at 8.306 MFLOP each.
    assert epoch_gflop(24.47, 8.306, 0.2) == pytest.approx(1174.56 + 99.67, abs=0.01)


def test_the_report_shows_the_projects_own_time_to_accuracy():
    """`make bench` reads each run's logged time_to_val_accuracy_* metrics and prints them."""
    mid = load_script("benchmarks/measure.py").mid
    report = load_script("benchmarks/training_report.py").report
    project = {
        "wall_s": mid([60.0, 62.0]),
        "logged_to_val_0.90": mid([11.0, 13.0]),
        "logged_to_val_0.95": mid([None, None]),
    }
    result = {
        "training_summary": {"seed": None, "project": project},
        "matmul_ceiling_gflop_s": {"float32": 300.0, "bfloat16": 1500.0},
        "mflop_per_image": {"forward": 8.3, "training": 24.5},
    }
    text = report(result, "bfloat16")
    assert "| 0.90 | 12.0 (11.0–13.0) |" in text
    assert "| 0.95 | never (2 of 2 runs) |" in text


def test_a_recipe_holds_its_goal_only_on_both_medians():
    """`make bench-recipes`: accuracy and wall time are judged on medians over the seeds, on
    the minutes as measured and on the minutes at normal speed (each run's multiple of its
    seed's default run, times the default run's 60 s at normal speed)."""
    table = load_script("benchmarks/recipes.py").table

    def runs(recipe: str, tests: list[float], minutes: list[float]) -> list[dict]:
        return [
            {"recipe": recipe, "seed": s, "test_accuracy": t, "wall_s": m * 60}
            for s, t, m in zip((42, 1, 2), tests, minutes, strict=True)
        ]

    text = table(
        runs("default", [0.92, 0.92, 0.92], [1.0, 1.5, 2.0])  # the host slows down
        + runs("fast", [0.941, 0.939, 0.944], [5.0, 7.5, 11.0])  # 5x, 5x, 5.5x the default
        + runs("best", [0.951, 0.949, 0.949], [20.0, 21.0, 22.0]),  # median accuracy misses
        ["fast", "best"],
    )
    rows = text.splitlines()
    assert rows[2].startswith("| default | 0.9200 0.9200 0.9200 | 1.0 1.5 2.0 | 1.00 1.00 1.00 |")
    assert rows[3] == (
        "| fast | 0.9410 0.9390 0.9440 | 5.0 7.5 11.0 | 5.00 5.00 5.50 | 0.9410 | 7.5 | 5.0 "
        "| >= 0.940 in <= 6 min | no | yes |"
    )
    assert rows[4].startswith("| best | 0.9510 0.9490 0.9490 | 20.0 21.0 22.0 |")
    assert rows[4].endswith("| 0.9490 | 21.0 | 14.0 | >= 0.950 in <= 30 min | no | no |")


def test_a_rerun_of_a_stopped_recipe_measurement_continues_it(tmp_path, monkeypatch, capsys):
    """`make bench-recipes` is one measurement: stopped after a run, the same command runs only
    what is missing (the stopped run again, from scratch), and another measurement's partial
    file is refused, not continued or dropped. What `dvc exp run` does is not under test here:
    each run is a stand-in that records its pair (a stopped real run: the test below)."""
    recipes = load_script("benchmarks/recipes.py")
    ran: list[tuple[str, int]] = []
    stop_at = [("fast", 1)]

    def run_recipe(clone, recipe, seed):
        if (recipe, seed) in stop_at:
            stop_at.clear()
            raise KeyboardInterrupt  # Ctrl-C in the middle of this run
        ran.append((recipe, seed))
        return {"recipe": recipe, "seed": seed, "test_accuracy": 0.94, "wall_s": 300.0}

    monkeypatch.setattr(recipes, "run_recipe", run_recipe)
    monkeypatch.setattr(recipes, "project_copy", lambda tmp: tmp)
    out = tmp_path / "recipes.json"
    args = ["--recipes", "fast", "best", "--seeds", "42", "1", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        recipes.main(args)
    assert ran == [("default", 42), ("fast", 42), ("best", 42), ("default", 1)]
    assert not out.exists()
    assert recipes.progress_file(out).exists()

    # Other seeds: refused in one line, the unfinished measurement kept.
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        recipes.main([*args[:4], "2", "--out", str(out)])
    [line] = capsys.readouterr().err.splitlines()
    assert refused.value.code == 2 and "holds an unfinished measurement" in line, line
    assert recipes.progress_file(out).exists() and len(ran) == 4

    assert recipes.main(args) == 0
    assert ran[4:] == [("fast", 1), ("best", 1)], "none repeated"
    result = json.loads(out.read_text())
    assert [(r["recipe"], r["seed"]) for r in result["runs"]] == ran
    assert not recipes.progress_file(out).exists()


def test_the_lever_table_compares_variants_on_the_same_seeds():
    table = load_script("benchmarks/levers.py").table
    shoes = {"Sandal": 0.98, "Sneaker": 0.97, "Ankle boot": 0.96}
    row = {"val_accuracy": 0.94, "fit_s": 100.0, "epochs_trained": 10, "shoes": shoes}
    runs = [
        {**row, "variant": v, "seed": s, "test_accuracy": t, "logged_to_val_0.92": 50.0}
        | {"logged_to_val_0.94": None}
        for v, s, t in [("a", 42, 0.930), ("b", 42, 0.935), ("a", 1, 0.932), ("b", 1, 0.937)]
    ]
    text = table(runs, ["a", "b"])
    assert "| a | 0.9310 | 0.9300 0.9320 | 0.9400 | 100 | 10 | 50 | - | 0.980/0.970/0.960 |" in text
    assert "| b | 0.9360 | 0.9350 0.9370 |" in text


def test_a_stopped_benchmark_ends_the_command_it_runs_and_removes_its_clone(tmp_path):
    """SIGTERM to a benchmark (`kill`, a CI timeout) stops the command it is timing and what that
    command started, and its temporary folder goes: nothing keeps training after it."""
    pids = tmp_path / "pids"
    bench = tmp_path / "bench.py"
    bench.write_text(
        "import os, sys, tempfile\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from measure import run_timed\n"
        f"with tempfile.TemporaryDirectory(prefix='clone-', dir={str(tmp_path)!r}) as tmp:\n"
        f"    cmd = 'sleep 300 & echo $$ $! > {pids}.part && mv {pids}.part {pids}; wait'\n"
        "    run_timed(['bash', '-c', cmd], Path(tmp), dict(os.environ))\n"
    )
    proc = subprocess.Popen([sys.executable, str(bench)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert pids.exists(), proc.stderr.read() if proc.poll() is not None else "no command started"
    started = [int(pid) for pid in pids.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    for pid in started:  # the timed shell and the sleep it started
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    assert not list(tmp_path.glob("clone-*"))
