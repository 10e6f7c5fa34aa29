"""Hyper-parameter search: ``python src/tune.py tune.n_trials=20 tune.timeout_s=1800``."""

from fmnist_mlops import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig, overrides: list[str]):
    """Import the stage only now: ``--help`` and ``--cfg job`` never load TensorFlow."""
    from fmnist_mlops.stages import promote_child
    from fmnist_mlops.training import train
    from fmnist_mlops.tuning import tune

    return tune(cfg, overrides, train, promote_child)


@hydra.main(config_path="../conf", config_name="tune", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.tuning.tune` with the command line's overrides."""
    overrides = list(HydraConfig.get().overrides.task)
    run("tune", lambda c: stage(c, overrides), cfg)


if __name__ == "__main__":
    entry("tune", main)
