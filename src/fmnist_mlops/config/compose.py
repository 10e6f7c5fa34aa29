"""Compose and validate the Hydra config; generate ``params.yaml``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.config.schema import Config, ReproduceCfg, TuneCfg
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.paths import project_root


def compose(overrides: Iterable[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, exactly as ``dvc exp run`` does.

    Args:
        overrides: Hydra override strings, e.g. ``["+experiment=smoke", "train.epochs=3"]``.
        config_dir: Folder holding ``config.yaml``; defaults to ``<project root>/conf``.

    Returns:
        The composed config with interpolations resolved and no ``hydra`` node.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if config_dir is None and GlobalHydra.instance().is_initialized():
        # Inside an @hydra.main entry point reading conf/ (the tuner composing its trials).
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(str(config_dir or project_root() / "conf"), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def champion_uri(overrides: Iterable[str] = ()) -> str:
    """``models:/<registry.model_name>@<registry.alias>`` of the composed config.

    The one source of the registered model's name for commands outside the stages (serving,
    prediction, tools, benchmarks, housekeeping).
    """
    registry = compose(overrides).registry
    return f"models:/{registry.model_name}@{registry.alias}"


def params_yaml(overrides: Iterable[str] = (), config_dir: Path | None = None) -> str:
    """Return the text of ``params.yaml`` composed from ``conf/`` (byte-identical to DVC's)."""
    return OmegaConf.to_yaml(compose(overrides, config_dir))


def validate(cfg: DictConfig) -> Config:
    """Check every value the pipeline reads against the typed schema in :mod:`schema`.

    Called once at the start of every stage, before any file or MLflow run is created; the
    stage then hands the typed sub-configs (``model``, ``train``, ``data``, ``registry``) down,
    so nothing below casts, defaults or re-checks what the schema guarantees.

    Returns:
        The typed config.

    Raises:
        ConfigError: One line naming the bad key, its value and what is accepted.
    """
    from pydantic import ValidationError

    from fmnist_mlops.config.schema import cross_check, first_error

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    try:
        typed = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(first_error(data, exc)) from None
    problem = cross_check(typed)
    if problem:
        raise ConfigError(problem)
    return typed


# The kinds of search-space entries the tuner samples (``tune.space.<key>.type``).
DIST_TYPES = ("categorical", "float", "int")


def project_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides of a ``tune`` command line that belong to the project config.

    ``tune.*`` overrides are the tuner's own; every trial composes its config from the rest
    plus its sampled values.
    """
    return [o for o in overrides if not o.lstrip("+~").startswith("tune")]


def validate_tune(tune_cfg: Any) -> TuneCfg:
    """Check ``tune`` against :class:`schema.TuneCfg` and its space; one line on error.

    Returns:
        The typed ``tune`` config the tuner reads from then on.
    """
    from pydantic import ValidationError

    from fmnist_mlops.config.schema import TuneConfig, first_error

    data = {"tune": OmegaConf.to_container(tune_cfg, resolve=True)}
    try:
        typed = TuneConfig.model_validate(data).tune
    except ValidationError as exc:
        raise ConfigError(first_error(data, exc, TuneConfig)) from None
    check_space(typed.space)
    return typed


def validate_reproduce(reproduce_cfg: Any) -> ReproduceCfg:
    """Check ``reproduce`` against :class:`schema.ReproduceCfg`; one line on error."""
    from pydantic import ValidationError

    from fmnist_mlops.config.schema import ReproduceConfig, first_error

    data = {"reproduce": OmegaConf.to_container(reproduce_cfg, resolve=True)}
    try:
        typed = ReproduceConfig.model_validate(data).reproduce
    except ValidationError as exc:
        raise ConfigError(first_error(data, exc, ReproduceConfig)) from None
    if (isinstance(typed.version, int) and typed.version < 1) or not str(typed.version).strip():
        raise ConfigError(
            f"reproduce.version={typed.version}: expected a version number >= 1 or an alias"
        )
    return typed


def check_space(space: Any) -> None:
    """Fail with one line on a malformed search-space entry."""
    if not space:
        raise ConfigError("tune.space is empty: expected at least one key to search")
    for key, spec in space.items():
        kind = spec.get("type")
        if kind not in DIST_TYPES:
            raise ConfigError(
                f"tune.space.{key}.type={kind!r} is invalid: expected one of {DIST_TYPES}"
            )
        if kind == "categorical" and not spec.get("choices"):
            raise ConfigError(f"tune.space.{key}.choices is missing: expected a non-empty list")
        if kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            if low is None or high is None or not low < high:
                raise ConfigError(
                    f"tune.space.{key}: low={low!r}, high={high!r} is invalid: "
                    "expected numbers with low < high"
                )
