"""What a stage after ``prepare`` sets up, once, at its top: :class:`StageContext`.

Every stage (train, evaluate, register, rollback, report, a sweep's or study's end) starts the
same way: validate the composed config, read the prepared split and check that it was made
with this config's ``data`` settings, point MLflow at the store. :func:`open_stage` does the
first at once and the other two on first use, so a stage still refuses cheap problems (a
missing ``run.json``, a refused output folder) before paying for the split or the store; a
stage made of stages (``evaluate`` then ``register``) hands one context to both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmnist_mlops.config.compose import validate
from fmnist_mlops.config.schema import Config
from fmnist_mlops.data.splits import Splits, stage_split
from fmnist_mlops.tracking import store
from fmnist_mlops.tracking.runs import run_record


@dataclass
class StageContext:
    """One stage's setup, built once by :func:`open_stage` and handed down.

    Attributes:
        cfg: The composed config, kept only to log it as params and hash it for resuming.
        config: Its typed, validated form, which everything below reads.
    """

    cfg: DictConfig
    config: Config
    _split: tuple[Path, Splits] | None = field(default=None, repr=False)
    _experiment_id: str | None = field(default=None, repr=False)

    @property
    def prepared(self) -> Path:
        """The prepared split's folder (``paths.prepared``), loaded and checked on first use."""
        return self._load()[0]

    @property
    def splits(self) -> Splits:
        """The prepared split, loaded and checked against ``config.data`` on first use."""
        return self._load()[1]

    def _load(self) -> tuple[Path, Splits]:
        if self._split is None:
            self._split = stage_split(self.config)
        return self._split

    @property
    def tracking_uri(self) -> str:
        """The store: ``mlflow.tracking_uri``, else the environment, else the project's SQLite."""
        return store.tracking_uri(self.config.mlflow.tracking_uri)

    def track(self) -> str:
        """Point MLflow at the store and make sure the experiment exists (once).

        Returns:
            The experiment id.
        """
        if self._experiment_id is None:
            self._experiment_id = store.setup(self.config.mlflow)
        return self._experiment_id

    def named_run(self) -> dict[str, Any]:
        """The ``run_id`` run's record (``run.json``'s fields) from the store.

        Raises:
            ConfigError: It is not a finished train run of the store, or was trained on
                another split than this stage's.
        """
        self.track()
        return run_record(self.config.run_id, self.splits.meta)


def open_stage(cfg: DictConfig) -> StageContext:
    """Validate ``cfg`` and return the stage's context; nothing is read or opened yet.

    Raises:
        ConfigError: One line naming the bad key, its value and what is accepted.
    """
    return StageContext(cfg, validate(cfg))
