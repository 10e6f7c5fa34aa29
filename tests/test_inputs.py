"""User input is used or refused: one line naming the bad value, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import assert_refused
from omegaconf import open_dict

from fmnist_mlops.config.compose import compose, validate
from fmnist_mlops.config.schema import derived
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.tracking import store

SCRIPTS = (
    "prepare",
    "train",
    "evaluate",
    "register",
    "rollback",
    "champion_history",
    "report",
    "tune",
    "reproduce",
)

# (overrides, the start of the one line that refuses them)
INCONSISTENT = {
    "metric/mode, both set": (
        ["registry.metric=val_loss", "registry.mode=max"],
        "registry.mode=max disagrees",
    ),
    "floor outside the metric": (["registry.floor=1.5"], "registry.floor=1.5 is invalid"),
    "loss floor below 0": (
        ["registry.metric=val_loss", "registry.mode=min", "registry.floor=-0.1"],
        "registry.floor=-0.1 is invalid",
    ),
    "subset below a stratified split": (["data.max_val=3"], "data.max_val=3 is invalid"),
    "subset above its split": (["data.max_test=10001"], "data.max_test=10001 is invalid"),
    "subset that leaves too few for stratifying": (
        ["data.max_train=47995"],
        "data.max_train=47995 is invalid",
    ),
    "split with too few val images": (["data.val_split=0.0001"], "data.val_split=0.0001"),
    "split with too few train images": (["data.val_split=0.9999"], "data.val_split=0.9999"),
    "batch above the training set": (
        ["+experiment=smoke", "train.batch_size=513"],
        "train.batch_size=513 is invalid",
    ),
    "plateau patience not below patience": (
        ["train.patience=3", "train.lr_plateau_patience=3"],
        "train.lr_plateau_patience=3 is invalid",
    ),
    "plateau patience under the one-cycle schedule": (
        ["train.schedule=onecycle", "train.lr_plateau_patience=2"],
        "train.lr_plateau_patience=2 is invalid with train.schedule=onecycle",
    ),
    "warm-up under the plateau schedule": (
        ["train.lr_warmup=0.1"],
        "train.lr_warmup=0.1 is invalid with train.schedule=plateau",
    ),
    "inf": (["train.lr=inf"], "train.lr=inf is invalid: expected a finite number"),
    "nan": (["data.val_split=nan"], "data.val_split=nan is invalid: expected a finite number"),
    "overflowing literal": (["registry.min_delta=1e999"], "registry.min_delta=inf is invalid"),
    "negative infinity": (["registry.floor=-inf"], "registry.floor=-inf is invalid"),
}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_inconsistent_or_non_finite_config_is_refused_in_one_line(case):
    overrides, start = INCONSISTENT[case]
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["+experiment=smoke"],
        ["+experiment=best"],
        ["registry.metric=val_loss", "registry.mode=min", "registry.floor=0.5"],
        ["data.max_train=48000", "data.max_val=12000", "data.max_test=10000"],
        ["data.max_train=10", "train.batch_size=10"],
        ["train.lr_plateau_factor=null", "train.patience=1", "train.lr_plateau_patience=1"],
    ],
)
def test_consistent_configs_still_run(overrides):
    validate(compose(overrides))


@pytest.mark.parametrize(
    ("overrides", "followed"),
    [
        ([], {"train.lr_plateau_patience": 1, "registry.mode": "max"}),
        (["train.patience=1"], {"train.lr_plateau_patience": 1}),
        (["train.patience=6"], {"train.lr_plateau_patience": 5}),
        (["registry.metric=val_loss"], {"registry.mode": "min"}),
        (["+experiment=best"], {"train.lr_plateau_patience": 4}),  # set there: kept
        (["train.lr_plateau_patience=2", "train.patience=5"], {"train.lr_plateau_patience": 2}),
        # No plateau under the one-cycle schedule: nothing to follow, nothing to refuse.
        (
            ["train.schedule=onecycle", "train.patience=1"],
            {"train.lr_plateau_patience": None, "train.lr_warmup": 0.2},
        ),
        (["train.schedule=onecycle", "train.lr_warmup=0"], {"train.lr_warmup": 0.0}),
        ([], {"train.lr_warmup": None}),
    ],
)
def test_a_key_left_null_follows_the_key_it_depends_on(overrides, followed):
    """A default that depends on another key never refuses what the user typed."""
    config = validate(compose(overrides))
    assert {k: derived(config)[k] for k in followed} == followed
    assert config.train.lr_plateau_patience == derived(config)["train.lr_plateau_patience"]
    assert config.registry.mode == derived(config)["registry.mode"]


def cli(script: str, tmp_path, root, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            f"src/{script}.py",
            f"paths.scratch={tmp_path / 'scratch'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
            *args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["model=resnet9000"], ("resnet9000", "cnn", "vgg")),  # unknown group option
        (["train.nonexistent=1"], ("train.nonexistent",)),  # unknown key
        (["model.filters=[32"], ("[32",)),  # an override that does not parse
        (["registry.metric=val_loss", "registry.mode=max"], ("registry.mode=max",)),
        (["data.max_val=3"], ("data.max_val=3",)),
        (["train.lr=1e999"], ("train.lr=inf",)),
    ],
)
def test_train_refuses_bad_input_before_anything_is_written(
    args, needles, tmp_path, project_root, subprocess_env
):
    proc = cli("train", tmp_path, project_root, subprocess_env, *args)
    assert_refused(proc, "train", *needles)
    assert not (tmp_path / "store").exists(), "no MLflow store, no run"
    assert not (tmp_path / "scratch").exists(), "no scratch folder"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_entry_point_reports_hydra_errors_in_one_line(
    script, tmp_path, project_root, subprocess_env
):
    proc = cli(script, tmp_path, project_root, subprocess_env, "model=resnet9000")
    assert_refused(proc, script, "resnet9000")


def test_an_explicit_tracking_uri_is_used_or_refused(tmp_path, monkeypatch):
    cfg = compose([])
    cases = {
        "foo://bar": "has no supported scheme",
        "sqlite:////proc/no/such/mlflow.db": "cannot create /proc/no",
        "http://127.0.0.1:9": "does not answer",
        "postgresql://nobody@127.0.0.1:9/db": "cannot be reached",
    }
    for uri, problem in cases.items():
        with open_dict(cfg):
            cfg.mlflow.tracking_uri = uri
        with pytest.raises(ConfigError, match=problem) as err:
            store.setup(validate(cfg).mlflow)
        assert str(err.value).startswith("mlflow.tracking_uri=")
    with open_dict(cfg):
        cfg.mlflow.tracking_uri = None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI='foo://bar' has no supported"):
        store.setup(validate(cfg).mlflow)


def png_header_only(path, width: int, height: int):
    """A tiny PNG file whose header declares a ``width`` x ``height`` grey canvas."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def predict_cli(tmp_path, root, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "src/predict.py", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["IMG", "--top-k", "11"], "--top-k=11 is invalid: expected an integer in [0, 10]"),
        (["IMG", "--top-k", "-1"], "--top-k=-1 is invalid"),
        (["--test-samples", "-1"], "--test-samples=-1 is invalid"),
        (["--test-samples", "10001"], "--test-samples=10001 is invalid"),
        (["HUGE"], "declares 400,000,000 pixels, above the cap of 89,478,485"),  # > 2x Pillow
        (["LARGE"], "10000x10000 = 100,000,000 pixels is above the cap of 89,478,485"),
        (["IMG", "--model-uri", "models:/nope@champion"], "--model-uri=models:/nope@champion"),
    ],
)
def test_predict_refuses_bad_arguments_and_images_in_one_line(
    args, needle, tmp_path, project_root, subprocess_env
):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "img.png")
    files = {
        "IMG": str(tmp_path / "img.png"),
        "HUGE": str(png_header_only(tmp_path / "huge.png", 20000, 20000)),
        "LARGE": str(png_header_only(tmp_path / "large.png", 10000, 10000)),
    }
    proc = predict_cli(tmp_path, project_root, subprocess_env, *[files.get(a, a) for a in args])
    said = assert_refused(proc, "predict")
    assert needle in said, said


