"""Config: composition, the params.yaml sync rule, validation and dvc.yaml hygiene."""

from __future__ import annotations

import ast
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, venv_env
from omegaconf import OmegaConf

from fmnist_mlops.config.compose import compose, params_yaml, validate
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.tracking.logged_params import flatten


def test_defaults_expose_the_documented_interface():
    cfg = compose(config_dir=ROOT / "conf")
    flat = flatten(cfg)
    assert flat["seed"] == 42
    assert flat["model.filters"] == [32, 64]
    assert (flat["model.dense_units"], flat["model.dropout"]) == (100, 0.4)
    assert flat["train.epochs"] == 13 and flat["train.monitor"] == "val_loss"
    # The tutorial's loss, smoothed (issue #31, item 6); `best` was measured without it.
    assert flat["train.label_smoothing"] == 0.1
    best = flatten(compose(config_dir=ROOT / "conf", overrides=["+experiment=best"]))
    assert best["train.label_smoothing"] == 0.0
    assert (flat["data.val_split"], flat["data.split_seed"]) == (0.2, 42)
    # mode follows the metric unless set: null here, "max" once validated.
    assert flat["registry.metric"] == "val_accuracy" and flat["registry.mode"] is None
    assert (
        flat["registry.model_name"] == "fashion-mnist-cnn" and flat["registry.alias"] == "champion"
    )
    assert flat["mlflow.experiment"] == "fashion-mnist"
    for key in (
        "data.source_dir",
        "train.batch_size",
        "train.lr",
        "registry.min_delta",
        "registry.floor",
    ):
        assert key in flat
    assert "hydra" not in cfg


def test_smoke_experiment_is_small():
    cfg = compose(["+experiment=smoke"], config_dir=ROOT / "conf")
    assert cfg.data.max_train <= 1000 and cfg.train.epochs <= 2
    assert cfg.model.filters == [32, 64], "smoke shrinks data and epochs, not the architecture"


def test_committed_params_yaml_is_what_conf_composes():
    committed = (ROOT / "params.yaml").read_text()
    assert committed == params_yaml(config_dir=ROOT / "conf"), "run `make params` and commit it"


def test_check_mode_detects_stale_params(tmp_path):
    stale = tmp_path / "params.yaml"
    stale.write_text(params_yaml(config_dir=ROOT / "conf").replace("patience: 2", "patience: 7"))
    cmd = [sys.executable, str(ROOT / "src" / "params.py"), "--check", "--output", str(stale)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=venv_env())
    assert result.returncode == 1 and "stale" in result.stdout
    subprocess.run(cmd[:2] + ["--output", str(stale)], cwd=ROOT, check=True, env=venv_env())
    assert subprocess.run(cmd, cwd=ROOT, env=venv_env()).returncode == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.filters=[]", "model.filters=[] is invalid: expected a non-empty list"),
        ("model.filters=[32,0]", "model.filters=[32, 0] is invalid"),
        ("model.filters=[8,8,8,8,8]", "at most 4 entries"),
        ("model.dense_units=0", "model.dense_units=0 is invalid: expected an integer > 0"),
        ("model.dropout=1.0", "model.dropout=1.0 is invalid: expected a number in [0, 1)"),
        ("data.val_split=0", "data.val_split=0 is invalid: expected a number in (0, 1)"),
        ("train.epochs=0", "train.epochs=0 is invalid"),
        ("train.batch_size=-4", "train.batch_size=-4 is invalid"),
        ("train.patience=0", "train.patience=0 is invalid"),
        ("train.optimizer=adagrad", "train.optimizer='adagrad' is invalid: expected one of"),
        ("train.monitor=val_auc", "train.monitor='val_auc' is invalid: expected one of"),
        ("registry.mode=best", "registry.mode='best' is invalid"),
        ("train.epochs='3'", "train.epochs='3' is invalid: expected an integer > 0"),
        ("model.filters=[32,a]", "model.filters=[32, 'a'] is invalid"),
        ("data.max_train=-5", "data.max_train=-5 is invalid: expected null or an integer > 0"),
        ("train.lr_plateau_factor=1.5", "expected null (off) or a number in (0, 1)"),
        ("+model.depth=3", "model.depth is not a setting of model"),
        ("~train.epochs", "train.epochs is missing: expected an integer > 0"),
    ],
)
def test_bad_values_get_one_line_errors(override, message):
    cfg = compose([override], config_dir=ROOT / "conf")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def train_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "src/train.py", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=120,
    )


def test_entry_point_rejects_bad_config_before_creating_a_run(tmp_path):
    db = tmp_path / "mlflow.db"
    result = train_cli("model.dropout=1.5", f"mlflow.tracking_uri=sqlite:///{db}")
    assert result.returncode == 2
    # Refused before TensorFlow or MLflow is imported: nothing of theirs beside the line.
    lines = result.stderr.strip().splitlines()
    assert lines == ["train: error: model.dropout=1.5 is invalid: expected a number in [0, 1)"]
    assert not db.exists(), "no MLflow store or run may be created for a bad config"


def test_unknown_key_is_refused_by_hydra():
    result = train_cli("model.filterz=[1]")
    assert result.returncode != 0 and "filterz" in result.stderr


# ----------------------------------------------------------------------------- dvc.yaml


