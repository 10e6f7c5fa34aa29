"""This process's place in a multi-worker training, read from ``TF_CONFIG`` (no TensorFlow).

TensorFlow's convention: every worker runs the same command with its own ``TF_CONFIG``;
worker 0 (or the one task of type ``chief``) is the chief. Only the chief writes anything
shared: the MLflow run, the DVC outputs, the backups, the promotion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fmnist_mlops.runtime.errors import ConfigError

EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


@dataclass(frozen=True)
class Role:
    """Which worker this process is, of how many."""

    index: int = 0
    workers: int = 1
    chief: bool = True


def role(distribute: str, environ: Mapping[str, str] = os.environ) -> Role:
    """This process's role for ``train.distribute`` (one chief of one unless multi-worker).

    Raises:
        ConfigError: ``multi_worker`` without a usable ``TF_CONFIG`` (named, with an example).
    """
    if distribute != "multi_worker":
        return Role()
    raw = environ.get("TF_CONFIG", "")
    where = "train.distribute=multi_worker"
    if not raw.strip():
        raise ConfigError(
            f"{where} needs TF_CONFIG on every worker, e.g. {EXAMPLE} (index 1 on the next); "
            "`make train-workers N=2` starts N local workers with it set"
        )
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], task["index"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"TF_CONFIG={raw!r} is not usable ({type(exc).__name__}: {exc}): expected {EXAMPLE}"
        ) from None
    members = {"chief": chiefs, "worker": workers}
    if (
        kind not in members
        or not isinstance(index, int)
        or isinstance(index, bool)
        or not 0 <= index < len(members[kind])
        or len(chiefs) > 1
    ):
        raise ConfigError(
            f"TF_CONFIG task {task!r} is not in its cluster {cluster!r}: expected type "
            f"'worker' (or one 'chief') with an index into that list, e.g. {EXAMPLE}"
        )
    chief = kind == "chief" or (not chiefs and index == 0)
    position = index if kind == "chief" else len(chiefs) + index
    return Role(index=position, workers=len(chiefs) + len(workers), chief=chief)