def test_an_image_just_under_the_cap_is_read_in_bounded_memory(tmp_path, subprocess_env):
    from PIL import Image, ImageDraw

    from fmnist_mlops.serving.prediction import MAX_PIXELS

    width, height = 9000, MAX_PIXELS // 9000  # 89,478,000 pixels: just under the cap
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).rectangle((2000, 2000, 7000, 7000), fill=30)
    image.save(tmp_path / "big.png", compress_level=1)
    del image
    # The peak of this process's own memory (VmHWM resets at exec): ru_maxrss would also count
    # the pytest worker it was forked from, over 1.5 GB once that worker has trained a model.
    code = (
        "import re, sys; from pathlib import Path\n"
        "from fmnist_mlops.serving.prediction import load_images\n"
        f"x = load_images([Path({str(tmp_path / 'big.png')!r})])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)\n"
        "print(x.shape, float(x.max()), hwm)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shape, peak, rss_kb = proc.stdout.rsplit(")", 1)[0] + ")", *proc.stdout.split(")")[1].split()
    assert shape == "(1, 28, 28)" and float(peak) > 200  # dark garment on light: inverted
    assert int(rss_kb) < 1.5 * 1024 * 1024, f"peak RSS {int(rss_kb) / 1024:.0f} MB"


def test_make_ui_port_is_settable_and_help_shows_no_make_variables(project_root):
    def make(*args: str) -> str:
        return subprocess.run(
            ["make", "-s", "-C", str(project_root), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    assert "-p 5123" in make("-n", "ui", "UI_PORT=5123", "STAMP=Makefile")
    assert "-p 5001" in make("-n", "serve", "STAMP=Makefile")
    assert "$(" not in make("help")


def test_command_output_has_no_tensorflow_banner_and_no_colour_codes(
    tmp_path, project_root, subprocess_env, smoke_prepared
):
    # evaluate.py imports TensorFlow before it finds the run id unknown.
    args = ("+experiment=smoke", f"paths.prepared={smoke_prepared}", f"run_id={'0' * 32}")
    proc = cli("evaluate", tmp_path, project_root, subprocess_env, *args)
    assert_refused(proc, "evaluate", "is not a run of")
    assert "oneDNN custom operations" not in proc.stderr
    assert "absl::InitializeLog" not in proc.stderr
    assert "\x1b[" not in proc.stderr


@pytest.mark.parametrize("setting", ["paths.out", "paths.scratch"])
def test_an_unusable_output_folder_is_refused_before_any_run(
    setting, tmp_path, project_root, subprocess_env, smoke_prepared
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [
        "+experiment=smoke",
        f"paths.prepared={smoke_prepared}",
        f"{setting}={blocker / 'sub'}",
    ]
    proc = cli("train", tmp_path, project_root, subprocess_env, *args)
    assert_refused(proc, "train", f"{setting}='{blocker / 'sub'}' cannot be used")
    assert not (tmp_path / "store").exists()


# Every argparse command in src/ shares the stages' failure path (cli.fail).
MODULE_COMMANDS = {
    "clean-runs": ["src/clean_runs.py", "--no-dvc", "--tracking-uri=foo://x"],
    "server": ["src/server.py", "--backend-store-uri=foo://x"],
    "params": ["src/params.py", "--output={tmp}/p.yaml", "train.lr=-1"],
    "clean": ["src/clean.py", "--root={tmp}/a-file"],
    "predict": ["src/predict.py", "--top-k=99", "--test-samples=1"],
}


@pytest.mark.parametrize("stage", sorted(MODULE_COMMANDS))
def test_module_commands_fail_in_one_line_with_exit_2(
    stage, tmp_path, project_root, subprocess_env
):
    args = [a.format(tmp=tmp_path) for a in MODULE_COMMANDS[stage]]
    (tmp_path / "a-file").write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: error: "), lines
    assert not (tmp_path / "p.yaml").exists()
