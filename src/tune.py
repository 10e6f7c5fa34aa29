"""Hyper-parameter search: ``python src/tune.py tune.n_trials=20 tune.timeout_s=1800``."""

from fmnist_mlops.runtime import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.runtime.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig, overrides: list[str]):
    """Validate first, then import the stage: bad input and ``--help`` never load TensorFlow.

    Both the tuner's settings and the project config its trials start from are checked.
    """
    from fmnist_mlops.config.compose import compose, project_overrides, validate_tune
    from fmnist_mlops.tracking.context import open_stage

    tune_cfg = validate_tune(cfg.tune)
    base = project_overrides(overrides)
    ctx = open_stage(compose(base))
    from fmnist_mlops.experiments.tuning import tune
    from fmnist_mlops.registry.stages import promote_child
    from fmnist_mlops.train.training import train

    return tune(ctx, tune_cfg, base, train, promote_child)


@hydra.main(config_path="../conf", config_name="tune", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.experiments.tuning.tune` with the command line's overrides."""
    overrides = list(HydraConfig.get().overrides.task)
    run("tune", lambda c: stage(c, overrides), cfg)


if __name__ == "__main__":
    entry("tune", main)
