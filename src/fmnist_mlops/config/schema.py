"""The typed config schema: every key the pipeline reads, its type and accepted range.

Validation happens once, at the start of every stage, before any file or MLflow run is
created. A violation becomes one line: ``key=value is invalid: expected <what is accepted>``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Fashion-MNIST, the one place its facts are written (the config is checked against them, every
# layer imports them from here). Only the served model's own code (model/pyfunc_model.py,
# copied into every logged model, which must not import this package) repeats the image shape.
# fmt: off
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# fmt: on
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)  # grayscale, raw 0-255 pixels
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
STRATEGIES = ("none", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
METRICS = ("val_accuracy", "val_loss")
MODES = ("max", "min")
HEADS = ("flatten", "global_avg")
SCHEDULES = ("plateau", "onecycle")
ONECYCLE_WARMUP = 0.2  # share of the steps the one-cycle schedule warms up over, unless set
MAX_BLOCKS = 4  # each block halves 28x28 with MaxPool(2): 28 -> 14 -> 7 -> 3 -> 1
# Which way each registry metric improves, and the values it can take.
METRIC_MODE = {"val_accuracy": "max", "val_loss": "min"}
METRIC_RANGE = {"val_accuracy": (0.0, 1.0), "val_loss": (0.0, float("inf"))}


def _f(description: str, **constraints: Any) -> Any:
    return Field(description=description, **constraints)


PositiveInt = Annotated[int, _f("an integer > 0", gt=0)]


class _Strict(BaseModel):
    # inf and nan (and literals too large for a float, which YAML reads as inf) never run.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class PathsCfg(_Strict):
    """Where prepared data and stage outputs go."""

    prepared: str = _f("a folder path", min_length=1)
    out: str | None = _f("null (a scratch folder) or a folder path")
    scratch: str = _f("a folder path (relative: to the repository)", min_length=1)


class DataCfg(_Strict):
    """Raw data sources and the split (``conf/data``)."""

    source_dir: str | None = _f("null or a folder holding the four *-ubyte.gz files")
    system_dir: str = _f("a folder path")
    keras_cache_dir: str = _f("a folder path")
    base_url: str = _f("an http(s) URL", pattern=r"^https?://")
    download_timeout_s: float = _f("a number of seconds > 0", gt=0)
    val_split: float = _f("a number in (0, 1)", gt=0, lt=1)
    split_seed: int = _f("an integer")
    max_train: PositiveInt | None = _f("null or an integer > 0")
    max_val: PositiveInt | None = _f("null or an integer > 0")
    max_test: PositiveInt | None = _f("null or an integer > 0")


class ModelCfg(_Strict):
    """The CNN (``conf/model``)."""

    name: str = _f("a name", min_length=1)
    filters: list[int] = _f(
        f"a non-empty list of integers > 0, at most {MAX_BLOCKS} entries "
        f"(28x28 allows {MAX_BLOCKS} poolings), e.g. [32, 64]"
    )
    kernel_size: int = _f("an integer in [1, 7]", ge=1, le=7)
    dense_units: int = _f("an integer > 0", gt=0)
    dropout: float = _f("a number in [0, 1)", ge=0, lt=1)
    convs_per_block: int = _f("an integer in [1, 4]", ge=1, le=4)
    batch_norm: bool = _f("true or false")
    residual: bool = _f("true or false")
    block_dropout: float = _f("a number in [0, 1)", ge=0, lt=1)
    head: Literal[HEADS] = _f(f"one of {HEADS}")
    tta_shift: int = _f("an integer number of pixels in [0, 4]", ge=0, le=4)

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[int]) -> list[int]:
        if not value or len(value) > MAX_BLOCKS or any(f <= 0 for f in value):
            raise ValueError("bad filters")
        return value


class AugmentCfg(_Strict):
    """On-the-fly augmentation of training batches (``train.augment``)."""

    flip: bool = _f("true or false")
    shift: float = _f("a fraction of the image side in [0, 0.5]", ge=0, le=0.5)
    erase: float = _f("a probability in [0, 1]", ge=0, le=1)


class TrainCfg(_Strict):
    """Fitting, early stopping and the LR schedule (``conf/train``)."""

    epochs: int = _f("an integer > 0", gt=0)
    batch_size: int = _f("an integer > 0", gt=0)
    lr: float = _f("a number > 0", gt=0)
    optimizer: Literal[OPTIMIZERS] = _f(f"one of {OPTIMIZERS}")
    monitor: Literal[MONITORS] = _f(f"one of {MONITORS}")
    patience: int = _f("an integer > 0", gt=0)
    lr_plateau_factor: float | None = _f("null (off) or a number in (0, 1)", gt=0, lt=1)
    lr_plateau_patience: int | None = _f("null (follows train.patience) or an integer > 0", gt=0)
    schedule: Literal[SCHEDULES] = _f(f"one of {SCHEDULES}")
    lr_warmup: float | None = _f(
        "null (0.2 under train.schedule=onecycle) or a fraction of the steps in [0, 1)", ge=0, lt=1
    )
    label_smoothing: float = _f("a number in [0, 0.5)", ge=0, lt=0.5)
    ema: float | None = _f("null (off) or a momentum in (0, 1)", gt=0, lt=1)
    verbose: Literal["auto", 0, 1, 2] = _f("auto, 0, 1 or 2")
    precision: Literal[PRECISIONS] = _f(f"one of {PRECISIONS}")
    distribute: Literal[STRATEGIES] = _f(f"one of {STRATEGIES}")
    cpu_replicas: int = _f("an integer >= 1", ge=1, le=64)
    augment: AugmentCfg


class RegistryCfg(_Strict):
    """The promotion rule (``conf/registry``)."""

    model_name: str = _f("a non-empty name", min_length=1)
    alias: str = _f("a non-empty alias", min_length=1)
    metric: Literal[METRICS] = _f(f"one of {METRICS}")
    mode: Literal[MODES] | None = _f(f"null (the metric's direction) or one of {MODES}")
    min_delta: float = _f("a number >= 0", ge=0)
    floor: float = _f("a number")
    lock_url: str | None = _f(
        "null (a file lock) or a postgresql:// URL", pattern=r"^postgresql(\+\w+)?://"
    )


class MlflowCfg(_Strict):
    """Tracking (``conf/mlflow``)."""

    experiment: str = _f("a non-empty experiment name", min_length=1)
    tracking_uri: str | None = _f("null (the project's SQLite store) or a tracking URI")
    http_max_retries: int = _f("an integer in [0, 10]", ge=0, le=10)
    http_backoff_factor: int = _f("an integer number of seconds in [0, 10]", ge=0, le=10)
    http_timeout_s: int = _f("an integer number of seconds in [1, 600]", ge=1, le=600)
    probe_timeout_s: int = _f("an integer number of seconds in [1, 300]", ge=1, le=300)
    system_metrics: bool = _f("true or false")


class Config(_Strict):
    """The whole composed config (``params.yaml``)."""

    seed: int = _f("an integer >= 0", ge=0)
    paths: PathsCfg
    run_id: str | None = _f("null or an MLflow run id (32 hex digits)", pattern=r"^[0-9a-f]{32}$")
    data: DataCfg
    model: ModelCfg
    train: TrainCfg
    registry: RegistryCfg
    mlflow: MlflowCfg


def split_sizes(val_split: float) -> dict[str, int]:
    """Images in the train, val and test splits before any ``data.max_*`` subset.

    As scikit-learn's ``train_test_split`` sizes them (the validation part rounded up).
    """
    n_val = math.ceil(val_split * TRAIN_IMAGES)
    return {"train": TRAIN_IMAGES - n_val, "val": n_val, "test": TEST_IMAGES}


def derived(cfg: Config) -> dict[str, Any]:
    """Values of keys left null that follow another key, as the run uses them.

    ``train.lr_plateau_patience`` follows ``train.patience`` (one fewer, at least 1; none under
    the one-cycle schedule), ``train.lr_warmup`` the schedule (0.2 under one-cycle, else none)
    and ``registry.mode`` follows ``registry.metric``.
    """
    return {
        "train.lr_plateau_patience": _plateau_patience(cfg.train),
        "train.lr_warmup": cfg.train.lr_warmup
        if cfg.train.lr_warmup is not None or cfg.train.schedule != "onecycle"
        else ONECYCLE_WARMUP,
        "registry.mode": cfg.registry.mode or METRIC_MODE[cfg.registry.metric],
    }


def _plateau_patience(train: TrainCfg) -> int | None:
    if train.lr_plateau_patience is not None or train.schedule != "plateau":
        return train.lr_plateau_patience  # the one-cycle schedule has no plateau to watch
    return max(train.patience - 1, 1)


def resolve_derived(cfg: Config) -> Config:
    """Fill the null keys of :func:`derived` in, so nothing below reads a null."""
    values = derived(cfg)
    cfg.train.lr_plateau_patience = values["train.lr_plateau_patience"]
    cfg.train.lr_warmup = values["train.lr_warmup"]
    cfg.registry.mode = values["registry.mode"]
    return cfg


def cross_check(cfg: Config) -> str | None:
    """The first impossible combination of valid fields, as one line (None: none).

    A subset larger than its split, a batch larger than the training set, a metric/mode pair
    that promotes worse models, a plateau setting the schedule does not use.
    """
    sizes = split_sizes(cfg.data.val_split)
    for split, size in sizes.items():
        if split != "test" and size < NUM_CLASSES:
            return (
                f"data.val_split={cfg.data.val_split} is invalid: it leaves {size} {split} images, "
                f"expected at least {NUM_CLASSES} in each split (one per class)"
            )
    for split, size in sizes.items():
        n = getattr(cfg.data, f"max_{split}")
        if n is not None and n != size and not NUM_CLASSES <= n <= size - NUM_CLASSES:
            return (
                f"data.max_{split}={n} is invalid: expected null, {size} (the whole {split} "
                f"split) or a stratified subset of {NUM_CLASSES}..{size - NUM_CLASSES} images"
            )
    train_images = cfg.data.max_train or sizes["train"]
    if cfg.train.batch_size > train_images:
        return (
            f"train.batch_size={cfg.train.batch_size} is invalid: expected at most the "
            f"{train_images} training images"
        )
    # Only values the user set are checked against each other: a null follows its key.
    if cfg.train.schedule == "plateau" and cfg.train.lr_warmup is not None:
        return (
            f"train.lr_warmup={cfg.train.lr_warmup} is invalid with train.schedule=plateau "
            "(only the one-cycle schedule warms up): remove it, or set train.schedule=onecycle"
        )
    if cfg.train.schedule == "onecycle" and cfg.train.lr_plateau_patience is not None:
        return (
            f"train.lr_plateau_patience={cfg.train.lr_plateau_patience} is invalid with "
            "train.schedule=onecycle (its rate follows the step, not a plateau): remove it, "
            "or set train.schedule=plateau"
        )
    if (
        cfg.train.lr_plateau_factor is not None
        and cfg.train.lr_plateau_patience is not None
        and cfg.train.lr_plateau_patience >= cfg.train.patience
    ):
        return (
            f"train.lr_plateau_patience={cfg.train.lr_plateau_patience} is invalid with "
            f"train.patience={cfg.train.patience}: expected fewer epochs (the rate must get a "
            "chance to drop before early stopping ends the run), or train.lr_plateau_factor=null"
        )
    reg = cfg.registry
    if reg.mode is not None and reg.mode != METRIC_MODE[reg.metric]:
        return (
            f"registry.mode={reg.mode} disagrees with registry.metric={reg.metric}: expected "
            f"registry.mode={METRIC_MODE[reg.metric]} (and registry.floor in its units)"
        )
    low, high = METRIC_RANGE[reg.metric]
    if not low <= reg.floor <= high:
        return (
            f"registry.floor={reg.floor} is invalid for registry.metric={reg.metric}: expected "
            f"a value in [{low}, {high}]"
        )
    return None
