"""The typed settings of the commands beyond the pipeline: the tuner and the reproduction.

Validated apart from the project config they start from (:mod:`compose`), with the same
one-line errors.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from pydantic import ValidationError

from fmnist_mlops.config.refusals import first_error
from fmnist_mlops.config.schema import _f, _Strict
from fmnist_mlops.runtime.errors import ConfigError

# The distributions a tune.space entry can draw from.
DIST_TYPES = ("categorical", "float", "int")


class PrunerCfg(_Strict):
    """Optuna's median pruner (``tune.pruner``)."""

    n_startup_trials: int = _f("an integer >= 0", ge=0)
    n_warmup_steps: int = _f("an integer >= 0", ge=0)


class TuneCfg(_Strict):
    """The Optuna study (``conf/tune``); ``space`` is checked by :func:`check_space`."""

    study_name: str = _f("a non-empty name", min_length=1)
    storage: str | None = _f("null (optuna.db next to mlflow.db) or an RDB URL")
    n_trials: int = _f("an integer > 0", gt=0)
    timeout_s: float | None = _f("null or a number of seconds > 0", gt=0)
    seed: int | None = _f("null or an integer")
    pruner: PrunerCfg
    space: dict[str, dict[str, Any]] = _f("a mapping of override keys to distributions")


class ToleranceCfg(_Strict):
    """When a rebuild that is not bit-identical still counts as the same model."""

    accuracy: float = _f("an absolute accuracy difference in [0, 1)", ge=0, lt=1)
    loss: float = _f("a relative loss difference in [0, 1)", ge=0, lt=1)


class ReproduceCfg(_Strict):
    """``make reproduce``: which version to rebuild and how to judge the rebuild."""

    version: int | str = _f("a version number >= 1 or an alias")
    tolerance: ToleranceCfg
    envs: str = _f("a folder path (relative: to the repository)", min_length=1)
    keep: bool = _f("true or false")


class ReproduceConfig(_Strict):
    """The reproduction's own settings, validated apart from the project config."""

    reproduce: ReproduceCfg


class TuneConfig(_Strict):
    """The tuner's own settings, validated apart from the project config it composes."""

    tune: TuneCfg


def _section(key: str, section: Any, model: type[_Strict]) -> Any:
    """``section`` (the command's ``key`` group) validated by ``model``; one line on error."""
    data = {key: OmegaConf.to_container(section, resolve=True)}
    try:
        return getattr(model.model_validate(data), key)
    except ValidationError as exc:
        raise ConfigError(first_error(data, exc, model)) from None


def validate_tune(tune_cfg: Any) -> TuneCfg:
    """Check ``tune`` against :class:`schema.TuneCfg` and its space; one line on error.

    Returns:
        The typed ``tune`` config the tuner reads from then on.
    """
    typed = _section("tune", tune_cfg, TuneConfig)
    check_space(typed.space)
    return typed


def validate_reproduce(reproduce_cfg: Any) -> ReproduceCfg:
    """Check ``reproduce`` against :class:`schema.ReproduceCfg`; one line on error."""
    typed = _section("reproduce", reproduce_cfg, ReproduceConfig)
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
