"""Compose and validate the Hydra config; generate ``params.yaml``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.config.schema import Config
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

    from fmnist_mlops.config.refusals import first_error
    from fmnist_mlops.config.schema import cross_check, resolve_derived

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    try:
        typed = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(first_error(data, exc, Config)) from None
    problem = cross_check(typed)
    if problem:
        raise ConfigError(problem)
    return resolve_derived(typed)


def project_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides of a ``tune`` command line that belong to the project config.

    ``tune.*`` overrides are the tuner's own; every trial composes its config from the rest
    plus its sampled values.
    """
    return [o for o in overrides if not o.lstrip("+~").startswith("tune")]
