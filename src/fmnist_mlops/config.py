"""Compose, validate and flatten the Hydra config; generate ``params.yaml``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.errors import ConfigError
from fmnist_mlops.paths import project_root

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
METRICS = ("val_accuracy", "val_loss")
MODES = ("max", "min")


def compose(overrides: Iterable[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, exactly as ``dvc exp run`` does.

    Args:
        overrides: Hydra override strings, e.g. ``["experiment=smoke", "train.epochs=3"]``.
        config_dir: Folder holding ``config.yaml``; defaults to ``<project root>/conf``.

    Returns:
        The composed config with interpolations resolved and no ``hydra`` node.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(config_dir or project_root() / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def params_yaml(overrides: Iterable[str] = (), config_dir: Path | None = None) -> str:
    """Return the text of ``params.yaml`` composed from ``conf/`` (byte-identical to DVC's)."""
    return OmegaConf.to_yaml(compose(overrides, config_dir))


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to dotted keys (``{"model.filters": [32, 64], ...}``)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _check(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {accepted}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    _check(value is None or (_is_int(value) and value > 0), key, value, "null or an integer > 0")


def validate(cfg: DictConfig) -> DictConfig:
    """Check every value the pipeline reads, before any file or MLflow run is created.

    Raises:
        ConfigError: One line naming the bad key, its value and what is accepted.
    """
    required = ("seed", "data", "model", "train", "registry", "mlflow", "paths")
    for key in required:
        _check(key in cfg, key, None, "a value (missing from the config)")
    _check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")

    data = cfg.data
    vs = data.val_split
    _check(_is_num(vs) and 0 < vs < 1, "data.val_split", vs, "a number in (0, 1)")
    _check(_is_int(data.split_seed), "data.split_seed", data.split_seed, "an integer")
    for key in ("data.max_train", "data.max_val", "data.max_test"):
        _optional_positive_int(cfg, key)

    model = cfg.model
    filters = list(model.filters) if OmegaConf.is_list(model.filters) else model.filters
    _check(
        isinstance(filters, list)
        and len(filters) > 0
        and all(_is_int(f) and f > 0 for f in filters),
        "model.filters",
        filters,
        "a non-empty list of integers > 0, e.g. [32, 64]",
    )
    # Each block halves the feature map with MaxPool(2); 28 -> 14 -> 7 -> 3 -> 1.
    _check(
        len(filters) <= 4, "model.filters", filters, "at most 4 entries (28x28 allows 4 poolings)"
    )
    ks = model.kernel_size
    _check(_is_int(ks) and 1 <= ks <= 7, "model.kernel_size", ks, "an integer in [1, 7]")
    du = model.dense_units
    _check(_is_int(du) and du > 0, "model.dense_units", du, "an integer > 0")
    dr = model.dropout
    _check(_is_num(dr) and 0 <= dr < 1, "model.dropout", dr, "a number in [0, 1)")

    train = cfg.train
    for key in ("epochs", "batch_size", "patience"):
        value = train[key]
        _check(_is_int(value) and value > 0, f"train.{key}", value, "an integer > 0")
    _check(_is_num(train.lr) and train.lr > 0, "train.lr", train.lr, "a number > 0")
    _check(
        train.optimizer in OPTIMIZERS, "train.optimizer", train.optimizer, f"one of {OPTIMIZERS}"
    )
    _check(train.monitor in MONITORS, "train.monitor", train.monitor, f"one of {MONITORS}")
    factor = train.get("lr_plateau_factor")
    _check(
        factor is None or (_is_num(factor) and 0 < factor < 1),
        "train.lr_plateau_factor",
        factor,
        "null (off) or a number in (0, 1)",
    )
    if factor is not None:
        lp = train.get("lr_plateau_patience")
        _check(_is_int(lp) and lp > 0, "train.lr_plateau_patience", lp, "an integer > 0")

    reg = cfg.registry
    _check(reg.metric in METRICS, "registry.metric", reg.metric, f"one of {METRICS}")
    _check(reg.mode in MODES, "registry.mode", reg.mode, f"one of {MODES}")
    md = reg.min_delta
    _check(_is_num(md) and md >= 0, "registry.min_delta", md, "a number >= 0")
    _check(_is_num(reg.floor), "registry.floor", reg.floor, "a number")
    _check(bool(reg.model_name), "registry.model_name", reg.model_name, "a non-empty name")
    _check(bool(cfg.mlflow.experiment), "mlflow.experiment", cfg.mlflow.experiment, "a name")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Write ``params.yaml`` from ``conf/`` (``make params``); ``--check`` only compares."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=smoke")
    args = parser.parse_args(argv)
    text = params_yaml(args.overrides)
    out = Path(args.output)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is stale: run `make params` (it is composed from conf/)")
            return 1
        return 0
    validate(OmegaConf.create(text))
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out} from conf/ {' '.join(args.overrides)}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