def local_imports(module_file: Path, package_dir: Path, seen: set[Path]) -> set[Path]:
    """Package files ``module_file`` imports, transitively (what a stage really runs)."""
    tree = ast.parse(module_file.read_text())
    for node in ast.walk(tree):
        names = []
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("fmnist_mlops")
        ):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("fmnist_mlops")]
        for name in names:
            parts = name.split(".")[1:]
            candidate = (
                package_dir.joinpath(*parts).with_suffix(".py")
                if parts
                else package_dir / "__init__.py"
            )
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            inits = [package_dir.joinpath(*parts[:i], "__init__.py") for i in range(len(parts))]
            for path in (candidate, *inits):
                if path.is_file() and path not in seen:
                    seen.add(path)
                    local_imports(path, package_dir, seen)
    return seen


# Files a stage copies into what it produces without importing them (models-from-code).
CODE_FILES_LOGGED = {"train": {"src/fmnist_mlops/model/pyfunc_model.py"}}


def test_each_stage_depends_on_exactly_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    package = ROOT / "src" / "fmnist_mlops"
    for name, stage in stages.items():
        script = ROOT / "src" / f"{name}.py"
        assert f"src/{name}.py" in stage["cmd"]
        code = {str(p.relative_to(ROOT)) for p in local_imports(script, package, set())}
        declared = {d for d in stage["deps"] if d.startswith("src/")}
        assert declared == code | {f"src/{name}.py"} | CODE_FILES_LOGGED.get(name, set()), name


def test_stage_params_exist_in_params_yaml():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    flat = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for name, stage in stages.items():
        assert "-cd . -cn params" in stage["cmd"], f"{name} must run with params.yaml"
        for key in stage.get("params", []):
            assert key in flat or any(k.startswith(f"{key}.") for k in flat), (name, key)


def test_ad_hoc_runs_do_not_write_dvc_outputs():
    cfg = compose(config_dir=ROOT / "conf")
    assert cfg.paths.out is None and cfg.paths.scratch == "scratch"
    from fmnist_mlops.tracking.scratch import out_dir

    scratch = out_dir(cfg.paths.out, "train", cfg.paths.scratch)
    try:
        # Inside the checkout (its own cache), in a folder neither git nor DVC tracks.
        assert scratch.parent == ROOT / "scratch"
        for ignore in (".gitignore", ".dvcignore"):
            assert "/scratch/" in (ROOT / ignore).read_text().splitlines()
        stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
        dvc_outs = [o for stage in stages.values() for o in stage["outs"]]
        assert not any(Path(o).parts[0] == "scratch" for o in dvc_outs)
    finally:
        shutil.rmtree(scratch)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # only if this test made it


def test_unknown_config_group_option_is_refused():
    result = train_cli("model=resnet9000")
    assert result.returncode != 0 and "resnet9000" in result.stderr and "cnn" in result.stderr


RECIPES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if p.stem != "smoke")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_is_selectable_from_the_train_command_line(recipe):
    chosen = OmegaConf.load(ROOT / "conf" / "experiment" / f"{recipe}.yaml")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), f"+experiment={recipe}", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    job = OmegaConf.create(proc.stdout)
    validate(job)
    model_choice = next(d for d in chosen.defaults if "override /model" in str(d))
    assert job.model.name == next(iter(model_choice.values()))
    for group in ("model", "train"):
        for key, value in chosen[group].items():
            assert job[group][key] == value, f"{group}.{key}"


def test_the_model_name_lives_only_in_conf():
    """Makefile, code, tools and benchmarks read it from the composed config."""
    name = compose(config_dir=ROOT / "conf").registry.model_name
    files = [ROOT / "Makefile", *(ROOT / "src").rglob("*.py")]
    files += [*(ROOT / "tools").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    spelled = [str(f.relative_to(ROOT)) for f in files if name in f.read_text()]
    assert spelled == []


def test_make_serve_serves_the_model_conf_names():
    cfg = compose(config_dir=ROOT / "conf")
    dry = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"-m models:/{cfg.registry.model_name}@{cfg.registry.alias} " in dry.stdout


GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in (ROOT / "conf").iterdir()
    if group.is_dir() and group.name not in ("tune",)
    for option in group.glob("*.yaml")
)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=lambda v: str(v))
def test_every_config_variant_composes_and_validates(group, option):
    """Every file of every config group (found by glob, so a new variant is tested too)."""
    override = f"+{group}={option}" if group == "experiment" else f"{group}={option}"
    config = validate(compose([override], config_dir=ROOT / "conf"))
    if group == "model":
        from fmnist_mlops.model.cnn import build_model

        assert build_model(config.model).count_params() > 0


def test_the_system_data_folder_is_written_in_one_place():
    """conf/data/ names it; code, the Makefile and the tests read it from there (generated
    params.yaml and dvc.lock may repeat it, and the docs describe it to people)."""
    folder = yaml.safe_load((ROOT / "conf/data/fashion_mnist.yaml").read_text())["system_dir"]
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.yaml", "*.yml", "*.toml", "Makefile", "*.cfg", "tools/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    generated = {"params.yaml", "dvc.lock"}
    holders = sorted(
        name
        for name in listed
        if name not in generated
        and (ROOT / name).is_file()
        and folder in (ROOT / name).read_text(errors="replace")
    )
    assert holders == ["conf/data/fashion_mnist.yaml"]
