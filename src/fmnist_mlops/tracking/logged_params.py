"""The composed config as MLflow params: flattened to dotted keys, secrets redacted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.tracking.databases import (
    hide_password,
)

# MLflow rejects param values longer than this; long lists are truncated with a marker.
_MAX_PARAM_LEN = 6000


# The composed config as one file among the run's artifacts (what reruns read back).
CONFIG_ARTIFACT = "config.yaml"

_SECRET_WORDS = ("password", "secret", "token", "access_key", "api_key", "credential")


def redact(flat: dict[str, Any]) -> dict[str, Any]:
    """Replace the values of keys that look like secrets (and URIs with a password) by ***."""
    out = {}
    for key, value in flat.items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            out[key] = "***"
        else:
            hidden = hide_password(str(value))
            out[key] = value if hidden == str(value) else hidden
    return out


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to dotted keys, the names its values are logged under as params.

    ``{"model": {"filters": [32, 64]}}`` becomes ``{"model.filters": [32, 64]}``.
    """
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


def log_config(cfg: DictConfig, resolved: Mapping[str, Any] | None = None) -> None:
    """Log every config value as a flattened dotted param and the whole config as a file.

    Secrets come from the environment, never from the config; should one be put there anyway,
    keys that look like secrets and passwords inside URIs are logged as ``***``.

    Args:
        cfg: The composed config.
        resolved: Values of keys left null that follow another key (``schema.derived``): the
            params show what the run used; ``config.yaml`` keeps the null, so a rerun with
            another ``train.patience`` follows it again.
    """
    params: dict[str, Any] = {}
    flat = redact(flatten(cfg))
    for key, value in {**flat, **(resolved or {})}.items():
        text = str(value)
        params[key] = text if len(text) <= _MAX_PARAM_LEN else text[:_MAX_PARAM_LEN] + "..."
    mlflow.log_params(params)
    safe = OmegaConf.create({})
    for key, value in flat.items():
        OmegaConf.update(safe, key, value, force_add=True)
    mlflow.log_text(OmegaConf.to_yaml(safe), CONFIG_ARTIFACT)
